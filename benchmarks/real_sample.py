"""How close is CadCoder's data to real GenCAD-Code data? Measured on the 34 real test pairs.

The real sample (``gencad_sample/``: 34 GenCAD-Code test images with their ground-truth programs) is
used for measurement only, never for training or tuning to single images. Numbers quoted from this
script must say they come from that sample.

Parts (``--part``, repeatable; default: all implemented parts):

1. ``fidelity``: renderer fidelity. Every ground-truth program runs in the sandbox and is rendered by
   :func:`cadcoder.render.render_task` at the dataset framing; the render is compared with the real
   image: silhouette IoU, edge-map F1 (2-px tolerance) and median face-colour difference (0-255).
   Writes ``fidelity.json`` and ``fidelity_sheet.png`` (real | ours, one pair per cell).
2. ``corpus`` (to be added): corpus fidelity of ``cadcoder.synth`` against the real programs.
3. ``transfer`` (to be added): a model trained on synthetic data only, run on the real images.

New parts are functions ``part(records, args) -> dict`` registered in :data:`PARTS`.

Usage::

    python benchmarks/real_sample.py                                  # all parts, outputs/real_sample/
    python benchmarks/real_sample.py --part fidelity --workers 2 --out outputs/real_sample
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SAMPLE = Path(os.environ.get("CADCODER_GENCAD_SAMPLE", REPO.parent / "shared" / "gencad_sample"))

# Goals of the renderer-fidelity part (issue 8).
FIDELITY_GOALS = {"silhouette_iou": (">=", 0.90), "edge_f1": (">=", 0.70), "face_colour_diff": ("<=", 10.0)}


def load_sample(sample_dir: Path | str = DEFAULT_SAMPLE) -> List[Dict[str, Any]]:
    """Read ``programs.jsonl`` of the real sample: records with ``deepcad_id``, ``cadquery``, ``image`` (PIL)."""
    sample_dir = Path(sample_dir)
    index = sample_dir / "programs.jsonl"
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} not found; pass --sample DIR pointing at the gencad_sample folder "
            "(programs.jsonl + images/) or set CADCODER_GENCAD_SAMPLE"
        )
    records = []
    with index.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                rec["image"] = Image.open(sample_dir / rec["image"]).convert("RGB")
                records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------
# Part 1: renderer fidelity
# --------------------------------------------------------------------------------------------------
def renderer_fidelity(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Render every ground-truth program at the dataset framing and compare with the real image."""
    from cadcoder.image_metrics import compare_images
    from cadcoder.render import render_task
    from cadcoder.sandbox import Sandbox

    size = records[0]["image"].width
    codes = [r["cadquery"] for r in records]
    t0 = time.perf_counter()
    with Sandbox(num_workers=args.workers, timeout=args.timeout) as sandbox:
        results = sandbox.map(codes, task=render_task, progress=True, size=size)
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
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


def write_sheet(pairs: Sequence[tuple], path: Path, columns: int = 3, cell: int = 224) -> None:
    """Grid of (real | ours) pairs, each labelled with its id and silhouette IoU / edge F1."""
    from cadcoder.render import side_by_side

    tiles = []
    for deepcad_id, real, ours, row in pairs:
        tile = side_by_side(
            real.resize((cell, cell), Image.BILINEAR),
            ours.resize((cell, cell), Image.BILINEAR),
            labels=(f"real {deepcad_id}", f"ours IoU {row['silhouette_iou']:.3f} F1 {row['edge_f1']:.2f}"),
        )
        tiles.append(tile)
    tw, th = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tw + 12), rows * (th + 12)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (tw + 12), (i // columns) * (th + 12)))
    sheet.save(path)


# --------------------------------------------------------------------------------------------------
PARTS: Dict[str, Callable[[Sequence[Dict[str, Any]], argparse.Namespace], Dict[str, Any]]] = {
    "fidelity": renderer_fidelity,
    # "corpus": corpus_fidelity,        (part 2, to be added)
    # "transfer": synthetic_to_real,    (part 3, to be added)
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts and print their reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default=str(DEFAULT_SAMPLE), help="gencad_sample folder (programs.jsonl + images/)")
    parser.add_argument("--out", default="outputs/real_sample", help="output folder for JSON reports and PNG sheets")
    parser.add_argument("--part", action="append", choices=sorted(PARTS), help="part(s) to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per program in the sandbox")
    args = parser.parse_args(argv)

    records = load_sample(args.sample)
    print(f"real sample: {len(records)} pairs from {args.sample} (GenCAD-Code test split; measurement only)")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, python {platform.python_version()}")
    for name in args.part or list(PARTS):
        PARTS[name](records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
