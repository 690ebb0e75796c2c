"""Which training lever makes the quickstart model read the image? A sweep of train.py overrides.

    python benchmarks/quickstart_sweep.py --grid steps               # 300 / 1000 / 3000 steps
    python benchmarks/quickstart_sweep.py --grid levers --parallel 7  # the H100 sweep behind configs/quickstart.json
    python benchmarks/quickstart_sweep.py --variants q300 lr1_nocur_warm100 --parallel 2
    python benchmarks/quickstart_sweep.py --score-only outputs/sweep   # score predictions written elsewhere

Every variant is `python train.py configs/quickstart.json` plus the overrides listed in VARIANTS, with
checkpoints, in-training generation and the final test pass switched off (they need no GPU but cost
time); the variants run as parallel processes (`--parallel`), which suits one GPU or a many-core machine.
Afterwards each trained model greedily writes a program for the first `--test-samples` test images.

Reported per variant, from the trainer's own log:
- `eval_loss` and `eval_image_gain` at the last evaluation: the validation loss with each image
  minus the loss with another example's image (cadcoder.training.CadCoderTrainer.image_reliance).
  A gain near 0 means the model ignores its input;
- `distinct`: share of distinct programs over the test images;
- VSR and `iou_mean_all` (aligned protocol) by execution, when CadQuery is installed. Without it
  (e.g. a GPU box with no CadQuery), the predictions are saved in `<out>/<variant>.json`, and
  `--score-only <out>` scores them later on a machine that has it.

Outputs: `<out>/<variant>.json` (history, predictions, references, scores) and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from common import REPO  # benchmarks/common.py, beside this script
from cadcoder.evaluation import distinct_share
from cadcoder.provenance import machine_summary
from cadcoder.quickstart_variants import CONFIG, run_variants

OLD = ["--curriculum", "true", "--curriculum_start", "0.3", "--curriculum_ramp", "0.5", "--warmup_steps", "20",
       "--train_sampling_strategy", "random"]  # the quickstart recipe before this sweep
NEW = ["--curriculum", "false", "--warmup_steps", "100"]
# name -> (max_steps, eval_every, overrides of configs/quickstart.json)
VARIANTS: dict[str, tuple[int, int, list[str]]] = {
    "q300": (300, 50, OLD),
    "q1000": (1000, 100, OLD),
    "q3000": (3000, 250, OLD),
    "q300_vision_lr4e-3": (300, 50, [*OLD, "--vision_learning_rate", "4e-3", "--projector_learning_rate", "4e-3"]),
    "q1200_lr1e-3": (1200, 200, OLD),
    "q1200_lr2e-3": (1200, 200, [*OLD, "--learning_rate", "2e-3"]),
    "q1200_lr3e-3": (1200, 200, [*OLD, "--learning_rate", "3e-3"]),
    "q1200_lr2e-3_nocur": (1200, 200, [*OLD, "--learning_rate", "2e-3", "--curriculum", "false"]),
    "q1200_lr2e-3_vision4e-3": (1200, 200, [*OLD, "--learning_rate", "2e-3", "--vision_learning_rate", "4e-3",
                                            "--projector_learning_rate", "4e-3"]),
    "q800_lr2e-3": (800, 200, [*OLD, "--learning_rate", "2e-3"]),
    "q1500_lr2e-3": (1500, 250, [*OLD, "--learning_rate", "2e-3"]),
    "nocur_lr1e-3": (1200, 200, [*OLD, "--curriculum", "false"]),
    "nocur_lr5e-4": (1200, 200, [*OLD, "--curriculum", "false", "--learning_rate", "5e-4"]),
    "nocur_lr7e-4": (1200, 200, [*OLD, "--curriculum", "false", "--learning_rate", "7e-4"]),
    "nocur_batch8_2400": (2400, 400, [*OLD, "--curriculum", "false", "--per_device_train_batch_size", "8"]),
    "nocur_lr1e-3_1000": (1000, 200, [*OLD, "--curriculum", "false"]),
    "nocur_part_lrs": (1200, 200, [*OLD, "--curriculum", "false", "--vision_learning_rate", "2e-3",
                                   "--projector_learning_rate", "2e-3", "--language_learning_rate", "7e-4"]),
    "lr1_nocur_warm100": (1200, 200, [*OLD, *NEW]),
    "lr1_nocur_warm100_seed1": (1200, 200, [*OLD, *NEW, "--seed", "1"]),
    "lr1_nocur_warm100_seed2": (1200, 200, [*OLD, *NEW, "--seed", "2"]),
    "lr1_nocur_warm200": (1200, 200, [*OLD, "--curriculum", "false", "--warmup_steps", "200"]),
    "lr1_nocur_warm100_1500": (1500, 250, [*OLD, *NEW]),
    "quickstart": (1000, 250, []),  # configs/quickstart.json as committed
}
GRIDS = {
    "steps": ["q300", "q1000", "q3000"],
    "levers": ["q300", "q1000", "q3000", "q300_vision_lr4e-3", "q800_lr2e-3", "q1200_lr1e-3", "q1200_lr2e-3",
               "q1200_lr3e-3", "q1200_lr2e-3_vision4e-3", "q1500_lr2e-3", "q1200_lr2e-3_nocur", "nocur_lr1e-3",
               "nocur_lr1e-3_1000", "nocur_lr5e-4", "nocur_lr7e-4", "nocur_part_lrs", "nocur_batch8_2400",
               "lr1_nocur_warm100", "lr1_nocur_warm100_seed1", "lr1_nocur_warm100_seed2", "lr1_nocur_warm200",
               "lr1_nocur_warm100_1500"],
}


def load_test(test_samples: int) -> tuple[list[Any], list[str]]:
    """The first `test_samples` test images (decoded) and reference programs of the quickstart's dataset."""
    from cadcoder.data import decode_image, load_cad_dataset

    config = json.loads((REPO / CONFIG).read_text())
    test = load_cad_dataset(config["dataset"])["test"].select(range(test_samples))
    return [decode_image(v) for v in test["image"]], list(test["cadquery"])


