"""Score lists of (prediction, reference) CadQuery programs: VSR, IoU statistics, failure breakdown.

Used by the ``cad_iou`` metric, ``train.py`` (:func:`execution_metrics`, :func:`best_constant_program`) and
``cadcoder evaluate``. Every program runs in
:class:`cadcoder.sandbox.Sandbox` and hands over its solid as BREP; every boolean, tessellation and
voxelisation runs in another sandbox child where no generated code ran (:mod:`cadcoder.clean_scoring`), so a
prediction that monkeypatches CadQuery, OpenCascade or numpy gets the honest score of the solid it built.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cadcoder.clean_scoring import run_to_brep, score_breps
from cadcoder.sandbox import FAILURE_REASONS, Sandbox, SandboxResult, borrow_or_open

__all__ = [
    "DEFAULT_CONSTANT_PROGRAM",
    "evaluate_programs",
    "constant_program_baseline",
    "best_constant_program",
    "distinct_share",
    "execution_metrics",
    "EXECUTION_KEYS",
    "normalize_whitespace",
    "format_report",
    "evaluate_cli",
]

DEFAULT_CONSTANT_PROGRAM = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.0, 1.0, 0.25)\n"
_PROTOCOLS = ("aligned", "bbox", "mecagent")
# Part of every cache key: bump it when cadcoder.geometry's scores change, so a resumed run never mixes
# values of two metric versions (2: checked booleans, plane/sphere search, the challenge's normalisation;
# 3: Chamfer points from trimesh's sampler, wider refinement of the rotation search; 4: scored from BREP in a
# clean child, separate timeouts for running and scoring).
_SCORING_VERSION = 4


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


def distinct_share(programs: Sequence[str]) -> float:
    """Share of distinct programs, compared after :func:`normalize_whitespace` (1.0: all differ; 0.0 if empty).

    THE rule for "distinct program": the ``distinct_predictions`` key of :func:`evaluate_programs`,
    ``execution_metrics`` and every benchmark count with it.
    """
    if not programs:
        return 0.0
    return len({normalize_whitespace(p) for p in programs}) / len(programs)


def _check_inputs(predictions: list[str], references: list[str], protocol: str) -> None:
    """Raise on mismatched lengths, an unknown protocol or a program that is not a string."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references; pass one reference per prediction")
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {_PROTOCOLS}")
    for name, seq in (("predictions", predictions), ("references", references)):
        bad = [i for i, c in enumerate(seq) if not isinstance(c, str)]
        if bad:
            raise TypeError(f"{name}[{bad[0]}] is {type(seq[bad[0]]).__name__}; pass CadQuery source strings")


def _load_cache(cache_file: Path | None) -> dict[str, dict[str, Any]]:
    """Records of a resume file by key (empty when there is no file)."""
    cache: dict[str, dict[str, Any]] = {}
    if cache_file is not None and cache_file.exists():
        with cache_file.open() as fh:
            for line in fh:
                line = line.strip()
                if line:
                    record = json.loads(line)
                    cache[record["key"]] = record
    return cache


@dataclass
class _Plan:
    """What one evaluation scores: cache keys per pair and chance pair, and the chance derangement."""

    predictions: list[str]
    references: list[str]
    score_kwargs: dict[str, Any]
    pair_keys: list[str]
    chance_perm: list[int]
    chance_keys: dict[int, str]


def _plan(predictions: list[str], references: list[str], score_kwargs: dict[str, Any], with_chance: bool, seed: int) -> _Plan:
    """Cache keys of every pair and the seeded chance derangement."""
    n = len(predictions)
    pair_keys = [_key("pair", _SCORING_VERSION, p, r, score_kwargs) for p, r in zip(predictions, references, strict=True)]
    chance_perm = _derangement(n, np.random.default_rng(seed)) if with_chance else []
    chance_keys = {i: _key("chance", _SCORING_VERSION, references[i], references[j], score_kwargs) for i, j in enumerate(chance_perm)}
    return _Plan(predictions, references, score_kwargs, pair_keys, chance_perm, chance_keys)


