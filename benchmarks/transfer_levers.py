"""What moves synthetic-to-real transfer? Quickstart variants that each change one lever, scored on the real sample.

    python benchmarks/transfer_levers.py                                   # every lever (about 2 h on 2 CPU cores)
    python benchmarks/transfer_levers.py --levers base random_render --max-steps 800
    python benchmarks/transfer_levers.py --strategies greedy,render_compare --num-candidates 8

Every lever is `python train.py configs/quickstart.json` with the same optimizer steps, batch, learning-rate
schedule and seed, and exactly one change against `base` (`cadcoder.quickstart_variants.LEVERS`):

- `base`: the quickstart recipe on a smaller synthetic set (`--base-num` pairs, the dataset look);
- `random_render`: the same programs with domain-randomised renders (`RenderStyle.random`: grey level and tint,
  line width, camera jitter, zoom and shift, sometimes silhouette outlines);
- `more_data`: `--data-factor` times as many synthetic pairs (base's pairs are its first ones: the generator is
  deterministic per index);
- `larger_model`: a 6 x 384 CodeGen decoder instead of 4 x 256 (same encoder); the same steps by default, or
  `--larger-model-steps` fewer, to compare at base's CPU time.

Each variant is trained by `cadcoder.quickstart_variants.run_variants` (checkpoints, in-training generation and the
synthetic test pass off: they cost CPU time and the real sample is the test here), then run on the 34 real
GenCAD-Code images with each inference strategy by `cadcoder.transfer.score_transfer`, as
`benchmarks/real_sample.py --part transfer` does (protocol `aligned`, constant-program and chance baselines
beside it). The real pairs are used for measurement only.

A variant whose folder already holds a trained model (and, for its transfer, a `transfer.json`) is not redone,
so an interrupted run resumes where it stopped, and a second call with `--input-style random` scores the same models
on the real programs rendered with a randomised look and camera (`cadcoder.real_sample.jittered_inputs`), a stand-in for
renders that do not come from GenCAD-Code's pipeline. Each row carries its paired difference to `base` over the same
images, with a 95% bootstrap interval. Outputs in `--out` (default `outputs/levers`): `<lever>/` (the model and
`transfer/transfer.json`, or `transfer-random/`), `<lever>.log` (its training log), `levers.json` / `levers.md`
(or `levers-random.*`): one table for all levers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import common  # benchmarks/common.py, beside this script
from cadcoder.provenance import machine_summary
from cadcoder.quickstart_variants import (LEVERS, last_eval, lever_dataset, lever_variants, run_variants,
                                          start_from_smaller_set, trained)
from cadcoder.real_sample import load_sample
from cadcoder.transfer import fmt, paired_difference, per_image_ious, score_transfer


def transfer_dir(folder: Path, input_style: str) -> Path:
    """Where the transfer report of one trained variant goes, per input style."""
    return folder / ("transfer" if input_style == "dataset" else f"transfer-{input_style}")


def score_lever(folder: Path, records: List[Dict[str, Any]], args: argparse.Namespace) -> None:
    """Score one trained variant on the real sample, as ``benchmarks/real_sample.py --part transfer`` would."""
    strategies = args.strategies.split(",") if args.strategies else None
    score_transfer(records, [str(folder)], transfer_dir(folder, args.input_style), strategies=strategies,
                   num_candidates=args.num_candidates, seed=args.seed, workers=args.workers,
                   input_style=args.input_style)


def levers_table(rows: Sequence[Dict[str, Any]], transfers: Sequence[Dict[str, Any]]) -> str:
    """One markdown table: per lever and strategy the real-sample scores and the paired difference to `base`,
    then the baselines of the sample."""
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


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps of every lever (batch 16)")
    parser.add_argument("--larger-model-steps", type=int, default=None,
                        help="steps of larger_model (default --max-steps; fewer to match base's CPU time)")
    parser.add_argument("--base-num", type=int, default=2000, help="synthetic pairs of base (and random_render)")
    parser.add_argument("--data-factor", type=int, default=4, help="more_data trains on base-num x this many pairs")
    parser.add_argument("--data-dir", type=Path, default=common.REPO / "data" / "levers")
    parser.add_argument("--out", type=Path, default=common.REPO / "outputs" / "levers")
    common.add_sample_argument(parser)
    common.add_transfer_arguments(parser)
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers of the transfer scoring")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the transfer part")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train the chosen levers one after another, score each on the real sample, write one table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.base_num < 100 or args.data_factor < 2:
        parser.error("--base-num must be >= 100 and --data-factor >= 2")

    args.out.mkdir(parents=True, exist_ok=True)
    variants = lever_variants(args.levers, args.data_dir, args.base_num, args.data_factor, args.max_steps,
                              args.larger_model_steps)
    sets = {lever: lever_dataset(lever, args.data_dir, args.base_num, args.data_factor) for lever in LEVERS}
    started = time.perf_counter()
    rows, transfers, records = [], [], None
    for lever in args.levers:
        folder = args.out / lever
        if not trained(folder):
            if lever == "more_data":
                start_from_smaller_set(sets["base"][0], sets[lever][0])
            print(f"[levers] training {lever}: {' '.join(variants[lever][2])} ({variants[lever][0]} steps)", flush=True)
            run_variants([lever], args.out, parallel=1, workers=0, variants=variants)
            if not trained(folder):
                raise RuntimeError(f"training {lever} failed; see {args.out / (lever + '.log')}")
        report = transfer_dir(folder, args.input_style) / "transfer.json"
        if not report.is_file():
            records = records or load_sample(args.sample)
            score_lever(folder, records, args)
        transfers.append(json.loads(report.read_text()))
        rows.append({"lever": lever, "what": LEVERS[lever][0], "pairs": sets[lever][1], **last_eval(folder)})
        print(f"[levers] {lever} done after {time.perf_counter() - started:.0f} s", flush=True)

    table = levers_table(rows, transfers)
    inputs = "images" if args.input_style == "dataset" else "programs rendered with randomised look and camera"
    header = (f"Transfer levers: batch 16, seed 0, scored on the 34 real GenCAD-Code test {inputs} "
              f"(`aligned`), commit {transfers[-1]['commit']}, {machine_summary()}.\n\n")
    name = "levers" if args.input_style == "dataset" else f"levers-{args.input_style}"
    common.write_report(args.out, name, {"settings": {k: str(v) for k, v in vars(args).items()}, "levers": rows,
                                         "transfers": transfers}, markdown=header + table + "\n")
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
