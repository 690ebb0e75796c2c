"""Latency of one demo request: what a click on *Generate CAD* costs, split into its stages.

Each request goes through :meth:`cadcoder.demo.service.DemoService.run`, the call the page makes: read and
check the upload, generate the candidates, run each in the warm sandbox (and for ``render_compare`` render
and score it), export the winner (STEP, mesh, preview), and write ``part.py``, ``part.step``, ``part.stl``
and the 3D view's GLB. Gradio's own HTTP and browser time are not included. The first request starts the
sandbox workers and is not timed.

Inputs: the first ``--images`` real GenCAD-Code test images of ``--sample`` (test inputs only, as everywhere).
Stages come from ``generate_cad``'s progress reports: generation ends at the first ``running`` report,
running at the ``exporting`` report; the rest (export and files) runs until the call returns.

Usage:
    python benchmarks/demo_latency.py                                   # quickstart model, render_compare@8
    python benchmarks/demo_latency.py --strategy greedy --images 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py, beside this script

from cadcoder.provenance import git_commit, machine_info, machine_summary, short_commit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(common.REPO / "outputs" / "quickstart"), help="model folder or Hub id")
    common.add_sample_argument(p)
    p.add_argument("--images", type=int, default=5, help="requests to time, one per real image")
    p.add_argument("--strategy", default="render_compare", choices=["greedy", "first_valid", "render_compare"])
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="sandbox workers (default: the demo's, CPU count up to 4)")
    p.add_argument("--out", default=str(common.REPO / "outputs" / "benchmarks"))
    return p.parse_args(argv)


def timed_request(service: Any, image: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One request with its stage times (seconds)."""
    marks: dict[str, float] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, time.perf_counter())

    t0 = time.perf_counter()
    result = service.run(image, args.strategy, args.num_candidates, args.seed, on_progress=on_progress)
    t1 = time.perf_counter()
    run_start = marks.get("running", t1)
    export_start = marks.get("exporting", t1)
    return {"image": image.name, "ok": result.ok, "seconds": t1 - t0, "generation": run_start - t0,
            "running": export_start - run_start, "export_and_files": t1 - export_start,
            "valid_candidates": sum(row[2] == "ok" for row in result.candidates)}  # fmt: skip


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, summary: str) -> str:
    """The per-request table and the median line."""
    lines = [f"Demo request latency, `{args.strategy}@{args.num_candidates}`, model `{args.model}` ({summary}).", "",
             "| image | valid | total s | generation s | running s | export + files s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['image']} | {r['valid_candidates']}/{args.num_candidates if args.strategy != 'greedy' else 1} "
                     f"| {r['seconds']:.2f} | {r['generation']:.2f} | {r['running']:.2f} | {r['export_and_files']:.2f} |")  # fmt: skip
    med = {k: statistics.median(r[k] for r in rows) for k in ("seconds", "generation", "running", "export_and_files")}
    lines += ["", f"median: {med['seconds']:.2f} s per request (generation {med['generation']:.2f}, running "
                  f"{med['running']:.2f}, export + files {med['export_and_files']:.2f}); "
                  f"min {min(r['seconds'] for r in rows):.2f}, max {max(r['seconds'] for r in rows):.2f}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time the requests, print the table, write ``<out>/demo_latency.json`` and ``.md``."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cadcoder.demo.service import DemoService

    images = sorted((Path(args.sample) / "images").glob("*.png"))[: args.images + 1]
    if len(images) < 2:
        raise SystemExit(f"need at least 2 images in {args.sample}/images (one warms the sandbox up)")
    service = DemoService(args.model, num_workers=args.workers)
    if not service.ready:
        raise SystemExit(f"could not load the model: {service.model_error}\nTrain it first: python train.py configs/quickstart.json")
    summary = f"{machine_summary()}; commit {short_commit()}"
    print(summary, flush=True)
    try:
        warm = service.run(images[0], "greedy", 1, args.seed)  # starts the sandbox workers; not timed
        print(f"warm-up ({images[0].name}): {warm.seconds:.2f} s, untimed", flush=True)
        rows = [timed_request(service, image, args) for image in images[1:]]
    finally:
        service.close()
    table = markdown(rows, args, summary)
    print(table)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    report = {"machine": machine_info(), "commit": short_commit(), "git": git_commit(), "settings": settings,
              "requests": rows, "median_seconds": statistics.median(r["seconds"] for r in rows)}  # fmt: skip
    common.write_report(args.out, "demo_latency", report, table)
    return report


if __name__ == "__main__":
    main()