def _programs_to_run(plan: _Plan, cache: dict[str, Any]) -> list[str]:
    """Every program (reference or prediction) that some pair or chance pair not in the cache needs."""
    refs = plan.references
    needed = [p for i, key in enumerate(plan.pair_keys) if key not in cache for p in (refs[i], plan.predictions[i])]
    needed += [refs[k] for i, j in enumerate(plan.chance_perm) if plan.chance_keys[i] not in cache for k in (i, j)]
    return needed


_Records = dict[int, dict[str, Any]]


@dataclass
class _Work:
    """What is left after step 1: the clean scoring requests, their (kind, index) slots, and known records."""

    requests: list[dict[str, Any]]
    slots: list[tuple[str, int]]
    records: _Records
    chance_records: _Records
    settled: list[dict[str, Any]]  # records decided without scoring, still to append to the cache file


def _pair_work(plan: _Plan, cache: dict[str, Any], solids: dict[str, SandboxResult]) -> _Work:
    """Records the cache holds, records step 1 decided (a failed prediction or reference), and what to score."""
    refs = plan.references
    work = _Work([], [], {}, {}, [])
    for i, key in enumerate(plan.pair_keys):
        if key in cache:
            work.records[i] = cache[key]
            continue
        pred, ref = solids[plan.predictions[i]], solids[refs[i]]
        if pred.ok and ref.ok:
            work.requests.append({"candidate_brep": pred.value, "reference_brep": ref.value, **plan.score_kwargs})
            work.slots.append(("pair", i))
        else:  # a failed reference still reports the prediction's own status
            work.records[i] = _pair_record(key, pred, ref)
            work.settled.append(work.records[i])
    for i, j in enumerate(plan.chance_perm):
        if plan.chance_keys[i] in cache:
            work.chance_records[i] = cache[plan.chance_keys[i]]
            continue
        ref_i, ref_j = solids[refs[i]], solids[refs[j]]
        if ref_i.ok and ref_j.ok:  # the chance level is an IoU only: no Chamfer points
            kwargs = {**plan.score_kwargs, "chamfer_points": 0}
            work.requests.append({"candidate_brep": ref_i.value, "reference_brep": ref_j.value, **kwargs})
            work.slots.append(("chance", i))
    return work


def _pair_record(key: str, res: SandboxResult, ref: SandboxResult) -> dict[str, Any]:
    """The cached record of one (prediction, reference) pair; ``res`` is its scoring or its failure."""
    scored = res.ok and ref.ok
    return {
        "key": key,
        "status": res.status,
        "error": res.error,
        "reference_status": ref.status,
        "reference_error": ref.error,
        "iou": res.value["iou"] if scored else None,
        "chamfer": res.value["chamfer"] if scored else None,
        "method": res.value.get("method") if scored else None,
    }


def _run_pairs(
    sb: Sandbox, plan: _Plan, cache: dict[str, Any], cache_file: Path | None, progress: bool
) -> tuple[_Records, _Records]:
    """Score every pair (and chance pair) not in the cache, appending each finished record to `cache_file`.

    Step 1 runs each needed program once to BREP; step 2 scores each BREP in a clean child
    (:mod:`cadcoder.clean_scoring`), so a prediction cannot touch its own score.
    """
    solids = run_to_brep(sb, _programs_to_run(plan, cache), progress="programs" if progress else False)
    work = _pair_work(plan, cache, solids)

    def append(rec: dict[str, Any]) -> None:
        if cache_file is not None:
            with cache_file.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")

    for rec in work.settled:
        append(rec)

    def on_result(index: int, res: SandboxResult) -> None:
        kind, i = work.slots[index]
        if kind == "pair":
            rec = work.records[i] = _pair_record(plan.pair_keys[i], res, solids[plan.references[i]])
        else:
            rec = work.chance_records[i] = {"key": plan.chance_keys[i], "status": res.status,
                                            "iou": res.value["iou"] if res.ok else None}
        append(rec)

    score_breps(sb, work.requests, progress="pairs" if progress else False, on_result=on_result)
    return work.records, work.chance_records


