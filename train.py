"""Fine-tune CadCoder (image of a part -> CadQuery program), judged by executing what it writes.

Launch:

    # one process: CPU or one GPU (the quickstart builds its synthetic set on first use)
    python train.py configs/quickstart.json
    python train.py configs/quickstart.json --max_steps 10 --output_dir outputs/try   # overrides

    # several GPUs on one machine: DDP (or fsdp.yaml / deepspeed-zero2.yaml)
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 train.py configs/codegen-350m.json

    # several nodes: run on every node, with its own --machine_rank
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_machines 2 --num_processes 16 \
        --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR --main_process_port 29500 \
        train.py configs/codegen-350m.json

    # resume after an interruption (optimizer, scheduler, RNG and data position restored)
    python train.py configs/quickstart.json --resume_from_checkpoint last     # or .../checkpoint-400

Options come from three dataclasses (ModelArguments, DataArguments below, and transformers'
TrainingArguments); a JSON config gives the values and the command line overrides them;
`python train.py --help` lists them all. Unknown keys fail before anything is loaded.

The story, top to bottom: parse options -> get the data (generate the synthetic set if asked) -> build
model + processor (tiny from scratch with a locally trained tokenizer, or from pretrained components,
or from a saved CadCoder) -> check lengths -> Trainer with per-part learning rates, staged freezing,
curriculum and evaluation by execution -> save a Hub-ready folder before training (so every push loads
on its own) -> train -> score the test subset against the chance and constant-program baselines ->
model card + metrics JSON -> push.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed

from cadcoder.training import (
    CadCoderTrainer,
    GenerationEvalConfig,
    StagedFreezingCallback,
    best_constant_program,
    build_synthetic_mix,
    check_dataset_columns,
    check_max_length,
    config_snapshot,
    execution_metrics,
    extend_text_positions,
    parse_config,
    parse_stages,
    write_model_card,
)


@dataclass
class ModelArguments:
    """Which model to train and how each of its parts learns."""

    model_init: str = field(
        default="tiny",
        metadata={
            "help": "tiny: small random CadCoder + tokenizer trained on the training programs (offline); "
            "components: pretrained vision encoder + language model from the Hub (needs network); "
            "pretrained: continue from a saved CadCoder (--model_name_or_path).",
            "choices": ["tiny", "components", "pretrained"],
        },
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "saved CadCoder folder or Hub id (model_init=pretrained)"})
    vision_model: str = field(default="timm/resnet18.a1_in1k", metadata={"help": "timm encoder (model_init=components)"})
    text_model: str = field(default="Salesforce/codegen-350M-mono", metadata={"help": "causal LM (model_init=components)"})
    visual_tokens: str = field(default="grid", metadata={"help": "grid: one token per feature-map cell; pooled: one token", "choices": ["grid", "pooled"]})
    image_size: int = field(default=448, metadata={"help": "input side in pixels (multiple of 32)"})
    text_model_type: str = field(default="codegen", metadata={"help": "tiny decoder family", "choices": ["codegen", "gpt2"]})
    n_layer: int = field(default=4, metadata={"help": "tiny decoder layers"})
    n_embd: int = field(default=256, metadata={"help": "tiny decoder width"})
    n_head: int = field(default=4, metadata={"help": "tiny decoder heads"})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "vocabulary of the locally trained tokenizer (tiny)"})
    vision_learning_rate: float | None = field(default=None, metadata={"help": "encoder lr (default: --learning_rate)"})
    projector_learning_rate: float | None = field(default=None, metadata={"help": "projector lr (default: --learning_rate)"})
    language_learning_rate: float | None = field(default=None, metadata={"help": "language-model lr (default: --learning_rate)"})
    train_stages: str = field(
        default="all",
        metadata={"help": "staged freezing: 'PARTS:UNTIL_STEP,...,PARTS', PARTS joins vision/projector/language with + "
                  "or is all; e.g. 'projector:200,all' = projector-only warm-up for 200 steps, then everything"},
    )


@dataclass
class DataArguments:
    """Where the (image, program) pairs come from, how programs become tokens, and how we evaluate."""

    dataset: str = field(default="CADCODER/GenCAD-Code", metadata={"help": "Hub dataset, save_to_disk folder, parquet or jsonl"})
    synth_num: int = field(default=0, metadata={"help": "if > 0 and --dataset is a missing folder: generate this many synthetic pairs there"})
    synth_seed: int = field(default=0, metadata={"help": "seed of the synthetic set"})
    synth_image_size: int = field(default=448, metadata={"help": "rendered image size of the synthetic set"})
    synth_workers: int = field(default=2, metadata={"help": "processes that build the synthetic set"})
    synth_complexity: list[int] = field(default_factory=lambda: [3], metadata={"help": "synthetic generator levels, spread evenly: 0 simple profiles, 1 any single extrude, 2 up to 3 bodies, 3 GenCAD-Code-like"})
    synth_render_style: str | None = field(default=None, metadata={"help": "'random': domain-randomised renders (grey level, line width, camera jitter); default: the dataset look"})
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    max_length: int = field(default=1024, metadata={"help": "tokens per example, image tokens included; longer programs are dropped, never truncated"})
    packing: bool = field(default=False, metadata={"help": "pack several examples into each row of max_length tokens: the same loss without padding compute (cadcoder/packing.py)"})
    canonical_numbers: bool = field(default=False, metadata={"help": "rewrite numbers in a short canonical form (fewer tokens)"})
    number_decimals: int = field(default=4, metadata={"help": "decimals kept by --canonical_numbers"})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    curriculum: bool = field(default=False, metadata={"help": "start with short (simple) programs, grow to the full set"})
    curriculum_start: float = field(default=0.25, metadata={"help": "share of easiest examples available at step 0"})
    curriculum_ramp: float = field(default=0.5, metadata={"help": "share of training after which all examples are available"})
    generate_eval_samples: int = field(default=32, metadata={"help": "validation images generated + executed at each evaluation (0: loss only)"})
    generate_max_new_tokens: int | None = field(default=None, metadata={"help": "default: longest training program + 10%"})
    generate_batch_size: int = 16
    eval_protocol: str = field(default="aligned", metadata={"choices": ["aligned", "bbox", "mecagent"]})
    eval_timeout: float = 10.0
    eval_num_workers: int | None = None
    test_samples: int = field(default=100, metadata={"help": "test images scored after training, with chance and constant baselines (0: skip)"})
    constant_candidates: int = field(default=8, metadata={"help": "training programs tried as the constant-program baseline"})
    eval_only: bool = field(default=False, metadata={"help": "skip training: score the model (e.g. --model_init pretrained --model_name_or_path CKPT) on the test set"})


def main(argv: list[str]) -> dict:
    # ---------------------------------------------------------------------------------- options
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if not torch.cuda.is_available():  # CPU-only machine: bf16 means CPU autocast (a config may still override)
        parser.set_defaults(use_cpu=True)
    margs, dargs, targs = parse_config(parser, argv)
    if targs.remove_unused_columns:
        raise ValueError("set remove_unused_columns=false: the collator needs the image and program columns")
    stages = parse_stages(margs.train_stages)
    staged = stages != parse_stages("all")  # some part frozen at some point
    if staged and (targs.fsdp or targs.deepspeed):
        raise ValueError("train_stages other than 'all' (freezing) is not supported under FSDP / DeepSpeed; use DDP")
    if targs.resume_from_checkpoint == "last":  # the newest checkpoint-* in output_dir
        from transformers.trainer_utils import get_last_checkpoint

        targs.resume_from_checkpoint = get_last_checkpoint(targs.output_dir) if Path(targs.output_dir).is_dir() else None
        if targs.resume_from_checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no checkpoint-* folder in {targs.output_dir}")
    set_seed(targs.seed)
    started = time.perf_counter()
    if targs.should_log:
        print(f"[train] {targs.world_size} process(es) on {targs.device}, bf16={targs.bf16}, "
              f"output_dir={targs.output_dir}", flush=True)

    # ---------------------------------------------------------------------------------- data
    from cadcoder.data import CadCoderCollator, canonicalize_numbers, decode_image, load_cad_dataset

    built = lambda: (Path(dargs.dataset) / "dataset_dict.json").exists()  # noqa: E731
    if dargs.synth_num > 0 and not built():
        with targs.main_process_first(desc="synthetic dataset"):
            if not built():  # the main process built it while the others waited
                print(f"[train] generating {dargs.synth_num} synthetic pairs (complexity {dargs.synth_complexity}) "
                      f"into {dargs.dataset}; cached for later runs", flush=True)
                build_synthetic_mix(dargs.synth_num, dargs.dataset, dargs.synth_complexity, seed=dargs.synth_seed,
                                    workers=dargs.synth_workers, image_size=dargs.synth_image_size,
                                    render_style=dargs.synth_render_style)
    data = load_cad_dataset(dargs.dataset)
    for split in (dargs.train_split, dargs.eval_split):
        if split not in data:
            raise ValueError(f"dataset {dargs.dataset} has no split {split!r}; it has {list(data)}")
        check_dataset_columns(data[split], ("image", "cadquery"), f"{dargs.dataset}[{split}]")
    train_ds, eval_ds = data[dargs.train_split], data[dargs.eval_split]
    if dargs.max_train_samples:
        train_ds = train_ds.select(range(min(dargs.max_train_samples, len(train_ds))))
    if dargs.max_eval_samples:
        eval_ds = eval_ds.select(range(min(dargs.max_eval_samples, len(eval_ds))))

    def to_text(code: str) -> str:  # the program as the model sees it (the collator applies the same rewrite)
        return canonicalize_numbers(code, dargs.number_decimals) if dargs.canonical_numbers else code

    train_programs = [to_text(c) for c in train_ds["cadquery"]]

    # ---------------------------------------------------------------------------------- model
    if margs.model_init == "tiny":
        from cadcoder.factory import build_tiny_cadcoder
        from cadcoder.tokenizer import train_code_tokenizer

        resume = targs.resume_from_checkpoint
        if resume and Path(resume, "processor_config.json").exists():  # resuming: keep the vocabulary it learned
            from transformers import AutoProcessor

            tokenizer = AutoProcessor.from_pretrained(resume, trust_remote_code=True).tokenizer
        else:
            tokenizer = train_code_tokenizer(train_programs, vocab_size=margs.tokenizer_vocab_size)
        model, processor = build_tiny_cadcoder(
            tokenizer, image_size=margs.image_size, visual_tokens=margs.visual_tokens,
            text_model_type=margs.text_model_type, n_layer=margs.n_layer, n_embd=margs.n_embd, n_head=margs.n_head,
            n_positions=max(1024, dargs.max_length),
        )
    elif margs.model_init == "components":  # needs the Hub (or local folders named by --vision_model / --text_model)
        from transformers import AutoTokenizer

        from modeling_cadcoder import CadCoderForConditionalGeneration
        from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

        tokenizer = AutoTokenizer.from_pretrained(margs.text_model)
        model = CadCoderForConditionalGeneration.from_pretrained_components(
            vision=margs.vision_model, text=margs.text_model, tokenizer=tokenizer,
            image_size=margs.image_size, visual_tokens=margs.visual_tokens,
        )
        processor = CadCoderProcessor(CadCoderImageProcessor(size=margs.image_size), tokenizer,
                                      num_image_tokens=model.config.num_image_tokens)
        model.train()
    else:
        from transformers import AutoModel, AutoProcessor

        if not margs.model_name_or_path:
            raise ValueError("model_init=pretrained needs --model_name_or_path (a saved CadCoder folder or Hub id)")
        model = AutoModel.from_pretrained(margs.model_name_or_path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(margs.model_name_or_path, trust_remote_code=True)
    if extend_text_positions(model, dargs.max_length):
        print(f"[train] language model positions extended to {dargs.max_length} (rotary tables rebuilt)", flush=True)
    num_image_tokens = model.config.num_image_tokens
    prompt_tokens = len(processor(images=[decode_image(train_ds[0]["image"])], return_tensors="pt")["input_ids"][0])
    check_max_length(dargs.max_length, num_image_tokens, prompt_tokens - num_image_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train] model: {n_params / 1e6:.1f}M parameters, {num_image_tokens} image tokens, "
          f"prompt {prompt_tokens} tokens", flush=True)

    # ---------------------------------------------------------------------------------- lengths
    # Programs that do not fit are dropped, never truncated: a cut program teaches the model to stop mid-part.
    # (The validation subset that is generated and executed, and the test set, keep every program.)
    budget = dargs.max_length - prompt_tokens - 1  # -1: the EOS that ends every program

    def drop_long(ds, programs: list[str], name: str):
        lengths = [len(ids) for ids in processor.tokenizer(programs)["input_ids"]]
        keep = [i for i, n in enumerate(lengths) if n <= budget]
        if not keep:
            raise ValueError(f"no {name} program fits in max_length={dargs.max_length}; raise --max_length")
        if len(keep) < len(lengths):
            print(f"[train] dropping {len(lengths) - len(keep)} of {len(lengths)} {name} programs longer than "
                  f"{budget} tokens (raise --max_length to keep them)", flush=True)
        return ds.select(keep), [lengths[i] for i in keep]

    train_ds, lengths = drop_long(train_ds, train_programs, "training")
    eval_loss_ds, eval_lengths = drop_long(eval_ds, [to_text(c) for c in eval_ds["cadquery"]], "validation")
    if targs.train_sampling_strategy == "group_by_length":  # batches of similar length pad less (train and eval)
        if targs.length_column_name not in train_ds.column_names:
            train_ds = train_ds.add_column(targs.length_column_name, lengths)
        if targs.length_column_name not in eval_loss_ds.column_names:
            eval_loss_ds = eval_loss_ds.add_column(targs.length_column_name, eval_lengths)
    max_new_tokens = dargs.generate_max_new_tokens or min(budget, int(max(lengths) * 1.1) + 8)

    # ---------------------------------------------------------------------------------- trainer
    collator = CadCoderCollator(processor, max_length=dargs.max_length, canonical_numbers=dargs.canonical_numbers,
                                decimals=dargs.number_decimals, packing=dargs.packing)
    base_lr = targs.learning_rate
    part_lrs = {
        "vision": margs.vision_learning_rate or base_lr,
        "projector": margs.projector_learning_rate or base_lr,
        "language": margs.language_learning_rate or base_lr,
    }
    generation_eval = None
    if dargs.generate_eval_samples > 0:
        subset = eval_ds.select(range(min(dargs.generate_eval_samples, len(eval_ds))))  # fixed: same images every time
        generation_eval = GenerationEvalConfig(
            images=[decode_image(v) for v in subset["image"]], references=list(subset["cadquery"]),
            max_new_tokens=max_new_tokens, batch_size=dargs.generate_batch_size, protocol=dargs.eval_protocol,
            timeout=dargs.eval_timeout, num_workers=dargs.eval_num_workers,
        )
    curriculum = None
    if dargs.curriculum:  # difficulty = program length: simple families are short, multi-body parts long
        per_step = targs.per_device_train_batch_size * targs.gradient_accumulation_steps * targs.world_size
        steps = targs.max_steps if targs.max_steps > 0 else math.ceil(targs.num_train_epochs * len(train_ds) / per_step)
        curriculum = dict(difficulties=lengths, start=dargs.curriculum_start,
                          ramp_samples=int(dargs.curriculum_ramp * steps * per_step),
                          lengths=lengths, batch_size=targs.per_device_train_batch_size)  # + length-grouped batches
    trainer = CadCoderTrainer(
        model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_loss_ds, data_collator=collator,
        processing_class=processor, part_learning_rates=part_lrs, generation_eval=generation_eval, curriculum=curriculum,
        callbacks=[StagedFreezingCallback(stages, single_process=targs.world_size == 1)] if staged else None,
    )
    snapshot = config_snapshot(margs, dargs, targs)

    # Save a complete, loadable folder (weights, config, remote-code .py files, processor, card) before
    # training: Hub pushes during training copy only config + weights into it, so it must already be whole.
    trainer.save_model(targs.output_dir)  # every rank: under FSDP / ZeRO saving is collective; only rank 0 writes
    if trainer.is_world_process_zero():
        write_model_card(targs.output_dir, config=snapshot, dataset=dargs.dataset, hub_model_id=targs.hub_model_id,
                         base_models=[margs.vision_model, margs.text_model] if margs.model_init == "components" else ())

    # ---------------------------------------------------------------------------------- train
    results: dict = {}
    if not dargs.eval_only:
        train_result = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
        trainer.save_model(targs.output_dir)
        trainer.save_state()
        trainer.log_metrics("train", train_result.metrics)
        results = {"train_loss": train_result.metrics.get("train_loss"),
                   "train_runtime_s": round(train_result.metrics.get("train_runtime", 0.0), 3)}

    # ---------------------------------------------------------------------------------- test
    do_test = dargs.test_samples > 0 and dargs.test_split in data
    if do_test:  # every process generates its shard of the test images
        test = data[dargs.test_split]
        test = test.select(range(min(dargs.test_samples, len(test))))
        refs = list(test["cadquery"])
        t0 = time.perf_counter()
        preds = trainer.generate_programs([decode_image(v) for v in test["image"]], max_new_tokens, dargs.generate_batch_size)
        gen_s = time.perf_counter() - t0
    if do_test and trainer.is_world_process_zero():  # the main process scores them against the baselines
        from cadcoder.evaluation import DEFAULT_CONSTANT_PROGRAM
        from cadcoder.sandbox import Sandbox

        pool = train_ds.shuffle(seed=targs.seed).select(range(min(dargs.constant_candidates, len(train_ds))))
        select_refs = list(eval_ds.select(range(min(32, len(eval_ds))))["cadquery"])
        with Sandbox(num_workers=dargs.eval_num_workers, timeout=dargs.eval_timeout) as sandbox:  # one start for both
            ev = dict(protocol=dargs.eval_protocol, progress=False, sandbox=sandbox)
            scores = execution_metrics(preds, refs, with_chance=True, **ev)
            constant = best_constant_program([DEFAULT_CONSTANT_PROGRAM, *pool["cadquery"]], select_refs, refs, **ev)
        results.update({f"test_{k}": v for k, v in scores.items()})
        results.update({"test_samples": len(refs), "test_constant_iou_mean_all": constant["iou_mean_all"],
                        "test_generate_seconds": round(gen_s, 1), "protocol": dargs.eval_protocol})
        margin = results["test_iou_mean_all"] - max(results.get("test_iou_chance") or 0.0, constant["iou_mean_all"])
        results["learns_geometry"] = bool(margin >= 0.05 and results["test_distinct_predictions"] >= 0.5)
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        trainer.save_metrics("test", results)
        with open(os.path.join(targs.output_dir, "test_predictions.jsonl"), "w") as f:
            for p, r in zip(preds, refs):
                f.write(json.dumps({"prediction": p, "reference": r}) + "\n")
        print(
            f"\n[train] held-out test ({len(refs)} parts, protocol {dargs.eval_protocol}):\n"
            f"  iou_mean_all       {results['test_iou_mean_all']:.3f}   (model)\n"
            f"  iou_chance         {results.get('test_iou_chance') or float('nan'):.3f}   (reference vs another reference)\n"
            f"  constant baseline  {constant['iou_mean_all']:.3f}   (best fixed training program)\n"
            f"  distinct share     {results['test_distinct_predictions']:.2f}\n"
            f"  valid_syntax_rate  {results['test_valid_syntax_rate']:.2f}\n"
            f"  iou_mean (valid)   {results.get('test_iou_mean') or float('nan'):.3f}\n"
            f"  training {results.get('train_runtime_s', 0.0) / 60:.1f} min (evaluations included), whole run "
            f"{results['wall_seconds'] / 60:.1f} min -> "
            f"{'LEARNS GEOMETRY' if results['learns_geometry'] else 'does NOT beat the baselines clearly'}",
            flush=True,
        )

    # ---------------------------------------------------------------------------------- output
    if trainer.is_world_process_zero():
        write_model_card(targs.output_dir, config=snapshot, results=results, dataset=dargs.dataset,
                         hub_model_id=targs.hub_model_id,
                         base_models=[margs.vision_model, margs.text_model] if margs.model_init == "components" else ())
    if targs.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
