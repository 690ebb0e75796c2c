"""How close is CadCoder's data to real GenCAD-Code data? Measured on the 34 real test pairs.

The real sample (``gencad_sample/``: 34 GenCAD-Code test images with their ground-truth programs) is
used for measurement only, never for training or tuning to single images. Numbers quoted from this
script must say they come from that sample.

Parts (``--part``, repeatable; default: all implemented parts):

1. ``fidelity``: renderer fidelity. Every ground-truth program runs in the sandbox and is rendered by
   :func:`cadcoder.render.render_task` at the dataset framing; the render is compared with the real
   image: silhouette IoU, edge-map F1 (2-px tolerance) and median face-colour difference (0-255).
   Writes ``fidelity.json`` and ``fidelity_sheet.png`` (real | ours, one pair per cell).
2. ``corpus``: corpus fidelity. The real programs against the synthetic corpus (programs drawn from
   :func:`cadcoder.synth.generate_program` at each level, plus a built dataset such as the quickstart's
   ``data/synth-quickstart`` when present) with :func:`cadcoder.corpus_stats.corpus_stats`: operation
   histogram, loops and sketches per model, plane normals, number formats and grids, token lengths (with
   the model's tokenizer, raw and in the canonical-number form the model trains on). Text only.
   Writes ``corpus.json``.
3. ``transfer``: synthetic-to-real transfer. One or more model folders (``--model``, repeatable; default
   ``outputs/quickstart``, trained on synthetic data only) run on the real images with each strategy of
   :func:`cadcoder.inference.generate_cad`; the chosen programs are scored with
   :func:`cadcoder.evaluation.evaluate_programs` (protocol ``aligned``, with the chance level) against the
   real programs, beside the constant-program baseline. VSR, ``iou_mean``, ``iou_mean_all``, failure
   reasons, share of distinct outputs, seconds per image. Writes ``transfer.json`` and ``transfer.md``;
   finished pairs are cached in ``transfer_cache.jsonl`` so an interrupted run resumes. What moves the
   number (more synthetic data, ``cadcoder synth --render-style random``, a larger model) is one command
   once those models are trained: ``--part transfer --model outputs/A --model outputs/B``.

New parts are functions ``part(records, args) -> dict`` registered in :data:`PARTS`.

Usage::

    python benchmarks/real_sample.py                                  # all parts, outputs/real_sample/
    python benchmarks/real_sample.py --part fidelity --workers 2 --out outputs/real_sample
    python benchmarks/real_sample.py --part corpus
    python benchmarks/real_sample.py --part transfer --model outputs/quickstart --num-candidates 8
    python benchmarks/real_sample.py --part transfer --model outputs/quickstart --model outputs/bigger  # one table
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
from PIL import Image

import common  # benchmarks/common.py, beside this script
from cadcoder import tasks
from cadcoder.corpus_gaps import CORPUS_LEVELS, corpus_gaps, token_lengths
from cadcoder.provenance import machine_summary
from cadcoder.real_sample import load_sample, write_sheet
from cadcoder.sandbox import Sandbox
from cadcoder.transfer import DEFAULT_MODEL, score_transfer

#: Goals of the renderer-fidelity part: the renders must match the real images this closely on average.
FIDELITY_GOALS = {"silhouette_iou": (">=", 0.90), "edge_f1": (">=", 0.70), "face_colour_diff": ("<=", 10.0)}


# --------------------------------------------------------------------------------------------------
# Part 1: renderer fidelity
# --------------------------------------------------------------------------------------------------
def renderer_fidelity(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Render every ground-truth program at the dataset framing and compare with the real image."""
    from cadcoder.image_metrics import compare_images

    size = records[0]["image"].width
    codes = [r["cadquery"] for r in records]
    t0 = time.perf_counter()
    with Sandbox(num_workers=args.workers, timeout=args.timeout) as sandbox:
        results = sandbox.map(codes, task=tasks.RENDER, progress=True, size=size)
    wall = time.perf_counter() - t0

    rows, pairs = [], []
    for rec, res in zip(records, results):
        row: Dict[str, Any] = {"deepcad_id": rec["deepcad_id"], "status": res.status, "seconds": round(res.seconds, 3)}
        if res.ok:
            ours = Image.fromarray(np.asarray(res.value, dtype=np.uint8), mode="RGB")
            row.update({k: round(v, 4) for k, v in compare_images(rec["image"], ours).items()})
            pairs.append((rec["deepcad_id"], rec["image"], ours, row))
        else:
            row["error"] = res.error
        rows.append(row)

    ok_rows = [r for r in rows if r["status"] == "ok"]
    summary: Dict[str, Any] = {"num_pairs": len(rows), "num_rendered": len(ok_rows), "wall_seconds": round(wall, 2)}
    for key, (op, goal) in FIDELITY_GOALS.items():
        vals = np.array([r[key] for r in ok_rows], dtype=float)
        mean = float(vals.mean()) if vals.size else float("nan")
        summary[key] = {
            "mean": round(mean, 4),
            "median": round(float(np.median(vals)), 4) if vals.size else None,
            "min_or_max": round(float(vals.min() if op == ">=" else vals.max()), 4) if vals.size else None,
            "goal": f"{op} {goal}",
            "met": bool(mean >= goal if op == ">=" else mean <= goal),
        }
    summary["per_image"] = rows

    out = Path(args.out)
    common.write_report(out, "fidelity", summary)
    if pairs:
        write_sheet(pairs, out / "fidelity_sheet.png")

    print(f"\n== Part 1: renderer fidelity ({len(ok_rows)}/{len(rows)} rendered, {wall:.1f} s wall, {args.workers} workers) ==")
    print(f"{'deepcad_id':>10} {'status':>8} {'sil_iou':>8} {'edge_f1':>8} {'colour':>7} {'sec':>6}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['deepcad_id']:>10} {'ok':>8} {r['silhouette_iou']:8.3f} {r['edge_f1']:8.3f} "
                  f"{r['face_colour_diff']:7.1f} {r['seconds']:6.2f}")
        else:
            print(f"{r['deepcad_id']:>10} {r['status']:>8}  {r.get('error', '')[:60]}")
    for key in FIDELITY_GOALS:
        s = summary[key]
        print(f"{key:>16}: mean {s['mean']:.3f}  median {s['median']}  worst {s['min_or_max']}  "
              f"goal {s['goal']}  {'MET' if s['met'] else 'NOT MET'}")
    print(f"wrote {out / 'fidelity.json'} and {out / 'fidelity_sheet.png'}")
    return summary