def _summarise(predictions: list[str], records: dict[int, dict[str, Any]], protocol: str, fast: bool) -> dict[str, Any]:
    """The report's statistics from the per-pair records (input order)."""
    n = len(predictions)
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
    return {
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
        "distinct_predictions": distinct_share(predictions) if n else None,
    }


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
        timeout: wall-clock seconds per sandbox job: a program's run to its solid, and, separately, the
            scoring of that solid.
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
    _check_inputs(predictions, references, protocol)
    score_kwargs = {"protocol": protocol, "fast": bool(fast), "chamfer_points": int(chamfer_points), "seed": int(seed)}
    cache_file = Path(cache_path) if cache_path is not None else None
    cache = _load_cache(cache_file)
    plan = _plan(predictions, references, score_kwargs, with_chance, seed)
    with borrow_or_open(sandbox, num_workers=num_workers, timeout=timeout) as sb:
        records, chance_records = _run_pairs(sb, plan, cache, cache_file, progress)
    report = _summarise(predictions, records, protocol, fast)
    if with_chance:
        chance = [chance_records[i]["iou"] for i in chance_records if chance_records[i]["iou"] is not None]
        report["iou_chance"] = _stat(chance, statistics.fmean)
        report["iou_chance_pairs"] = len(chance)
    return report


def constant_program_baseline(references: Sequence[str], program: str = DEFAULT_CONSTANT_PROGRAM, **kwargs: Any) -> dict[str, Any]:
    """Score one constant program against every reference: the floor a model must beat.

    Every report should show it next to ``iou_chance``. ``kwargs`` go to :func:`evaluate_programs`.
    """
    return evaluate_programs([program] * len(references), references, **kwargs)


EXECUTION_KEYS = ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all", "distinct_predictions")
"""The headline scalar keys of :func:`execution_metrics` (logged as ``eval_<key>`` during training)."""


def execution_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    with_chance: bool = False,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Score programs by execution with :func:`evaluate_programs`; a flat dict of floats.

    Keeps the scalar keys (VSR, IoU statistics, distinct share, chance level) and the non-zero failure
    counts as ``failures_<reason>``.
    """
    report = evaluate_programs(list(predictions), list(references), with_chance=with_chance, **evaluate_kwargs)
    metrics: dict[str, Any] = {}
    for key in (*EXECUTION_KEYS, "chamfer_median", "iou_chance"):
        value = report.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value) if value is not None and not math.isnan(float(value)) else None
    if "distinct_predictions" not in metrics:
        metrics["distinct_predictions"] = distinct_share(predictions)
    for reason, count in (report.get("failures") or {}).items():
        if count:
            metrics[f"failures_{reason}"] = int(count)
    return metrics


def best_constant_program(
    candidates: Sequence[str],
    select_references: Sequence[str],
    test_references: Sequence[str],
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """The best single program, chosen on `select_references` and scored on `test_references`.

    A model that ignores its input can at best write one fixed program; choosing that program on held-out
    validation references (not the test set) and predicting it for every test image gives the score a
    collapsed model would reach. All pairs are scored in one :func:`evaluate_programs` call (one sandbox start).
    Returns {"program", "iou_mean_all", "valid_syntax_rate", "select_iou_mean_all"}.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("best_constant_program needs at least one candidate program")
    sel, tst = list(select_references), list(test_references)
    block = len(sel) + len(tst)
    preds = [c for c in candidates for _ in range(block)]
    refs = (sel + tst) * len(candidates)
    report = evaluate_programs(preds, refs, **evaluate_kwargs)
    ious = np.nan_to_num(np.asarray([np.nan if v is None else v for v in report["ious"]], dtype=np.float64))
    ok = np.asarray([s == "ok" for s in report["statuses"]], dtype=np.float64)
    ious = ious.reshape(len(candidates), block)
    ok = ok.reshape(len(candidates), block)
    best = int(np.argmax(ious[:, : len(sel)].mean(axis=1))) if sel else 0
    return {
        "program": candidates[best],
        "select_iou_mean_all": float(ious[best, : len(sel)].mean()) if sel else None,
        "iou_mean_all": float(ious[best, len(sel) :].mean()),
        "valid_syntax_rate": float(ok[best, len(sel) :].mean()),
    }


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
