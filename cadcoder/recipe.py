"""The named steps of `train.py`: options, data, model, lengths, trainer, training, the test set.

`train.py`'s `main` calls them in order; `benchmarks/quality.py` calls the same steps, so the rules they hold
(which programs are dropped for length, how many tokens generation may write, which programs compete as the
constant baseline, when a run "learns geometry") exist once.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, AutoTokenizer, HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from cadcoder.data import CadCoderCollator, canonicalize_numbers, decode_image, load_cad_dataset
from cadcoder.evaluation import DEFAULT_CONSTANT_PROGRAM, best_constant_program, execution_metrics
from cadcoder.factory import build_from_pretrained_components, build_tiny_cadcoder, extend_text_positions
from cadcoder.model_card import write_model_card
from cadcoder.sandbox import Sandbox
from cadcoder.synth import build_synthetic_mix
from cadcoder.tokenizer import train_code_tokenizer
from cadcoder.train_options import DataArguments, ModelArguments
from cadcoder.training import (
    CadCoderTrainer,
    GenerationEvalConfig,
    Stage,
    StagedFreezingCallback,
    check_dataset_columns,
    check_max_length,
    parse_config,
    parse_stages,
)
from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

SELECT_REFERENCES = 32
"""Validation references the constant-program baseline is chosen on."""


# ------------------------------------------------------------------------------------------------ options
def parse_options(argv: Sequence[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments, list[Stage]]:
    """`[CONFIG.json] [--key value ...]` -> the three option dataclasses and the freezing stages, checked.

    On a CPU-only machine `use_cpu` defaults to true (bf16 then means CPU autocast). `--resume_from_checkpoint
    last` becomes the newest checkpoint-* folder of output_dir.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if not torch.cuda.is_available():
        parser.set_defaults(use_cpu=True)
    margs, dargs, targs = parse_config(parser, argv)
    if targs.remove_unused_columns:
        raise ValueError("set remove_unused_columns=false: the collator needs the image and program columns")
    stages = parse_stages(margs.train_stages)
    if is_staged(stages) and (targs.fsdp or targs.deepspeed):
        raise ValueError("train_stages other than 'all' (freezing) is not supported under FSDP / DeepSpeed; use DDP")
    if targs.resume_from_checkpoint == "last":
        targs.resume_from_checkpoint = get_last_checkpoint(targs.output_dir) if Path(targs.output_dir).is_dir() else None
        if targs.resume_from_checkpoint is None:
            raise FileNotFoundError(f"--resume_from_checkpoint last: no checkpoint-* folder in {targs.output_dir}")
    return margs, dargs, targs, stages


def is_staged(stages: Sequence[Stage]) -> bool:
    """True when some part is frozen at some point (anything but `train_stages=all`)."""
    return list(stages) != parse_stages("all")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Splits:
    """The loaded dataset and its (capped) training and validation splits."""

    data: Any
    train: Any
    eval: Any


def program_text(code: str, dargs: DataArguments) -> str:
    """The program as the model sees it (the collator applies the same rewrite)."""
    return canonicalize_numbers(code, dargs.number_decimals) if dargs.canonical_numbers else code


def ensure_synthetic_data(dargs: DataArguments, targs: TrainingArguments) -> None:
    """Generate the synthetic set into `--dataset` when `--synth_num` asks for one and it is not there yet."""
    built = lambda: (Path(dargs.dataset) / "dataset_dict.json").exists()  # noqa: E731
    if dargs.synth_num <= 0 or built():
        return
    with targs.main_process_first(desc="synthetic dataset"):
        if not built():  # the main process built it while the others waited
            print(f"[train] generating {dargs.synth_num} synthetic pairs (complexity {dargs.synth_complexity}) "
                  f"into {dargs.dataset}; cached for later runs", flush=True)
            build_synthetic_mix(dargs.synth_num, dargs.dataset, dargs.synth_complexity, seed=dargs.synth_seed,
                                workers=dargs.synth_workers, image_size=dargs.synth_image_size,
                                render_style=dargs.synth_render_style)


def load_splits(dargs: DataArguments, targs: TrainingArguments) -> Splits:
    """The dataset (generated first if asked), its columns checked, train / validation capped by the options."""
    ensure_synthetic_data(dargs, targs)
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
    return Splits(data, train_ds, eval_ds)


