"""Diversity and fidelity statistics of a list of GenCAD-Code style CadQuery programs.

Used to compare the synthetic corpus with GenCAD-Code (``benchmarks/synth_speed.py``,
``benchmarks/corpus_fidelity.py``). Everything here is text analysis: no program is executed.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from cadcoder.schema import approx_token_count

#: The published GenCAD-Code figures (from the full 147K set), for side-by-side reports.
GENCAD_FIGURES: dict[str, Any] = {
    "sketches_per_model": "1-8, median 1",
    "loops_per_model": "1-10, median 2",
    "normals": "mostly (0,0,1) and (0,-1,0), some (1,0,0)",
    "chars_mean": 900,
    "tokens_mean": 600,
    "value_range": (-1.0, 1.5),
    "grids": "origins/extrudes k/128; sketch coords k*scale/95",
}

_NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_FLOAT = re.compile(_NUM)
_PLANE = re.compile(
    rf"cq\.Plane\(cq\.Vector\(({_NUM}), ({_NUM}), ({_NUM})\), cq\.Vector\(({_NUM}), ({_NUM}), ({_NUM})\), "
    rf"cq\.Vector\(({_NUM}), ({_NUM}), ({_NUM})\)\)"
)
_EXTRUDE = re.compile(rf"\.extrude\(({_NUM})(, both=True)?\)")
_LOOP = re.compile(r"^(loop\d+)=(wp_sketch\d+)\.(.*)$", re.M)
_OPS = ("lineTo", "threePointArc", "circle", "moveTo", "close")
_ARC_MID = re.compile(rf"threePointArc\(\(({_NUM}), ({_NUM})\), ")


def _describe(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan"), "p95": float("nan")}
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()),
            "max": float(a.max()), "p95": float(np.percentile(a, 95))}


def _on_128(x: float) -> bool:
    return (x * 128).is_integer()


def _sketch_on_grid(vals: list[str]) -> bool:
    """True if some scale j/128 makes every value print exactly as ``scale / 95 * k`` (the GenCAD rule)."""
    nonzero = [v for v in vals if float(v) != 0.0]
    if not nonzero:
        return True
    for j in range(1, 257):
        s = j / 128
        if all(repr(s / 95 * round(float(v) * 95 / s)) == v for v in nonzero):
            # reject the trivial fit of a tiny scale: k must stay in the dataset's range
            if max(abs(round(float(v) * 95 / s)) for v in nonzero) <= 200:
                return True
    return False


def _normal_name(nx: str, ny: str, nz: str) -> str:
    return "(" + ",".join(str(int(round(float(v)))) if abs(float(v)) > 1e-6 else "0" for v in (nx, ny, nz)) + ")"


def program_stats(code: str) -> dict[str, Any]:
    """Per-program counts: sketches, extrudes, loops, curve ops, boolean ops, normals, number facts."""
    planes = _PLANE.findall(code)
    loops = _LOOP.findall(code)
    loop_names = {name for name, _, _ in loops}
    sketch_ids = {int(m) for m in re.findall(r"^wp_sketch(\d+) = ", code, re.M)}
    extrudes = _EXTRUDE.findall(code)
    ops = {op: len(re.findall(rf"\.{op}\(", code)) for op in _OPS}
    booleans = Counter(re.findall(r"^solid(?:_temp)?=solid(?:_temp)?\.(union|cut|intersect)\(", code, re.M))
    stripped = re.sub(r"#.*", "", code)  # comments ("sketch 7")
    numbers = _FLOAT.findall(re.sub(r"[A-Za-z_]+\d+", "", stripped))  # ignore identifiers like loop12
    values = [float(v) for v in numbers]
    origins = [float(v) for p in planes for v in p[:3]]
    dists = [float(d) for d, _ in extrudes]
    # sketch coordinates per sketch (arc mid points are computed, not on the grid)
    per_sketch: dict[str, list[str]] = {}
    loop_kinds = Counter()
    for _, wp, body in loops:
        per_sketch.setdefault(wp, []).extend(_FLOAT.findall(_ARC_MID.sub("threePointArc((), ", body)))
        loop_kinds["circle" if ".circle(" in body else ("arc" if "threePointArc" in body else "polygon")] += 1
    return {
        "chars": len(code),
        "sketches": max(len(sketch_ids), 1 if planes else 0),
        "extrudes": len(extrudes),
        "extrudes_both": sum(1 for _, b in extrudes if b),
        "extrudes_negative": sum(1 for d, _ in extrudes if float(d) < 0),
        "loops": len(loop_names),
        "loop_kinds": dict(loop_kinds),
        "ops": ops,
        "booleans": dict(booleans),
        "normals": [_normal_name(*p[6:9]) for p in planes],
        "n_numbers": len(numbers),
        "value_min": min(values) if values else 0.0,
        "value_max": max(values) if values else 0.0,
        "origins_on_grid": all(_on_128(v) for v in origins),
        "extrudes_on_grid": all(_on_128(v) for v in dists),
        "sketch_coords_on_grid": all(_sketch_on_grid(v) for v in per_sketch.values()),
        "long_repr_share": (sum(len(n.lstrip("-").replace(".", "")) > 8 for n in numbers) / len(numbers)) if numbers else 0.0,
        "has_tiny_trig": "e-17" in code,
    }


def corpus_stats(programs: Sequence[str], tokenizer: Any = None,
                 count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Diversity and format statistics of a corpus.

    Args:
        programs: CadQuery sources.
        tokenizer: optional tokenizer for token lengths (``len(tokenizer(code)["input_ids"])``).
        count_tokens: optional function code -> token count (overrides ``tokenizer``); default: characters / 1.5.

    Returns:
        A JSON-friendly dict: ``n``, ``chars``/``tokens``/``sketches``/``loops`` summaries (mean, median,
        min, max, p95) and histograms, ``op_totals`` (curve ops), ``op_program_share`` (share of programs
        using each op), ``booleans``, ``extrude_kinds``, ``loop_kinds``, ``normals`` (shares),
        ``grid_share`` (share of programs whose origins / extrudes / sketch coordinates sit on the GenCAD
        grids), ``value_range``, ``long_repr_share``, and diversity: ``distinct_programs``,
        ``distinct_skeletons`` (share of distinct number-stripped templates), ``top_skeleton_share`` and
        ``skeleton_entropy_bits``.
    """
    if count_tokens is None:
        count_tokens = (lambda c: len(tokenizer(c)["input_ids"])) if tokenizer is not None else approx_token_count
    n = len(programs)
    if n == 0:
        raise ValueError("corpus_stats needs at least one program")
    per = [program_stats(p) for p in programs]
    op_totals = Counter()
    op_prog = Counter()
    booleans = Counter()
    normals = Counter()
    loop_kinds = Counter()
    for s in per:
        op_totals.update(s["ops"])
        op_prog.update({k for k, v in s["ops"].items() if v})
        booleans.update(s["booleans"])
        normals.update(s["normals"])
        loop_kinds.update(s["loop_kinds"])
    n_planes = sum(normals.values()) or 1
    n_ext = sum(s["extrudes"] for s in per) or 1
    skeletons = Counter(re.sub(_NUM, "#", p) for p in programs)
    probs = np.array(list(skeletons.values()), float) / n
    return {
        "n": n,
        "chars": _describe([s["chars"] for s in per]),
        "tokens": _describe([count_tokens(p) for p in programs]),
        "sketches": _describe([s["sketches"] for s in per]),
        "sketches_hist": dict(sorted(Counter(s["sketches"] for s in per).items())),
        "loops": _describe([s["loops"] for s in per]),
        "loops_hist": dict(sorted(Counter(s["loops"] for s in per).items())),
        "op_totals": dict(op_totals),
        "op_program_share": {k: op_prog[k] / n for k in _OPS},
        "booleans": dict(booleans),
        "boolean_program_share": {k: sum(1 for s in per if s["booleans"].get(k)) / n for k in ("union", "cut", "intersect")},
        "extrude_kinds": {
            "one_sided": 1 - sum(s["extrudes_both"] for s in per) / n_ext,
            "both": sum(s["extrudes_both"] for s in per) / n_ext,
            "negative": sum(s["extrudes_negative"] for s in per) / n_ext,
            "asymmetric_temp_share": sum("solid_temp" in p or p.count("solid=solid.union(solid0)") > 0 for p in programs) / n,
        },
        "loop_kinds": {k: v / max(sum(loop_kinds.values()), 1) for k, v in loop_kinds.items()},
        "normals": {k: v / n_planes for k, v in normals.most_common()},
        "grid_share": {
            "origins": sum(s["origins_on_grid"] for s in per) / n,
            "extrudes": sum(s["extrudes_on_grid"] for s in per) / n,
            "sketch_coords": sum(s["sketch_coords_on_grid"] for s in per) / n,
        },
        "value_range": (min(s["value_min"] for s in per), max(s["value_max"] for s in per)),
        "long_repr_share": float(np.mean([s["long_repr_share"] for s in per])),
        "tiny_trig_share": sum(s["has_tiny_trig"] for s in per) / n,
        "distinct_programs": len(set(programs)) / n,
        "distinct_skeletons": len(skeletons) / n,
        "top_skeleton_share": skeletons.most_common(1)[0][1] / n,
        "skeleton_entropy_bits": float(-(probs * np.log2(probs)).sum()),
    }


