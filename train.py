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

Options come from three dataclasses (ModelArguments, DataArguments in cadcoder/train_options.py, and
transformers' TrainingArguments); a JSON config gives the values and the command line overrides them;
`python train.py --help` lists them all. Unknown keys fail before anything is loaded.

The story, top to bottom: parse options -> get the data (generate the synthetic set if asked) -> build
model + processor (tiny from scratch with a locally trained tokenizer, or from pretrained components,
or from a saved CadCoder) -> check lengths -> Trainer with per-part learning rates, staged freezing,
curriculum and evaluation by execution -> save a Hub-ready folder before training (so every push loads
on its own) -> train -> score the test subset against the chance and constant-program baselines ->
model card + metrics JSON -> push.
"""

from __future__ import annotations

import os
import sys
import time

from transformers import set_seed

from cadcoder import recipe
from cadcoder.model_card import write_model_card
from cadcoder.train_options import DataArguments, ModelArguments  # noqa: F401  (the options, for readers)
from cadcoder.training import config_snapshot


def main(argv: list[str]) -> dict:
    """Parse options, train (unless --eval_only), score the test set, write the card; return the results."""
    # ---------------------------------------------------------------------------------- options
    margs, dargs, targs, stages = recipe.parse_options(argv)
    set_seed(targs.seed)
    started = time.perf_counter()
    if targs.should_log:
        print(f"[train] {targs.world_size} process(es) on {targs.device}, bf16={targs.bf16}, "
              f"output_dir={targs.output_dir}", flush=True)

    # ---------------------------------------------------------------------------------- data
    splits = recipe.load_splits(dargs, targs)
    train_programs = [recipe.program_text(c, dargs) for c in splits.train["cadquery"]]

    # ---------------------------------------------------------------------------------- model
    model, processor = recipe.build_model_and_processor(margs, dargs, targs, train_programs)

    # ---------------------------------------------------------------------------------- lengths
    fit = recipe.fit_lengths(model, processor, splits, dargs, targs)  # too-long programs dropped, never cut

    # ---------------------------------------------------------------------------------- trainer
    trainer = recipe.build_trainer(model, processor, fit, splits, stages, margs, dargs, targs)
    snapshot = config_snapshot(margs, dargs, targs)
    card = recipe.card_options(margs, dargs, targs)
    recipe.save_hub_folder(trainer, snapshot, card)  # whole and loadable before the first push

    # ---------------------------------------------------------------------------------- train
    results: dict = {} if dargs.eval_only else recipe.train(trainer)

    # ---------------------------------------------------------------------------------- test
    do_test = dargs.test_samples > 0 and dargs.test_split in splits.data
    if do_test:  # every process generates its shard of the test images
        test = recipe.held_out_subset(splits.data, dargs.test_split, dargs.test_samples)
        refs = list(test["cadquery"])
        preds, gen_s = recipe.generate_test(trainer, test, fit.max_new_tokens, dargs.generate_batch_size)
    if do_test and trainer.is_world_process_zero():  # the main process scores them against the baselines
        candidates = recipe.constant_candidates(fit.train, dargs.constant_candidates, targs.seed)
        select_refs = recipe.select_references(splits.eval)
        results.update(recipe.score_test_set(preds, refs, candidates, select_refs, dargs))
        results.update({"test_generate_seconds": round(gen_s, 1), "protocol": dargs.eval_protocol})
        results["learns_geometry"] = recipe.learns_geometry(results, results["test_constant_iou_mean_all"])
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        trainer.save_metrics("test", results)
        recipe.write_predictions(os.path.join(targs.output_dir, "test_predictions.jsonl"), preds, refs)
        recipe.print_verdict(results, dargs.eval_protocol)

    # ---------------------------------------------------------------------------------- output
    if trainer.is_world_process_zero():
        write_model_card(targs.output_dir, config=snapshot, results=results, **card)
    if targs.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