# ------------------------------------------------------------------------------------------------ model
def build_model_and_processor(margs: ModelArguments, dargs: DataArguments, targs: TrainingArguments,
                              train_programs: list[str]) -> tuple[Any, Any]:
    """Tiny from scratch (tokenizer trained on `train_programs`), pretrained components, or a saved CadCoder.

    The language model's positions are then extended to `--max_length` where that is possible.
    """
    if margs.model_init == "tiny":
        resume = targs.resume_from_checkpoint
        if resume and Path(resume, "processor_config.json").exists():  # resuming: keep the vocabulary it learned
            tokenizer = AutoProcessor.from_pretrained(resume, trust_remote_code=True).tokenizer
        else:
            tokenizer = train_code_tokenizer(train_programs, vocab_size=margs.tokenizer_vocab_size)
        model, processor = build_tiny_cadcoder(
            tokenizer, image_size=margs.image_size, visual_tokens=margs.visual_tokens,
            text_model_type=margs.text_model_type, n_layer=margs.n_layer, n_embd=margs.n_embd, n_head=margs.n_head,
            n_positions=max(1024, dargs.max_length),
        )
    elif margs.model_init == "components":  # needs the Hub (or local folders named by --vision_model / --text_model)
        model, processor = _from_components(margs)
    else:
        if not margs.model_name_or_path:
            raise ValueError("model_init=pretrained needs --model_name_or_path (a saved CadCoder folder or Hub id)")
        model = AutoModel.from_pretrained(margs.model_name_or_path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(margs.model_name_or_path, trust_remote_code=True)
    if extend_text_positions(model, dargs.max_length):
        print(f"[train] language model positions extended to {dargs.max_length} (rotary tables rebuilt)", flush=True)
    return model, processor


def _from_components(margs: ModelArguments) -> tuple[Any, Any]:
    """A CadCoder assembled from a pretrained vision encoder and language model."""
    tokenizer = AutoTokenizer.from_pretrained(margs.text_model)
    model = build_from_pretrained_components(
        vision=margs.vision_model, text=margs.text_model, tokenizer=tokenizer,
        image_size=margs.image_size, visual_tokens=margs.visual_tokens,
    )
    processor = CadCoderProcessor(CadCoderImageProcessor(size=margs.image_size), tokenizer,
                                  num_image_tokens=model.config.num_image_tokens)
    model.train()
    return model, processor


# ------------------------------------------------------------------------------------------------ lengths
@dataclass
class LengthBudget:
    """The splits after dropping programs too long for `max_length`, and the generation length that follows."""

    train: Any
    eval_loss: Any
    lengths: list[int]
    max_new_tokens: int


def prompt_length(processor: Any, image: Any) -> int:
    """Tokens in front of every program: the image tokens plus the processor's prompt."""
    return len(processor(images=[image], return_tensors="pt")["input_ids"][0])


def program_lengths(tokenizer: Any, programs: Sequence[str]) -> list[int]:
    """Tokens of each program (without the EOS)."""
    return [len(ids) for ids in tokenizer(list(programs))["input_ids"]]


def default_max_new_tokens(kept_lengths: Sequence[int], budget: int, override: int | None = None) -> int:
    """Generation length: `override`, else the longest program that fits + 10 %, capped by the budget."""
    return int(override) if override else min(budget, int(max(kept_lengths) * 1.1) + 8)


def generation_length(processor: Any, programs: Sequence[str], image: Any, max_length: int,
                      override: int | None = None) -> int:
    """`default_max_new_tokens` of a trained model, from its training programs (those that fit)."""
    if override:
        return int(override)
    budget = max_length - prompt_length(processor, image) - 1
    kept = [n for n in program_lengths(processor.tokenizer, programs) if n <= budget] or [budget]
    return default_max_new_tokens(kept, budget)


def _drop_long(ds: Any, programs: list[str], tokenizer: Any, budget: int, max_length: int, name: str):
    lengths = program_lengths(tokenizer, programs)
    keep = [i for i, n in enumerate(lengths) if n <= budget]
    if not keep:
        raise ValueError(f"no {name} program fits in max_length={max_length}; raise --max_length")
    if len(keep) < len(lengths):
        print(f"[train] dropping {len(lengths) - len(keep)} of {len(lengths)} {name} programs longer than "
              f"{budget} tokens (raise --max_length to keep them)", flush=True)
    return ds.select(keep), [lengths[i] for i in keep]


def fit_lengths(model: Any, processor: Any, splits: Splits, dargs: DataArguments, targs: TrainingArguments) -> LengthBudget:
    """Check `max_length` against the prompt, drop the programs that do not fit, fix the generation length.

    Programs that do not fit are dropped, never truncated: a cut program teaches the model to stop mid-part.
    (The validation subset that is generated and executed, and the test set, keep every program.)
    """
    num_image_tokens = model.config.num_image_tokens
    prompt_tokens = prompt_length(processor, decode_image(splits.train[0]["image"]))
    check_max_length(dargs.max_length, num_image_tokens, prompt_tokens - num_image_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train] model: {n_params / 1e6:.1f}M parameters, {num_image_tokens} image tokens, "
          f"prompt {prompt_tokens} tokens", flush=True)
    budget = dargs.max_length - prompt_tokens - 1  # -1: the EOS that ends every program
    tok = processor.tokenizer
    train_ds, lengths = _drop_long(splits.train, [program_text(c, dargs) for c in splits.train["cadquery"]], tok,
                                   budget, dargs.max_length, "training")
    eval_ds, eval_lengths = _drop_long(splits.eval, [program_text(c, dargs) for c in splits.eval["cadquery"]], tok,
                                       budget, dargs.max_length, "validation")
    if targs.train_sampling_strategy == "group_by_length":  # batches of similar length pad less (train and eval)
        if targs.length_column_name not in train_ds.column_names:
            train_ds = train_ds.add_column(targs.length_column_name, lengths)
        if targs.length_column_name not in eval_ds.column_names:
            eval_ds = eval_ds.add_column(targs.length_column_name, eval_lengths)
    max_new = default_max_new_tokens(lengths, budget, dargs.generate_max_new_tokens)
    return LengthBudget(train_ds, eval_ds, lengths, max_new)


