"""Score lists of (prediction, reference) CadQuery programs: VSR, IoU statistics, failure breakdown.

Used by the ``cad_iou`` metric, ``train.py`` and ``cadcoder evaluate``. Every program runs in
:class:`cadcoder.sandbox.Sandbox`; every boolean, tessellation and voxelisation runs there too
(:func:`cadcoder.geometry.score_task`).

How pairs are counted (stated in every report, because papers differ here):

* ``valid_syntax_rate``: share of *all* predictions that execute to a valid solid.
* ``iou_mean`` / ``iou_median``: over pairs whose prediction is valid (what the literature reports).
* ``iou_mean_all``: over all pairs whose reference is valid, failures counted as 0 (the honest number).
* A reference that itself fails is never dropped silently: the pair leaves the IoU statistics and is
  listed in ``reference_failures``.

Long evaluations can be resumed: pass ``cache_path`` and each finished pair is appended to that JSONL
file; a rerun with the same settings skips what is already there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from cadcoder.sandbox import FAILURE_REASONS, Sandbox, SandboxResult

__all__ = [
    "DEFAULT_CONSTANT_PROGRAM",
    "evaluate_programs",
    "constant_program_baseline",
    "normalize_whitespace",
    "format_report",
    "evaluate_cli",
]

DEFAULT_CONSTANT_PROGRAM = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.0, 1.0, 0.25)\n"
_PROTOCOLS = ("aligned", "bbox", "mecagent")
# Part of every cache key: bump it when cadcoder.geometry's scores change, so a resumed run never mixes
# values of two metric versions (2: checked booleans, plane/sphere search, the challenge's normalisation).
_SCORING_VERSION = 2


def normalize_whitespace(code: str) -> str:
    """Drop whitespace that carries no meaning (used to count distinct predictions).

    Runs of whitespace collapse to one space, and spaces next to punctuation disappear, so
    ``box(1,2)`` and ``box( 1, 2 )\n`` count as the same program.
    """
    return re.sub(r" ?([^\w ]) ?", r"\1", " ".join(code.split()))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _stat(values: list[float], fn) -> float | None:
    return float(fn(values)) if values else None


def _derangement(n: int, rng: np.random.Generator) -> list[int]:
    if n < 2:
        return []
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm.tolist()


def evaluate_programs(
    predictions: Sequence[str],
    references: Sequence[str],
    protocol: str = "aligned",
    timeout: float = 10.0,
    num_workers: int | None = None,
    with_chance: bool = False,
    fast: bool = False,
    progress: bool = True,
    seed: int = 0,
    chamfer_points: int = 2048,
    cache_path: str | os.PathLike | None = None,
    sandbox: Sandbox | None = None,
) -> dict[str, Any]:
    """Score predicted CadQuery programs against reference programs.

    Args:
        predictions: predicted programs (untrusted source).
        references: reference programs, same length.
        protocol: ``"aligned"``, ``"bbox"`` or ``"mecagent"`` (see :mod:`cadcoder.geometry`).
        timeout: wall-clock seconds per program (execution plus scoring).
        num_workers: sandbox worker processes (default: CPU count, at most 8).
        with_chance: also score each valid reference against another one (seeded derangement) and
            report ``iou_chance``, the level an IoU must beat.
        fast: mesh-boolean IoU instead of exact OpenCascade booleans (falls back to exact per pair).
        progress: show tqdm progress bars.
        seed: seed of the chance derangement and of Chamfer point sampling.
        chamfer_points: surface points per shape for Chamfer distance (0 disables it).
        cache_path: optional JSONL file; finished pairs are appended and reused by a rerun.
        sandbox: reuse an existing :class:`Sandbox` (its timeout applies) instead of starting one.

    Returns:
        A dict with ``valid_syntax_rate``, ``iou_mean``, ``iou_median``, ``iou_mean_all``,
        ``chamfer_median``, ``failures`` (counts per reason), ``ious`` and ``statuses`` (per sample,
        input order; ``ious[i]`` is None when the prediction failed or the reference did),
        ``chamfers``, ``methods`` (per sample, the path that produced the IoU: ``"exact"``,
        ``"exact-fuzzy"`` (OpenCascade's plain boolean failed a check and a fuzzy one passed),
        ``"mesh-fallback"`` (both failed; the mesh-boolean IoU was used), ``"fast"`` or ``"voxel"``; see
        :mod:`cadcoder.geometry`), ``iou_methods`` (counts of those), ``reference_failures``
        (``{"count", "indices", "reasons"}``),
        ``distinct_predictions``, ``num_samples``, ``protocol``, ``fast`` and, with ``with_chance``,
        ``iou_chance``.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references; pass one reference per prediction")
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {_PROTOCOLS}")
    for name, seq in (("predictions", predictions), ("references", references)):
        bad = [i for i, c in enumerate(seq) if not isinstance(c, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is {type(seq[bad[0]]).__name__}; pass CadQuery source strings")
    n = len(predictions)
    score_kwargs = {"protocol": protocol, "fast": bool(fast), "chamfer_points": int(chamfer_points), "seed": int(seed)}

    cache: dict[str, dict[str, Any]] = {}
    cache_file = Path(cache_path) if cache_path is not None else None
    if cache_file is not None and cache_file.exists():
        with cache_file.open() as fh:
            for line in fh:
                line = line.strip()
                if line:
                    with_key = json.loads(line)
                    cache[with_key["key"]] = with_key

    own_sandbox = sandbox is None
    sb = sandbox if sandbox is not None else Sandbox(num_workers=num_workers, timeout=timeout)
    workers = sb.num_workers
    try:
        pair_keys = [_key("pair", _SCORING_VERSION, p, r, score_kwargs) for p, r in zip(predictions, references, strict=True)]
        chance_perm = _derangement(n, np.random.default_rng(seed)) if with_chance else []
        chance_keys = {i: _key("chance", _SCORING_VERSION, references[i], references[j], score_kwargs) for i, j in enumerate(chance_perm)}
        needed_refs = {references[i] for i in range(n) if pair_keys[i] not in cache}
        needed_refs |= {references[j] for i, j in enumerate(chance_perm) if chance_keys[i] not in cache}
        # Reference validity must be known for every pair, cached or not.
        unique_refs = list(dict.fromkeys(references))
        ref_results = _run_many(sb, workers, [(r, "cadcoder.geometry:reference_task", {}) for r in unique_refs if r in needed_refs], progress, "references")
        ref_by_code: dict[str, SandboxResult] = dict(zip([r for r in unique_refs if r in needed_refs], ref_results, strict=True))

        jobs: list[tuple[str, Any, dict[str, Any]]] = []
        job_slots: list[tuple[str, int]] = []
        records: dict[int, dict[str, Any]] = {}
        chance_records: dict[int, dict[str, Any]] = {}
        for i in range(n):
            if pair_keys[i] in cache:
                records[i] = cache[pair_keys[i]]
                continue
            ref = ref_by_code[references[i]]
            if ref.ok:
                jobs.append((predictions[i], "cadcoder.geometry:score_task", {"reference_brep": ref.value, **score_kwargs}))
            else:
                jobs.append((predictions[i], "cadcoder.sandbox:describe_shape", {}))
            job_slots.append(("pair", i))
        for i, j in enumerate(chance_perm):
            if chance_keys[i] in cache:
                chance_records[i] = cache[chance_keys[i]]
                continue
            ref_i, ref_j = ref_by_code[references[i]], ref_by_code[references[j]]
            if ref_i.ok and ref_j.ok:
                jobs.append((references[i], "cadcoder.geometry:score_task", {"reference_brep": ref_j.value, **score_kwargs}))
                job_slots.append(("chance", i))

        def on_done(slot: int, res: SandboxResult) -> None:
            kind, i = job_slots[slot]
            if kind == "pair":
                ref = ref_by_code[references[i]]
                rec = {
                    "key": pair_keys[i],
                    "status": res.status,
                    "error": res.error,
                    "reference_status": ref.status,
                    "reference_error": ref.error,
                    "iou": res.value["iou"] if res.ok and ref.ok else None,
                    "chamfer": res.value["chamfer"] if res.ok and ref.ok else None,
                    "method": res.value.get("method") if res.ok and ref.ok else None,
                }
                records[i] = rec
            else:
                rec = {"key": chance_keys[i], "status": res.status, "iou": res.value["iou"] if res.ok else None}
                chance_records[i] = rec
            if cache_file is not None:
                with cache_file.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")

        _run_many(sb, workers, jobs, progress, "pairs", on_done=on_done)
    finally:
        if own_sandbox:
            sb.close()

    statuses = [records[i]["status"] for i in range(n)]
    ref_failed = [i for i in range(n) if records[i]["reference_status"] != "ok"]
    ref_failed_set = set(ref_failed)
    ious = [records[i]["iou"] for i in range(n)]
    chamfers = [records[i]["chamfer"] for i in range(n)]
    methods = [records[i].get("method") for i in range(n)]
    scored = [i for i in range(n) if i not in ref_failed_set]
    valid_ious = [ious[i] for i in scored if statuses[i] == "ok" and ious[i] is not None]
    all_ious = [ious[i] if statuses[i] == "ok" and ious[i] is not None else 0.0 for i in scored]
    valid_chamfers = [c for i, c in enumerate(chamfers) if c is not None and i not in ref_failed_set]
    failures = Counter(s for s in statuses if s != "ok")
    report: dict[str, Any] = {
        "protocol": protocol,
        "fast": bool(fast),
        "num_samples": n,
        "valid_syntax_rate": (statuses.count("ok") / n) if n else None,
        "iou_mean": _stat(valid_ious, statistics.fmean),
        "iou_median": _stat(valid_ious, statistics.median),
        "iou_mean_all": _stat(all_ious, statistics.fmean),
        "chamfer_median": _stat(valid_chamfers, statistics.median),
        "failures": {reason: failures.get(reason, 0) for reason in FAILURE_REASONS},
        "ious": ious,
        "chamfers": chamfers,
        "methods": methods,
        "iou_methods": dict(Counter(m for i, m in enumerate(methods) if m is not None and i not in ref_failed_set)),
        "statuses": statuses,
        "errors": [records[i].get("error", "") for i in range(n)],
        "reference_failures": {
            "count": len(ref_failed),
            "indices": ref_failed,
            "reasons": dict(Counter(records[i]["reference_status"] for i in ref_failed)),
        },
        "distinct_predictions": (len({normalize_whitespace(p) for p in predictions}) / n) if n else None,
    }
    if with_chance:
        chance = [chance_records[i]["iou"] for i in chance_records if chance_records[i]["iou"] is not None]
        report["iou_chance"] = _stat(chance, statistics.fmean)
        report["iou_chance_pairs"] = len(chance)
    return report


def _run_many(sb: Sandbox, workers: int, jobs: list[tuple[str, Any, dict[str, Any]]], progress: bool, desc: str, on_done=None) -> list[SandboxResult]:
    """Run jobs over the sandbox with ``workers`` threads, a tqdm bar, and a per-job callback (in the caller thread)."""
    results: list[SandboxResult | None] = [None] * len(jobs)
    if not jobs:
        return []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="prog")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(sb.run, code, task, **kwargs): k for k, (code, task, kwargs) in enumerate(jobs)}
        for fut in as_completed(futures):
            k = futures[fut]
            results[k] = fut.result()
            if on_done is not None:
                on_done(k, results[k])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def constant_program_baseline(references: Sequence[str], program: str = DEFAULT_CONSTANT_PROGRAM, **kwargs: Any) -> dict[str, Any]:
    """Score one constant program against every reference: the floor a model must beat.

    Every report should show it next to ``iou_chance``. ``kwargs`` go to :func:`evaluate_programs`.
    """
    return evaluate_programs([program] * len(references), references, **kwargs)


def format_report(report: dict[str, Any]) -> str:
    """A short plain-text summary table of a report from :func:`evaluate_programs`."""

    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.4f}" if isinstance(v, float) else str(v))

    rows = [
        ("protocol", report["protocol"] + (" (fast IoU)" if report.get("fast") else " (exact IoU)")),
        ("samples", report["num_samples"]),
        ("valid_syntax_rate", report["valid_syntax_rate"]),
        ("iou_mean (valid preds)", report["iou_mean"]),
        ("iou_median (valid preds)", report["iou_median"]),
        ("iou_mean_all (failures = 0)", report["iou_mean_all"]),
        ("chamfer_median", report["chamfer_median"]),
        ("distinct_predictions", report["distinct_predictions"]),
    ]
    if "iou_chance" in report:
        rows.append(("iou_chance", report["iou_chance"]))
    if report.get("iou_methods"):
        rows.append(("IoU paths", ", ".join(f"{k}={v}" for k, v in sorted(report["iou_methods"].items()))))
    rows.append(("reference failures", report["reference_failures"]["count"]))
    failures = ", ".join(f"{k}={v}" for k, v in report["failures"].items() if v) or "none"
    rows.append(("prediction failures", failures))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {f(value)}" for name, value in rows)


def evaluate_cli(args: argparse.Namespace) -> int:
    """Handler of ``cadcoder evaluate``: score a JSONL of {prediction, reference}, print a table, write JSON.

    Also honours ``args.cache`` (resume file) when present; by default ``PREDS.cache.jsonl`` is used so an
    interrupted run resumes.
    """
    path = Path(args.predictions)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a JSONL file with 'prediction' and 'reference' fields")
    predictions, references = [], []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("prediction", "reference") if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno} lacks {missing}; each line needs 'prediction' and 'reference' (CadQuery source)")
            predictions.append(row["prediction"])
            references.append(row["reference"])
    out = Path(args.out) if getattr(args, "out", None) else path.with_suffix(".report.json")
    cache = getattr(args, "cache", None) or str(path.with_suffix(".cache.jsonl"))
    report = evaluate_programs(
        predictions,
        references,
        protocol=args.protocol,
        timeout=args.timeout,
        num_workers=args.num_workers,
        with_chance=args.with_chance,
        fast=args.fast,
        cache_path=cache,
        progress=sys.stderr.isatty(),
    )
    print(format_report(report))
    out.write_text(json.dumps(report, indent=2))
    print(f"report written to {out}")
    return 0
