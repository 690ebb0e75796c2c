"""Render time per image of cadcoder.render (NumPy software rasteriser), printed as a table.

Two measurements:

1. **Renderer alone**, on trusted parts built here with cadquery (a box, a plate with holes, a tube, a
   union of cylinders and a many-faced bracket), at several image sizes. Each render starts from a
   fresh copy of the shape, so OCC's tessellation is included as it is in the sandbox, where every
   shape is rendered once. Reported: median and max wall-clock milliseconds and median CPU
   milliseconds of the process over ``--repeats`` runs.
2. **Through the sandbox** (``--sample``; the 34 real GenCAD-Code programs when present): programs per
   second of ``Sandbox.map(task=render_task)`` against ``Sandbox.map(task=describe_shape)`` with the
   same workers, so the difference is the cost of rendering inside the worker.

Usage::

    python benchmarks/render_speed.py                     # sizes 128 224 448, 5 repeats, sandbox part
    python benchmarks/render_speed.py --sizes 448 --repeats 20 --no-sandbox
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from cadcoder.provenance import machine_summary
from cadcoder.real_sample import DEFAULT_SAMPLE, load_sample


def _parts() -> Dict[str, Callable[[], object]]:
    """Builders of trusted benchmark parts (fresh OCC shapes each call, so nothing is pre-tessellated)."""
    import cadquery as cq

    def plate():
        return cq.Workplane("XY").box(1.2, 0.8, 0.1).faces(">Z").workplane().rarray(0.3, 0.3, 3, 2).hole(0.1).val()

    def tube():
        return cq.Workplane("XY").circle(0.4).circle(0.2).extrude(0.8).val()

    def cylinders():
        a = cq.Workplane("XZ").circle(0.2).extrude(0.75, both=True)
        b = cq.Workplane("XY").circle(0.35).extrude(0.3)
        return a.union(b).val()

    def bracket():
        w = cq.Workplane("XY").box(1.0, 0.6, 0.1)
        w = w.union(cq.Workplane("XZ").workplane(offset=0.3).center(0, 0.25).box(1.0, 0.5, 0.08))
        w = w.faces(">Z").workplane().rarray(0.2, 0.2, 4, 2).hole(0.06)
        return w.edges("|Z").fillet(0.02).val()

    return {"box": lambda: cq.Workplane("XY").box(1.0, 0.7, 0.4).val(), "plate": plate, "tube": tube,
            "cylinders": cylinders, "bracket": bracket}


def bench_renderer(sizes: Sequence[int], repeats: int) -> List[dict]:
    """Time render_shape on each part and size; returns rows with median/max milliseconds."""
    from cadcoder.render import render_shape

    rows = []
    builders = _parts()
    render_shape(builders["box"](), size=64)  # warm-up (imports, first allocation)
    for name, build in builders.items():
        for size in sizes:
            times, cpu = [], []
            for _ in range(repeats):
                shape = build()
                t0, c0 = time.perf_counter(), time.process_time()
                render_shape(shape, size=size)
                cpu.append(time.process_time() - c0)
                times.append(time.perf_counter() - t0)
            rows.append({"part": name, "size": size, "median_ms": 1e3 * float(np.median(times)),
                         "max_ms": 1e3 * float(np.max(times)), "cpu_ms": 1e3 * float(np.median(cpu))})
    return rows


def bench_sandbox(sample_dir: Path, workers: int, size: int) -> dict:
    """Programs/s of rendering the real sample's programs in the sandbox vs. only executing them."""
    from cadcoder import tasks
    from cadcoder.sandbox import Sandbox

    codes = [r["cadquery"] for r in load_sample(sample_dir, with_images=False)]
    out = {"programs": len(codes), "workers": workers, "size": size}
    with Sandbox(num_workers=workers, timeout=60.0) as sandbox:
        sandbox.map(codes[:workers])  # start the workers (cadquery import) outside the timing
        for label, task, kw in (("execute_only", tasks.DESCRIBE_SHAPE, {}),
                                ("execute_and_render", tasks.RENDER, {"size": size})):
            t0 = time.perf_counter()
            results = sandbox.map(codes, task=task, **kw)
            wall = time.perf_counter() - t0
            out[label] = {"wall_s": round(wall, 2), "programs_per_s": round(len(codes) / wall, 2),
                          "ok": sum(r.ok for r in results)}
    extra = (out["execute_and_render"]["wall_s"] - out["execute_only"]["wall_s"]) * workers / len(codes)
    out["render_ms_per_image_estimate"] = round(1e3 * extra, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 448])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", default=str(DEFAULT_SAMPLE), help="gencad_sample folder for the sandbox part")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-sandbox", action="store_true", help="skip the sandbox part")
    args = parser.parse_args(argv)

    print(machine_summary())
    print(f"numpy {np.__version__}; backend: cadcoder NumPy rasteriser (CPU, single thread)")
    print(f"\n== renderer alone (fresh shape per run, tessellation included; {args.repeats} repeats) ==")
    print("(wall-clock ms, and the process's CPU ms, which is what a busy shared machine cannot inflate)")
    print(f"{'part':>10} {'size':>5} {'median_ms':>10} {'max_ms':>8} {'cpu_ms':>7}")
    for row in bench_renderer(args.sizes, args.repeats):
        print(f"{row['part']:>10} {row['size']:>5} {row['median_ms']:10.1f} {row['max_ms']:8.1f} {row['cpu_ms']:7.1f}")

    sample = Path(args.sample)
    if not args.no_sandbox:
        if not (sample / "programs.jsonl").is_file():
            print(f"\n(sandbox part skipped: {sample}/programs.jsonl not found; pass --sample DIR)")
        else:
            res = bench_sandbox(sample, args.workers, max(args.sizes))
            print(f"\n== through the sandbox: {res['programs']} real GenCAD-Code programs, {res['workers']} workers, "
                  f"{res['size']} px ==")
            for label in ("execute_only", "execute_and_render"):
                r = res[label]
                print(f"{label:>20}: {r['programs_per_s']:6.2f} programs/s  ({r['wall_s']} s wall, {r['ok']} ok)")
            print(f"{'render cost':>20}: ~{res['render_ms_per_image_estimate']} ms per image per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
