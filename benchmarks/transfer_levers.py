"""What moves synthetic-to-real transfer? Quickstart variants that each change one lever, scored on the real sample.

    python benchmarks/transfer_levers.py                                   # every lever (about 2 h on 2 CPU cores)
    python benchmarks/transfer_levers.py --levers base random_render --max-steps 800
    python benchmarks/transfer_levers.py --strategies greedy,render_compare --num-candidates 8

Every lever is `python train.py configs/quickstart.json` with the same optimizer steps, batch, learning-rate
schedule and seed, and exactly one change against `base` (LEVERS below):

- `base`: the quickstart recipe on a smaller synthetic set (`--base-num` pairs, the dataset look);
- `random_render`: the same programs with domain-randomised renders (`RenderStyle.random`: grey level and tint,
  line width, camera jitter, zoom and shift, sometimes silhouette outlines);
- `more_data`: `--data-factor` times as many synthetic pairs (base's pairs are its first ones: the generator is
  deterministic per index);
- `larger_model`: a 6 x 384 CodeGen decoder instead of 4 x 256 (same encoder); the same steps by default, or
  `--larger-model-steps` fewer, to compare at base's CPU time.

Each variant is trained by `benchmarks/quickstart_sweep.py`'s runner (checkpoints, in-training generation and the
synthetic test pass off: they cost CPU time and the real sample is the test here), then run on the 34 real
GenCAD-Code images with each inference strategy by `benchmarks/real_sample.py --part transfer` (protocol
`aligned`, constant-program and chance baselines beside it). The real pairs are used for measurement only.

A variant whose folder already holds a trained model (and, for its transfer, a `transfer.json`) is not redone,
so an interrupted run resumes where it stopped, and a second call with `--input-style random` scores the same models
on the real programs rendered with a randomised look and camera (`real_sample.jittered_inputs`), a stand-in for
renders that do not come from GenCAD-Code's pipeline. Each row carries its paired difference to `base` over the same
images, with a 95% bootstrap interval. Outputs in `--out` (default `outputs/levers`): `<lever>/` (the model and
`transfer/transfer.json`, or `transfer-random/`), `<lever>.log` (its training log), `levers.json` / `levers.md`
(or `levers-random.*`): one table for all levers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for path in (REPO, BENCH):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import quickstart_sweep  # noqa: E402
import real_sample  # noqa: E402
from cadcoder.provenance import machine_summary  # noqa: E402

#: lever -> (what changes against base, train.py overrides beyond the dataset)
LEVERS: Dict[str, tuple[str, List[str]]] = {
    "base": ("quickstart recipe, smaller synthetic set, dataset look", []),
    "random_render": ("same programs, domain-randomised renders", ["--synth_render_style", "random"]),
    "more_data": ("more synthetic pairs (base's are the first ones)", []),
    "larger_model": ("6 x 384 CodeGen decoder instead of 4 x 256", ["--n_layer", "6", "--n_embd", "384", "--n_head", "6"]),
}


def lever_dataset(lever: str, data_dir: Path, base_num: int, data_factor: int) -> tuple[Path, int]:
    """The synthetic set a lever trains on: its folder and its number of pairs."""
    if lever == "random_render":
        return data_dir / f"random-{base_num}", base_num
    if lever == "more_data":
        return data_dir / f"base-{base_num * data_factor}", base_num * data_factor
    return data_dir / f"base-{base_num}", base_num


def seed_from_smaller_set(small: Path, big: Path) -> None:
    """Start a larger set's per-level work folders from a smaller finished set with the same settings.

    `cadcoder.synth.build_synthetic_dataset` draws sample i from a seed of its own and resumes a work folder
    whose settings match, so the larger set built from the copy is the one a fresh build would make.
    """
    src, dst = small.with_name(small.name + ".parts"), big.with_name(big.name + ".parts")
    if src.is_dir() and not dst.exists() and not (big / "dataset_dict.json").exists():
        shutil.copytree(src, dst)


def lever_variants(levers: Sequence[str], data_dir: Path, base_num: int, data_factor: int, max_steps: int,
                   larger_model_steps: int | None = None) -> Dict[str, tuple[int, int, List[str]]]:
    """`quickstart_sweep`-style variants (max_steps, eval_every, overrides) of the chosen levers.

    `larger_model_steps` (default `max_steps`) lets the larger decoder train for about base's CPU time instead
    of base's steps: the comparison at a fixed budget.
    """
    variants = {}
    for lever in levers:
        folder, num = lever_dataset(lever, data_dir, base_num, data_factor)
        steps = larger_model_steps if lever == "larger_model" and larger_model_steps else max_steps
        variants[lever] = (steps, max(1, steps // 2),
                           ["--dataset", str(folder), "--synth_num", str(num), *LEVERS[lever][1]])
    return variants


def trained(folder: Path) -> bool:
    """Whether `folder` holds a finished train.py run (its trainer state is written after training)."""
    return (folder / "trainer_state.json").is_file() and (folder / "config.json").is_file()


def last_eval(folder: Path) -> Dict[str, Any]:
    """Steps trained, last validation loss and image gain, and training seconds of a variant, from its trainer state."""
    state = json.loads((folder / "trainer_state.json").read_text())
    history = state["log_history"]
    evals = [h for h in history if "eval_image_gain" in h]
    train = next((h for h in reversed(history) if "train_runtime" in h), {})
    last = evals[-1] if evals else {}
    return {"steps": state.get("global_step"), "eval_loss": last.get("eval_loss"),
            "eval_image_gain": last.get("eval_image_gain"), "train_seconds": train.get("train_runtime")}


def transfer_dir(folder: Path, input_style: str) -> Path:
    """Where the transfer report of one trained variant goes, per input style."""
    return folder / ("transfer" if input_style == "dataset" else f"transfer-{input_style}")


def transfer_args(folder: Path, args: argparse.Namespace) -> List[str]:
    """The `benchmarks/real_sample.py` command line that scores one trained variant on the real sample."""
    argv = ["--part", "transfer", "--model", str(folder), "--out", str(transfer_dir(folder, args.input_style)),
            "--sample", args.sample, "--num-candidates", str(args.num_candidates), "--seed", str(args.seed),
            "--workers", str(args.workers), "--input-style", args.input_style]
    return argv + (["--strategies", args.strategies] if args.strategies else [])


def per_image_ious(row: Dict[str, Any]) -> Dict[str, float]:
    """IoU of each real image under one strategy row of `real_sample.transfer_runs`, failures counted as 0."""
    return {p["deepcad_id"]: float(p["iou"] or 0.0) for p in row["per_image"]}


def paired_difference(lever: Dict[str, float], base: Dict[str, float], resamples: int = 10000,
                      seed: int = 0) -> Dict[str, float]:
    """Mean per-image IoU difference (lever - base) over the images both scored, with a 95% bootstrap interval.

    The images are resampled in pairs, so the interval reflects how much the difference depends on which
    34 parts happen to be in the sample, not the (larger) spread of IoU between parts.
    """
    import numpy as np

    ids = sorted(set(lever) & set(base))
    if not ids:
        raise ValueError("no image was scored for both the lever and base")
    diffs = np.array([lever[i] - base[i] for i in ids])
    means = np.random.default_rng(seed).choice(diffs, size=(resamples, diffs.size)).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "low": float(low), "high": float(high), "images": len(ids)}


def levers_table(rows: Sequence[Dict[str, Any]], transfers: Sequence[Dict[str, Any]]) -> str:
    """One markdown table: per lever and strategy the real-sample scores and the paired difference to `base`,
    then the baselines of the sample."""
    fmt = real_sample._fmt
    base = next((t for row, t in zip(rows, transfers) if row["lever"] == "base"), None)
    base_rows = {r["strategy"]: per_image_ious(r) for r in base["models"][0]["rows"]} if base else {}
    lines = ["| lever | what changes | pairs | params | steps | train min | eval loss | image gain | strategy | VSR | "
             "iou_mean_all | vs base [95% CI] | distinct | failures |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|"]
    for row, summary in zip(rows, transfers):
        model = summary["models"][0]
        minutes = row["train_seconds"] / 60 if row["train_seconds"] else None
        facts = (f"{row['what']} | {row['pairs']} | {model['parameters'] / 1e6:.1f}M | {row['steps']} | {fmt(minutes, 1)} | "
                 f"{fmt(row['eval_loss'])} | {fmt(row['eval_image_gain'])}")
        for i, r in enumerate(model["rows"]):
            fails = ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "none"
            vs_base = "-"
            if row["lever"] != "base" and r["strategy"] in base_rows:
                d = paired_difference(per_image_ious(r), base_rows[r["strategy"]])
                r["vs_base"] = d
                vs_base = f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            lines.append(f"| {row['lever']} | {facts if i == 0 else ' | | | | | |'} | {r['strategy']} ({r['num_candidates']}) | "
                         f"{fmt(r['valid_syntax_rate'], 2)} | {fmt(r['iou_mean_all'])} | {vs_base} | {fmt(r['distinct_predictions'], 2)} | {fails} |")
    baselines = transfers[0]["baselines"]
    c = baselines["constant"]
    lines.append(f"| constant program | | | | | | | | | {fmt(c['valid_syntax_rate'], 2)} | {fmt(c['iou_mean_all'])} | | "
                 f"{fmt(c['distinct_predictions'], 2)} | |")
    lines.append(f"| chance (reference vs another reference) | | | | | | | | | | {fmt(baselines['iou_chance'])} | | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the chosen levers one after another, score each on the real sample, write one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps of every lever (batch 16)")
    parser.add_argument("--larger-model-steps", type=int, default=None,
                        help="steps of larger_model (default --max-steps; fewer to match base's CPU time)")
    parser.add_argument("--base-num", type=int, default=2000, help="synthetic pairs of base (and random_render)")
    parser.add_argument("--data-factor", type=int, default=4, help="more_data trains on base-num x this many pairs")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "levers")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "levers")
    parser.add_argument("--sample", default=str(real_sample.DEFAULT_SAMPLE), help="gencad_sample folder")
    parser.add_argument("--strategies", default=None, help="inference strategies (default: all)")
    parser.add_argument("--num-candidates", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers of the transfer scoring")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the transfer part")
    parser.add_argument("--input-style", default="dataset", choices=("dataset", "random"),
                        help="'random': score on the real programs rendered with randomised look and camera")
    args = parser.parse_args(argv)
    if args.base_num < 100 or args.data_factor < 2:
        parser.error("--base-num must be >= 100 and --data-factor >= 2")

    args.out.mkdir(parents=True, exist_ok=True)
    variants = lever_variants(args.levers, args.data_dir, args.base_num, args.data_factor, args.max_steps,
                              args.larger_model_steps)
    sets = {lever: lever_dataset(lever, args.data_dir, args.base_num, args.data_factor) for lever in LEVERS}
    started = time.perf_counter()
    rows, transfers = [], []
    for lever in args.levers:
        folder = args.out / lever
        if not trained(folder):
            if lever == "more_data":
                seed_from_smaller_set(sets["base"][0], sets[lever][0])
            print(f"[levers] training {lever}: {' '.join(variants[lever][2])} ({variants[lever][0]} steps)", flush=True)
            quickstart_sweep.run_variants([lever], args.out, parallel=1, workers=0, variants=variants)
            if not trained(folder):
                raise RuntimeError(f"training {lever} failed; see {args.out / (lever + '.log')}")
        report = transfer_dir(folder, args.input_style) / "transfer.json"
        if not report.is_file():
            real_sample.main(transfer_args(folder, args))
        transfers.append(json.loads(report.read_text()))
        rows.append({"lever": lever, "what": LEVERS[lever][0], "pairs": sets[lever][1], **last_eval(folder)})
        print(f"[levers] {lever} done after {time.perf_counter() - started:.0f} s", flush=True)

    table = levers_table(rows, transfers)
    inputs = "images" if args.input_style == "dataset" else "programs rendered with randomised look and camera"
    header = (f"Transfer levers: batch 16, seed 0, scored on the 34 real GenCAD-Code test {inputs} "
              f"(`aligned`), commit {transfers[-1]['commit']}, {machine_summary()}.\n\n")
    name = "levers" if args.input_style == "dataset" else f"levers-{args.input_style}"
    (args.out / f"{name}.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                      "levers": rows, "transfers": transfers}, indent=2, default=str))
    (args.out / f"{name}.md").write_text(header + table + "\n")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