# ------------------------------------------------------------------------------------------------ trainer
def part_learning_rates(margs: ModelArguments, base_lr: float) -> dict[str, float]:
    """Each part's learning rate: its own option, else `--learning_rate`."""
    return {
        "vision": margs.vision_learning_rate or base_lr,
        "projector": margs.projector_learning_rate or base_lr,
        "language": margs.language_learning_rate or base_lr,
    }


def generation_eval_config(eval_ds: Any, max_new_tokens: int, dargs: DataArguments) -> GenerationEvalConfig | None:
    """The fixed validation subset generated and executed at every evaluation (None: loss only)."""
    if dargs.generate_eval_samples <= 0:
        return None
    subset = eval_ds.select(range(min(dargs.generate_eval_samples, len(eval_ds))))  # fixed: same images every time
    return GenerationEvalConfig(
        images=[decode_image(v) for v in subset["image"]], references=list(subset["cadquery"]),
        max_new_tokens=max_new_tokens, batch_size=dargs.generate_batch_size, protocol=dargs.eval_protocol,
        timeout=dargs.eval_timeout, num_workers=dargs.eval_num_workers,
    )


def curriculum_settings(lengths: list[int], dargs: DataArguments, targs: TrainingArguments) -> dict[str, Any] | None:
    """`CurriculumSampler` arguments (difficulty = program length), or None without `--curriculum`."""
    if not dargs.curriculum:  # simple families are short, multi-body parts long
        return None
    per_step = targs.per_device_train_batch_size * targs.gradient_accumulation_steps * targs.world_size
    steps = targs.max_steps if targs.max_steps > 0 else math.ceil(targs.num_train_epochs * len(lengths) / per_step)
    return dict(difficulties=lengths, start=dargs.curriculum_start, ramp_samples=int(dargs.curriculum_ramp * steps * per_step),
                lengths=lengths, batch_size=targs.per_device_train_batch_size)  # + length-grouped batches


def build_trainer(model: Any, processor: Any, fit: LengthBudget, splits: Splits, stages: Sequence[Stage],
                  margs: ModelArguments, dargs: DataArguments, targs: TrainingArguments) -> CadCoderTrainer:
    """`CadCoderTrainer` with per-part learning rates, staged freezing, curriculum and evaluation by execution."""
    collator = CadCoderCollator(processor, max_length=dargs.max_length, canonical_numbers=dargs.canonical_numbers,
                                decimals=dargs.number_decimals, packing=dargs.packing)
    return CadCoderTrainer(
        model=model, args=targs, train_dataset=fit.train, eval_dataset=fit.eval_loss, data_collator=collator,
        processing_class=processor, part_learning_rates=part_learning_rates(margs, targs.learning_rate),
        generation_eval=generation_eval_config(splits.eval, fit.max_new_tokens, dargs),
        curriculum=curriculum_settings(fit.lengths, dargs, targs),
        callbacks=[StagedFreezingCallback(stages, single_process=targs.world_size == 1)] if is_staged(stages) else None,
    )


def card_options(margs: ModelArguments, dargs: DataArguments, targs: TrainingArguments) -> dict[str, Any]:
    """The `write_model_card` arguments that come from the options."""
    base = [margs.vision_model, margs.text_model] if margs.model_init == "components" else ()
    return dict(dataset=dargs.dataset, hub_model_id=targs.hub_model_id, base_models=base)


