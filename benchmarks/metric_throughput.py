"""Throughput of the cad_iou metric against a naive in-process baseline, and fast-path error vs exact.

Pairs: the GenCAD-Code sample programs (shared/gencad_sample/programs.jsonl), program i scored against
program i+1 (different parts, so IoUs span the range) plus each program against itself.

Measured:
* ``compute`` through ``evaluate.load("./metrics/cad_iou")``: cold (a fresh sandbox per call, workers
  start and import cadquery) for exact and fast IoU;
* ``evaluate_programs`` with an already started sandbox (warm), exact and fast;
* NAIVE BASELINE, in-process and UNSAFE (``common.naive_metric``, in a child process of its own): ``exec``
  each program in that process and compute the surface-voxel IoU at pitch 0.05 (the challenge's metric,
  ``cadcoder.geometry.mecagent_iou``), one pair after another, as the challenge script does;
* mean / max absolute error of the fast IoU against the exact IoU over the same pairs.

Usage: python benchmarks/metric_throughput.py [--pairs N] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common  # benchmarks/common.py, beside this script

from cadcoder.provenance import machine_summary
from cadcoder.real_sample import load_sample

REPO = common.REPO


def load_pairs(limit: int) -> tuple[list[str], list[str]]:
    progs = [r["cadquery"] for r in load_sample(with_images=False)]
    preds = progs + progs
    refs = progs[1:] + progs[:1] + progs
    return preds[:limit], refs[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=68)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import evaluate

    from cadcoder.evaluation import evaluate_programs
    from cadcoder.sandbox import Sandbox

    preds, refs = load_pairs(args.pairs)
    n = len(preds)
    print(machine_summary())
    print(f"pairs: {n} (GenCAD sample, i vs i+1 and i vs i); workers={args.workers}; timeout={args.timeout}s; protocol=aligned; chamfer 2048 pts")
    metric = evaluate.load(str(REPO / "metrics" / "cad_iou"))
    rows = []
    results = {}
    for fast in (False, True):
        t0 = time.perf_counter()
        out = metric.compute(predictions=preds, references=refs, protocol="aligned", timeout=args.timeout, num_workers=args.workers, fast=fast)
        rows.append((f"compute cold, {'fast' if fast else 'exact'} IoU", time.perf_counter() - t0, out["failures"]))
    with Sandbox(num_workers=args.workers, timeout=args.timeout) as sb:
        sb.map(["solid = cq.Workplane().box(1, 1, 1)"] * args.workers)  # start the workers
        for fast in (False, True):
            t0 = time.perf_counter()
            out = evaluate_programs(preds, refs, protocol="aligned", fast=fast, sandbox=sb, progress=False)
            rows.append((f"evaluate_programs warm, {'fast' if fast else 'exact'} IoU", time.perf_counter() - t0, out["failures"]))
            results[fast] = out
        t0 = time.perf_counter()
        mec = evaluate_programs(preds, refs, protocol="mecagent", sandbox=sb, progress=False, chamfer_points=0)
        rows.append(("evaluate_programs warm, mecagent protocol (sandboxed)", time.perf_counter() - t0, mec["failures"]))
    naive = common.naive_metric_isolated(preds, refs)
    naive_s, naive_ious = naive["seconds"], naive["ious"]
    rows.append(("NAIVE in-process exec + surface voxels (unsafe)", naive_s, naive["failures"]))
    naive_rate = n / naive_s
    print(f"\n{'setting':<58} {'seconds':>8} {'pairs/s':>8} {'x naive':>8}  failures")
    for name, secs, fails in rows:
        fails = {k: v for k, v in fails.items() if v}
        print(f"{name:<58} {secs:8.2f} {n / secs:8.2f} {n / secs / naive_rate:8.2f}  {fails or '-'}")
    exact, fast = results[False]["ious"], results[True]["ious"]
    errs = [abs(a - b) for a, b in zip(exact, fast, strict=True) if a is not None and b is not None]
    print(f"\nfast vs exact IoU over {len(errs)} pairs: MAE {statistics.fmean(errs):.5f}, max {max(errs):.5f}")
    sandboxed_mec = mec["ious"]
    agree = [abs(a - b) for a, b in zip(sandboxed_mec, naive_ious, strict=True) if a is not None and b is not None]
    print(f"sandboxed mecagent protocol vs naive baseline IoU: max abs diff {max(agree):.2e} over {len(agree)} pairs")
    print(f"aligned exact iou_mean over these pairs: {results[False]['iou_mean']:.4f}; mecagent: {mec['iou_mean']:.4f}")


if __name__ == "__main__":
    main()
