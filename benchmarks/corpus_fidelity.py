"""Corpus fidelity: the synthetic corpus against the 34 real GenCAD-Code programs.

Compares operation histograms, loops and sketches per model, plane normals, number format and grids,
token lengths and template diversity. Text only (nothing is executed), so it runs in seconds. The
real programs are measurement data: nothing in the generator is fitted to single programs.

Usage:
    python benchmarks/corpus_fidelity.py                     # 2000 generated programs per level
    python benchmarks/corpus_fidelity.py --dataset DIR       # also a corpus built by `cadcoder synth`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cadcoder.corpus_stats import corpus_stats, format_comparison
from cadcoder.real_sample import DEFAULT_SAMPLE
from cadcoder.synth import generate_program, sample_seed

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=2000, help="generated programs per complexity level")
    ap.add_argument("--real", default=str(DEFAULT_SAMPLE / "programs.jsonl"), help="the real programs.jsonl")
    ap.add_argument("--levels", default="3,1,0")
    ap.add_argument("--dataset", default=None, help="a built synthetic dataset (all splits are read)")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer folder for exact token counts")
    args = ap.parse_args()

    tok = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    real = [json.loads(line)["cadquery"] for line in Path(args.real).read_text().splitlines() if line.strip()]
    cols = {"real (34)": corpus_stats(real, tokenizer=tok)}
    for level in (int(x) for x in args.levels.split(",")):
        progs = [generate_program(sample_seed(0, i), complexity=level) for i in range(args.num)]
        cols[f"generated c{level}"] = corpus_stats(progs, tokenizer=tok)
    if args.dataset:
        from cadcoder.data import load_cad_dataset

        dd = load_cad_dataset(args.dataset)
        cols["kept dataset"] = corpus_stats([c for d in dd.values() for c in d["cadquery"]], tokenizer=tok)
    print(f"token counts: {'tokenizer ' + args.tokenizer if tok else 'approximation ceil(chars / 1.5)'}")
    print(format_comparison(cols))
    real_s, syn_s = cols["real (34)"], cols[next(k for k in cols if k.startswith("generated"))]
    print("\nnormals (share of sketch planes):")
    for name, s in cols.items():
        print(f"  {name:14s} " + ", ".join(f"{k}: {v:.2f}" for k, v in list(s["normals"].items())[:6]))
    print("\nsketches per model (histogram):")
    for name, s in cols.items():
        print(f"  {name:14s} " + ", ".join(f"{k}: {v / s['n']:.2f}" for k, v in s["sketches_hist"].items()))
    print("\nloops per model (histogram):")
    for name, s in cols.items():
        print(f"  {name:14s} " + ", ".join(f"{k}: {v / s['n']:.2f}" for k, v in s["loops_hist"].items()))
    gap = {k: round(syn_s[k]["mean"] - real_s[k]["mean"], 2) for k in ("chars", "tokens", "sketches", "loops")}
    print(f"\nmean gaps (first generated level - real): {gap}")


if __name__ == "__main__":
    main()