def save_hub_folder(trainer: CadCoderTrainer, snapshot: dict[str, Any], card: dict[str, Any]) -> None:
    """Save a complete, loadable folder (weights, config, remote-code files, processor, card) before training.

    Hub pushes during training copy only config + weights into it, so it must already be whole. Every rank
    calls it: under FSDP / ZeRO saving is collective; only rank 0 writes.
    """
    trainer.save_model(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        write_model_card(trainer.args.output_dir, config=snapshot, **card)


def train(trainer: CadCoderTrainer) -> dict[str, Any]:
    """Train (resuming if asked), save model and state; the training figures of the results."""
    args = trainer.args
    train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    trainer.save_state()
    trainer.log_metrics("train", train_result.metrics)
    return {"train_loss": train_result.metrics.get("train_loss"),
            "train_runtime_s": round(train_result.metrics.get("train_runtime", 0.0), 3)}


# ------------------------------------------------------------------------------------------------ test set
def held_out_subset(data: Any, split: str, samples: int) -> Any:
    """The first `samples` rows of the test split (the same parts for every model scored on it)."""
    test = data[split]
    return test.select(range(min(samples, len(test))))


def constant_candidates(train_ds: Any, count: int, seed: int) -> list[str]:
    """The programs that compete as the constant baseline: the default one and `count` training programs."""
    pool = train_ds.shuffle(seed=seed).select(range(min(count, len(train_ds))))
    return [DEFAULT_CONSTANT_PROGRAM, *pool["cadquery"]]


def select_references(eval_ds: Any, count: int = SELECT_REFERENCES) -> list[str]:
    """The validation references the constant baseline is chosen on (never the test set)."""
    return list(eval_ds.select(range(min(count, len(eval_ds))))["cadquery"])


def write_predictions(path: str | os.PathLike, predictions: Sequence[str], references: Sequence[str]) -> None:
    """`test_predictions.jsonl`: one {prediction, reference} per line."""
    with open(path, "w") as fh:
        for p, r in zip(predictions, references):
            fh.write(json.dumps({"prediction": p, "reference": r}) + "\n")


def learns_geometry(results: dict[str, Any], constant_iou: float) -> bool:
    """The verdict: the model beats chance and the constant program by 0.05 IoU and writes varied programs."""
    margin = results["test_iou_mean_all"] - max(results.get("test_iou_chance") or 0.0, constant_iou)
    return bool(margin >= 0.05 and results["test_distinct_predictions"] >= 0.5)


def generate_test(trainer: CadCoderTrainer, test: Any, max_new_tokens: int, batch_size: int) -> tuple[list[str], float]:
    """Greedy programs for the test images (every process generates its shard) and the seconds it took."""
    t0 = time.perf_counter()
    preds = trainer.generate_programs([decode_image(v) for v in test["image"]], max_new_tokens, batch_size)
    return preds, time.perf_counter() - t0


def score_test_set(preds: list[str], refs: list[str], candidates: list[str], select_refs: list[str],
               dargs: DataArguments) -> dict[str, Any]:
    """Model, chance and constant baseline on the test references (one sandbox start); the `test_*` results."""
    with Sandbox(num_workers=dargs.eval_num_workers, timeout=dargs.eval_timeout) as sandbox:
        ev = dict(protocol=dargs.eval_protocol, progress=False, sandbox=sandbox)
        scores = execution_metrics(preds, refs, with_chance=True, **ev)
        constant = best_constant_program(candidates, select_refs, refs, **ev)
    results = {f"test_{k}": v for k, v in scores.items()}
    results.update({"test_samples": len(refs), "test_constant_iou_mean_all": constant["iou_mean_all"]})
    return results


def print_verdict(results: dict[str, Any], protocol: str) -> None:
    """The held-out figures against the baselines, and whether the model learns geometry."""
    print(
        f"\n[train] held-out test ({results['test_samples']} parts, protocol {protocol}):\n"
        f"  iou_mean_all       {results['test_iou_mean_all']:.3f}   (model)\n"
        f"  iou_chance         {results.get('test_iou_chance') or float('nan'):.3f}   (reference vs another reference)\n"
        f"  constant baseline  {results['test_constant_iou_mean_all']:.3f}   (best fixed training program)\n"
        f"  distinct share     {results['test_distinct_predictions']:.2f}\n"
        f"  valid_syntax_rate  {results['test_valid_syntax_rate']:.2f}\n"
        f"  iou_mean (valid)   {results.get('test_iou_mean') or float('nan'):.3f}\n"
        f"  training {results.get('train_runtime_s', 0.0) / 60:.1f} min (evaluations included), whole run "
        f"{results['wall_seconds'] / 60:.1f} min -> "
        f"{'LEARNS GEOMETRY' if results['learns_geometry'] else 'does NOT beat the baselines clearly'}",
        flush=True,
    )