# --------------------------------------------------------------------------------------------------
# Part 2: corpus fidelity
# --------------------------------------------------------------------------------------------------
def _corpus_tokenizer(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The tokenizer for token lengths: ``--tokenizer``, else the first ``--model`` folder's, else none."""
    candidates = [args.tokenizer] if args.tokenizer else list(args.model or [DEFAULT_MODEL])
    for folder in candidates:
        if folder and (Path(folder) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            # The file itself, not AutoTokenizer: a model folder's config.json names remote code to trust.
            return PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json")), str(folder)
    if args.tokenizer:
        raise FileNotFoundError(f"--tokenizer {args.tokenizer}: no tokenizer.json there; pass a model or tokenizer folder")
    return None, None


def corpus_fidelity(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Compare the synthetic corpus with the real programs (text statistics only; nothing is executed)."""
    from cadcoder.corpus_stats import GENCAD_FIGURES, corpus_stats
    from cadcoder.synth import generate_program, sample_seed

    t0 = time.perf_counter()
    tok, tok_source = _corpus_tokenizer(args)
    real = [r["cadquery"] for r in records]
    corpora: Dict[str, List[str]] = {f"real ({len(real)})": real}
    levels = [int(x) for x in args.corpus_levels.split(",")]
    corpora[f"generated c{','.join(map(str, levels))}"] = [
        generate_program(sample_seed(args.seed + 1000 * level, i), complexity=level)
        for level in levels for i in range(args.corpus_num)
    ]  # fmt: skip
    if args.corpus_dataset and Path(args.corpus_dataset).exists():
        from cadcoder.data import load_cad_dataset

        dd = load_cad_dataset(args.corpus_dataset)
        splits = dd.values() if hasattr(dd, "values") else [dd]
        corpora[f"dataset {Path(args.corpus_dataset).name}"] = [c for d in splits for c in d.select_columns(["cadquery"])["cadquery"]]
    columns = {name: corpus_stats(progs, tokenizer=tok) for name, progs in corpora.items()}
    real_key = next(iter(columns))
    gaps = {name: corpus_gaps(columns[real_key], s) for name, s in columns.items() if name != real_key}
    lengths = {name: token_lengths(progs, tok, args.number_decimals, args.max_length) for name, progs in corpora.items()} if tok else {}

    summary = {"tokenizer": tok_source or "approximation ceil(chars / 1.5)", "columns": columns, "gaps": gaps,
               "token_lengths": lengths, "gencad_figures": GENCAD_FIGURES, "seconds": round(time.perf_counter() - t0, 2),
               "settings": {"levels": levels, "per_level": args.corpus_num, "seed": args.seed, "dataset": args.corpus_dataset}}
    out = Path(args.out)
    common.write_report(out, "corpus", summary)
    _print_corpus_report(summary, tok_source, args)
    print(f"wrote {out / 'corpus.json'} ({summary['seconds']:.1f} s)")
    return summary


def _print_corpus_report(summary: Dict[str, Any], tok_source: str | None, args: argparse.Namespace) -> None:
    """The corpus part's printed report: statistics side by side, histograms, gaps and token lengths."""
    from cadcoder.corpus_stats import format_comparison

    columns, gaps, lengths = summary["columns"], summary["gaps"], summary["token_lengths"]
    print(f"\n== Part 2: corpus fidelity (token counts: {summary['tokenizer']}) ==")
    print(format_comparison(columns))
    for title, key in (("plane normals (share of sketch planes)", "normals"), ("sketches per model", "sketches_hist"),
                       ("loops per model", "loops_hist")):  # fmt: skip
        print(f"\n{title}:")
        for name, s in columns.items():
            hist = s[key]
            total = sum(hist.values()) or 1
            print(f"  {name:24s} " + ", ".join(f"{k}: {v / total:.2f}" for k, v in list(hist.items())[:8]))
    print("\ngaps to the real programs (TV = total-variation distance, 0 = same; diffs = synthetic - real):")
    for name, g in gaps.items():
        tvs = ", ".join(f"{k[3:]} {v:.2f}" for k, v in g.items() if k.startswith("tv_") and v is not None)
        print(f"  {name:24s} TV: {tvs}")
        print(f"  {'':24s} mean diffs: {g['mean_diff']}; grid-share diffs: {g['grid_share_diff']}")
        print(f"  {'':24s} op-use diffs: {g['op_program_share_diff']}; boolean-use diffs: {g['boolean_program_share_diff']}")
    if lengths:
        print(f"\ntoken lengths ({tok_source}; canonical = numbers at {args.number_decimals} decimals, as trained):")
        for name, t in lengths.items():
            print(f"  {name:24s} raw mean {t['raw']['mean']:.0f} p95 {t['raw']['p95']:.0f} max {t['raw']['max']:.0f} | "
                  f"canonical mean {t['canonical']['mean']:.0f} p95 {t['canonical']['p95']:.0f} max {t['canonical']['max']:.0f} | "
                  f"> {args.max_length} tokens: {t['over_max_length']:.2f}")


# --------------------------------------------------------------------------------------------------
# Part 3: synthetic-to-real transfer
# --------------------------------------------------------------------------------------------------
def synthetic_to_real(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Run model(s) trained on synthetic data on the real images with each strategy; write transfer.json/.md.

    With ``--input-style random`` the inputs are :func:`cadcoder.real_sample.jittered_inputs` instead of the
    real images (the references stay the real programs). See :func:`cadcoder.transfer.score_transfer`.
    """
    import torch

    from cadcoder.transfer import check_transfer_request

    strategies = args.strategies.split(",") if args.strategies else None
    check_transfer_request(strategies, args.model)  # before torch threads change: a wrong flag fails first
    if args.threads:
        torch.set_num_threads(args.threads)
    return score_transfer(records, args.model, args.out, strategies=strategies, num_candidates=args.num_candidates,
                          seed=args.seed, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          protocol=args.protocol, input_style=args.input_style, workers=args.workers,
                          timeout=args.timeout)  # fmt: skip


# --------------------------------------------------------------------------------------------------
PARTS: Dict[str, Callable[[Sequence[Dict[str, Any]], argparse.Namespace], Dict[str, Any]]] = {
    "fidelity": renderer_fidelity,
    "corpus": corpus_fidelity,
    "transfer": synthetic_to_real,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script: common settings, then one group per part."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_sample_argument(parser)
    parser.add_argument("--out", default="outputs/real_sample", help="output folder for JSON reports and PNG sheets")
    parser.add_argument("--part", action="append", choices=sorted(PARTS), help="part(s) to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per program in the sandbox")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs (smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus and of sampling")
    corpus = parser.add_argument_group("corpus part")
    corpus.add_argument("--corpus-num", type=int, default=1000, help="generated programs per complexity level")
    corpus.add_argument("--corpus-levels", default=",".join(map(str, CORPUS_LEVELS)), help="generator levels, e.g. 0,1,2,3")
    corpus.add_argument("--corpus-dataset", default="data/synth-quickstart",
                        help="also a built synthetic dataset (all splits), when the folder exists")
    corpus.add_argument("--tokenizer", default=None, help="tokenizer folder for token lengths (default: the first --model's)")
    corpus.add_argument("--number-decimals", type=int, default=3, help="decimals of the canonical numbers the model trains on")
    corpus.add_argument("--max-length", type=int, default=640, help="training max_length: longer canonical programs are flagged")
    transfer = parser.add_argument_group("transfer part")
    transfer.add_argument("--model", action="append", default=None,
                          help=f"model folder trained on synthetic data (repeatable: one table for several; default {DEFAULT_MODEL})")
    common.add_transfer_arguments(transfer)
    transfer.add_argument("--max-new-tokens", type=int, default=640, help="generation length cap (quickstart trains with max_length 640)")
    transfer.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    transfer.add_argument("--protocol", default="aligned", choices=("aligned", "bbox", "mecagent"), help="IoU protocol")
    transfer.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts and print their reports."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_candidates < 1:
        parser.error("--num-candidates must be >= 1")

    records = load_sample(args.sample)
    if args.limit is not None:
        records = records[: args.limit]
    print(f"real sample: {len(records)} pairs from {args.sample} (GenCAD-Code test split; measurement only)")
    print(machine_summary())
    for name in args.part or list(PARTS):
        PARTS[name](records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