def format_comparison(columns: dict[str, dict[str, Any]], reference: dict[str, Any] | None = GENCAD_FIGURES) -> str:
    """A plain-text table of several ``corpus_stats`` results side by side (plus the GenCAD figures)."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        ("programs", lambda s: f"{s['n']}", ""),
        ("chars mean / median", lambda s: f"{s['chars']['mean']:.0f} / {s['chars']['median']:.0f}", "~900"),
        ("tokens mean / median / p95", lambda s: f"{s['tokens']['mean']:.0f} / {s['tokens']['median']:.0f} / {s['tokens']['p95']:.0f}", "~600"),
        ("sketches median [min-max]", lambda s: f"{s['sketches']['median']:.0f} [{s['sketches']['min']:.0f}-{s['sketches']['max']:.0f}] mean {s['sketches']['mean']:.2f}", "1 [1-8]"),
        ("loops median [min-max]", lambda s: f"{s['loops']['median']:.0f} [{s['loops']['min']:.0f}-{s['loops']['max']:.0f}] mean {s['loops']['mean']:.2f}", "2 [1-10]"),
        ("1-sketch share", lambda s: f"{s['sketches_hist'].get(1, 0) / s['n']:.2f}", ""),
        ("programs with lineTo/arc/circle", lambda s: "/".join(f"{s['op_program_share'][k]:.2f}" for k in ("lineTo", "threePointArc", "circle")), ""),
        ("loop kinds polygon/arc/circle", lambda s: "/".join(f"{s['loop_kinds'].get(k, 0):.2f}" for k in ("polygon", "arc", "circle")), ""),
        ("programs with union/cut/intersect", lambda s: "/".join(f"{s['boolean_program_share'][k]:.2f}" for k in ("union", "cut", "intersect")), ""),
        ("extrudes both / negative", lambda s: f"{s['extrude_kinds']['both']:.2f} / {s['extrude_kinds']['negative']:.2f}", ""),
        ("normal (0,0,1)/(0,-1,0)/(1,0,0)/other", lambda s: "/".join(f"{s['normals'].get(k, 0):.2f}" for k in ("(0,0,1)", "(0,-1,0)", "(1,0,0)")) + f"/{1 - sum(s['normals'].get(k, 0) for k in ('(0,0,1)', '(0,-1,0)', '(1,0,0)')):.2f}", "most/most/some"),
        ("on grid: origins/extrudes/sketch", lambda s: "/".join(f"{s['grid_share'][k]:.2f}" for k in ("origins", "extrudes", "sketch_coords")), "1/1/1"),
        ("value range", lambda s: f"[{s['value_range'][0]:.3f}, {s['value_range'][1]:.3f}]", "[-1, 1.5]"),
        ("long float repr share", lambda s: f"{s['long_repr_share']:.2f}", ""),
        ("distinct programs", lambda s: f"{s['distinct_programs']:.3f}", ""),
        ("distinct templates (skeletons)", lambda s: f"{s['distinct_skeletons']:.3f}", ""),
        ("top template share", lambda s: f"{s['top_skeleton_share']:.3f}", ""),
        ("template entropy (bits)", lambda s: f"{s['skeleton_entropy_bits']:.2f}", ""),
    ]
    names = list(columns) + (["GenCAD-Code (published)"] if reference is not None else [])
    table = [["statistic", *names]]
    for label, fn, ref in rows:
        table.append([label, *(fn(s) for s in columns.values()), *([ref] if reference is not None else [])])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)
