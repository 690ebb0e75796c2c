"""Where a synthetic program corpus differs from a real one: histogram distances, mean gaps, token lengths.

Works on the statistics of :func:`cadcoder.corpus_stats.corpus_stats`; nothing is executed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from .data import canonicalize_numbers

#: Generator levels of the default synthetic corpus: the even mix the quickstart trains on.
CORPUS_LEVELS = (0, 1, 2, 3)


def histogram_distance(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """Total-variation distance between two histograms (counts or shares, each normalised to sum 1).

    0 means the same distribution, 1 means disjoint supports.

    Raises:
        ValueError: a histogram is empty or sums to zero.
    """
    tp, tq = float(sum(p.values())), float(sum(q.values()))
    if tp <= 0 or tq <= 0:
        raise ValueError("histogram_distance needs two non-empty histograms with positive totals")
    return 0.5 * sum(abs(p.get(k, 0) / tp - q.get(k, 0) / tq) for k in set(p) | set(q))


def corpus_gaps(real: Mapping[str, Any], synthetic: Mapping[str, Any]) -> Dict[str, Any]:
    """Where a synthetic corpus differs from the real one, from two :func:`cadcoder.corpus_stats.corpus_stats` results.

    Returns:
        ``tv_*``: total-variation distances (0 = identical) of the sketches-per-model, loops-per-model,
        plane-normal, loop-kind and boolean-operation histograms; ``*_diff``: synthetic minus real for the
        share of programs using each curve / boolean operation, the on-grid shares and the long-float
        share; ``mean_diff``: synthetic minus real means of characters, tokens, sketches and loops.
    """

    def tv(key: str) -> float | None:
        a, b = real[key], synthetic[key]
        return round(histogram_distance(a, b), 4) if sum(a.values()) > 0 and sum(b.values()) > 0 else None

    def diff(key: str) -> Dict[str, float]:
        return {k: round(synthetic[key].get(k, 0.0) - v, 4) for k, v in real[key].items()}

    return {
        **{f"tv_{key}": tv(key) for key in ("sketches_hist", "loops_hist", "normals", "loop_kinds", "booleans")},
        "op_program_share_diff": diff("op_program_share"),
        "boolean_program_share_diff": diff("boolean_program_share"),
        "grid_share_diff": diff("grid_share"),
        "long_repr_share_diff": round(synthetic["long_repr_share"] - real["long_repr_share"], 4),
        "mean_diff": {k: round(synthetic[k]["mean"] - real[k]["mean"], 3) for k in ("chars", "tokens", "sketches", "loops")},
    }


def token_lengths(programs: Sequence[str], tokenizer: Any, decimals: int, max_length: int) -> Dict[str, Any]:
    """Token counts of programs as written and after :func:`cadcoder.data.canonicalize_numbers` (training form).

    Returns:
        ``raw`` and ``canonical`` summaries (mean, median, p95, max) and ``over_max_length``, the share of
        programs whose canonical form is longer than ``max_length`` tokens (a model trained with that limit
        never saw a program that long).
    """

    def describe(lengths: List[int]) -> Dict[str, float]:
        a = np.asarray(lengths, dtype=float)
        return {"mean": round(float(a.mean()), 1), "median": float(np.median(a)),
                "p95": round(float(np.percentile(a, 95)), 1), "max": float(a.max())}

    raw = [len(tokenizer(c)["input_ids"]) for c in programs]
    canon = [len(tokenizer(canonicalize_numbers(c, decimals=decimals))["input_ids"]) for c in programs]
    return {"raw": describe(raw), "canonical": describe(canon), "canonical_decimals": decimals,
            "max_length": max_length, "over_max_length": round(sum(n > max_length for n in canon) / len(canon), 4)}
