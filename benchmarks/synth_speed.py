"""Speed and diversity of `cadcoder synth`.

Measures, on this machine:
* samples/s of the full pipeline (generation + sandboxed execution + validation + rendering + dedup +
  writing shards + the final save_to_disk), with --workers sandbox processes (default 2 = "2 cores");
* render time per image (measured inside the sandbox worker around cadcoder.render.render_task);
* the diversity report of the kept corpus beside the published GenCAD-Code figures.

Usage:
    python benchmarks/synth_speed.py                       # N=150 at 448 px, a few minutes on 2 cores
    python benchmarks/synth_speed.py --num 10000           # the full report of the issue (~1 h on 2 cores)
    python benchmarks/synth_speed.py --num 300 --complexity 0 --image-size 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cadcoder.corpus_stats import corpus_stats, format_comparison
from cadcoder.provenance import machine_summary
from cadcoder.synth import build_synthetic_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=150, help="samples to build (10000 for the issue's full report)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--complexity", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one, deleted)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="synth_speed_")
        out = tmp.name
    t0 = time.perf_counter()
    dd = build_synthetic_dataset(args.num, out, workers=args.workers, seed=args.seed, image_size=args.image_size,
                                 complexity=args.complexity, progress=True)
    wall = time.perf_counter() - t0
    stats = json.loads((Path(out) / "synth_stats.json").read_text())
    timing = stats["timing"]
    programs = [c for d in dd.values() for c in d["cadquery"]]
    div = corpus_stats(programs)

    print("\n== cadcoder synth speed ==")
    print(machine_summary())
    print(f"settings: num={args.num} workers={args.workers} image_size={args.image_size} "
          f"complexity={args.complexity} seed={args.seed}")
    print(f"wall time {wall:.1f} s (sandbox start-up included) -> {args.num / wall:.2f} samples/s")
    print(f"programs generated {stats['attempted']}, kept {stats['kept']} "
          f"({stats['kept'] / max(stats['attempted'], 1):.1%}); rejected {stats['rejected']}")
    print(f"sandbox time per program (execute + validate + render + fingerprint): "
          f"{timing['sandbox_seconds'] / max(timing['programs'], 1) * 1000:.0f} ms")
    print(f"render time per image ({args.image_size} px, inside the worker): "
          f"{timing['render_seconds'] / max(timing['rendered'], 1) * 1000:.1f} ms")
    print(f"\n== diversity of the kept corpus (N={len(programs)}) vs GenCAD-Code ==")
    print(format_comparison({f"synthetic c{args.complexity}": div}))
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "samples_per_s": args.num / wall, "stats": stats,
                                               "diversity": div, "settings": vars(args)}, indent=1, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