def generate(name: str, out_dir: Path, images: list[Any], references: list[str]) -> dict[str, Any]:
    """Log history of a trained variant plus its greedy programs for the test images."""
    import torch
    from transformers import AutoModel, AutoProcessor

    from cadcoder.training import generate_programs

    folder = out_dir / name
    state = json.loads((folder / "trainer_state.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    started = time.perf_counter()
    predictions = generate_programs(model, processor, images, max_new_tokens=600, batch_size=50,
                                    autocast=lambda: torch.autocast(device, dtype=torch.bfloat16))
    return {
        "name": name,
        "max_steps": VARIANTS[name][0],
        "overrides": VARIANTS[name][2],
        "history": [h for h in state["log_history"] if "eval_image_gain" in h],
        "generate_seconds": round(time.perf_counter() - started, 1),
        "predictions": predictions,
        "references": list(references),
        "distinct": distinct_share(predictions),
    }


def score(record: dict[str, Any], sandbox: Any) -> dict[str, Any]:
    """VSR and iou_mean_all of a record's predictions, by execution in `sandbox`."""
    from cadcoder.evaluation import evaluate_programs

    report = evaluate_programs(record["predictions"], record["references"], progress=False, sandbox=sandbox)
    return {k: report.get(k) for k in ("valid_syntax_rate", "iou_mean_all", "iou_median", "distinct_predictions")}


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table: one row per variant."""
    rows = ["| variant | steps | eval_loss | image_gain | distinct | VSR | iou_mean_all |", "|---|---|---|---|---|---|---|"]
    for r in records:
        last = r["history"][-1] if r["history"] else {}
        s = r.get("scores") or {}
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append(f"| {r['name']} | {r['max_steps']} | {fmt(last.get('eval_loss'))} | "
                    f"{fmt(last.get('eval_image_gain'))} | {r['distinct']:.2f} | {fmt(s.get('valid_syntax_rate'))} | "
                    f"{fmt(s.get('iou_mean_all'))} |")
    return "\n".join(rows)


def main() -> None:
    """Train, generate, score and tabulate the chosen variants."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None)
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "sweep")
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers per variant")
    parser.add_argument("--test-samples", type=int, default=100)
    parser.add_argument("--score-only", type=Path, default=None, help="score <dir>/*.json written by an earlier run")
    args = parser.parse_args()
    can_score = importlib.util.find_spec("cadquery") is not None
    if args.score_only:
        records = [json.loads(p.read_text()) for p in sorted(args.score_only.glob("*.json"))]
        out = args.score_only
    else:
        names = args.variants or GRIDS[args.grid or "steps"]
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        run_variants(names, out, args.parallel, args.workers, VARIANTS)
        images, references = load_test(args.test_samples)
        records = []
        for name in names:
            record = generate(name, out, images, references)
            (out / f"{name}.json").write_text(json.dumps(record))
            records.append(record)
    if can_score:
        from cadcoder.sandbox import Sandbox

        with Sandbox() as sandbox:  # one start for every variant
            for record in records:
                if "scores" not in record:
                    record["scores"] = score(record, sandbox)
                    (out / f"{record['name']}.json").write_text(json.dumps(record))  # survives an interruption
                print(f"[sweep] {record['name']}: {record['scores']}", flush=True)
    else:
        print("[sweep] CadQuery is not installed: predictions saved; score them with --score-only on a machine "
              "that has it", flush=True)
    text = f"# quickstart sweep\n\n{machine_summary()}\n\n{table(records)}\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
