"""Synthetic-to-real transfer: models trained on synthetic data, scored on real images with each strategy.

:func:`score_transfer` runs model folders on the real sample (:mod:`cadcoder.real_sample`) with each
strategy of :func:`cadcoder.inference.generate_cad`, scores the chosen programs with
:func:`cadcoder.evaluation.evaluate_programs` beside the constant-program and chance baselines, and writes
``transfer.json`` / ``transfer.md``. :func:`paired_difference` compares two such runs image by image.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from .provenance import machine_summary, short_commit
from .real_sample import jittered_inputs, write_sheet
from .sandbox import Sandbox, borrow_or_open

#: The model trained on synthetic data only by ``python train.py configs/quickstart.json``.
DEFAULT_MODEL = "outputs/quickstart"
#: Goals for a model trained on synthetic data only, on the real sample.
TRANSFER_GOALS = {"valid_syntax_rate": 0.90, "iou_mean_all": 0.30}
#: Input styles: the real images, or the real programs rendered with a randomised look and camera.
INPUT_STYLES = ("dataset", "random")
_ROW_KEYS = ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all", "iou_chance", "distinct_predictions")


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: ``n/a`` for missing values, floats to ``digits`` places, anything else as text."""
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _scores(report: Dict[str, Any]) -> Dict[str, Any]:
    """The headline numbers of an :func:`cadcoder.evaluation.evaluate_programs` report."""
    row = {k: report.get(k) for k in _ROW_KEYS}
    row["failures"] = {k: v for k, v in report["failures"].items() if v}
    row["reference_failures"] = report["reference_failures"]["count"]
    return row


def transfer_baselines(references: Sequence[str], sandbox: Any, protocol: str = "aligned",
                       cache_path: str | os.PathLike | None = None, progress: bool = True) -> Dict[str, Any]:
    """Constant-program score and chance level on ``references``: the floor any model number needs beside it.

    Returns:
        ``constant`` (the scores of :func:`cadcoder.evaluation.constant_program_baseline` with its default
        program, plus ``program``) and ``iou_chance`` (each reference scored against another one).
    """
    from .evaluation import DEFAULT_CONSTANT_PROGRAM, constant_program_baseline

    report = constant_program_baseline(list(references), protocol=protocol, with_chance=True, sandbox=sandbox,
                                       cache_path=cache_path, progress=progress)  # fmt: skip
    return {"constant": {**_scores(report), "program": DEFAULT_CONSTANT_PROGRAM},
            "iou_chance": report.get("iou_chance"), "iou_chance_pairs": report.get("iou_chance_pairs")}


def _strategy_row(strategy: str, k: int, preds: Sequence[Any], report: Dict[str, Any], ids: Sequence[str],
                  seconds: float) -> Dict[str, Any]:
    """One row of :func:`transfer_runs` from the predictions of one strategy and their evaluation report."""
    cand_status: Counter = Counter(c.status for p in preds for c in p.candidates)
    n_cand = sum(cand_status.values())
    return {
        "strategy": strategy, "num_candidates": k, **_scores(report),
        "candidate_statuses": dict(cand_status.most_common()),
        "candidates_valid_share": round(cand_status.get("ok", 0) / n_cand, 4) if n_cand else None,
        "seconds_per_image": round(seconds / len(preds), 3),
        "per_image": [
            {"deepcad_id": i, "status": s, "iou": iou, "selected_status": p.status, "score": p.score,
             "candidates": len(p.candidates), "valid_candidates": sum(c.ok for c in p.candidates),
             "program": p.program}
            for i, p, s, iou in zip(ids, preds, report["statuses"], report["ious"])
        ],
    }  # fmt: skip


def transfer_runs(model: Any, processor: Any, images: Sequence[Any], references: Sequence[str],
                  strategies: Sequence[str], num_candidates: int, sandbox: Any, *, ids: Sequence[str] | None = None,
                  protocol: str = "aligned", seed: int = 0, batch_size: int = 8, max_new_tokens: int | None = None,
                  cache_path: str | os.PathLike | None = None, progress: bool = True) -> List[Dict[str, Any]]:
    """Run one model on ``images`` with each inference strategy and score the chosen programs.

    Every strategy goes through :func:`cadcoder.inference.generate_cad` (greedy ignores ``num_candidates``)
    and :func:`cadcoder.evaluation.evaluate_programs` with ``with_chance=True``.

    Returns:
        One row per strategy: ``strategy``, ``num_candidates``, the scores (``valid_syntax_rate``,
        ``iou_mean``, ``iou_median``, ``iou_mean_all``, ``iou_chance``, ``distinct_predictions``,
        ``failures``), ``candidate_statuses`` (every candidate's status, summed), ``candidates_valid_share``,
        ``seconds_per_image`` (generation + execution + selection, wall clock) and ``per_image`` details.
    """
    from .evaluation import evaluate_programs
    from .inference import generate_cad

    ids = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    rows = []
    for strategy in strategies:
        k = 1 if strategy == "greedy" else int(num_candidates)
        t0 = time.perf_counter()
        preds = generate_cad(model, processor, list(images), num_candidates=k, strategy=strategy, seed=seed,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, sandbox=sandbox, export=False,
                             progress=progress)  # fmt: skip
        gen_wall = time.perf_counter() - t0
        report = evaluate_programs([p.program for p in preds], list(references), protocol=protocol, with_chance=True,
                                   sandbox=sandbox, cache_path=cache_path, progress=False)  # fmt: skip
        rows.append(_strategy_row(strategy, k, preds, report, ids, gen_wall))
        if progress:  # one line per strategy as it finishes, so a long run shows its numbers early
            r = rows[-1]
            print(f"  {strategy}: VSR {fmt(r['valid_syntax_rate'], 2)}, iou_mean {fmt(r['iou_mean'])}, "
                  f"iou_mean_all {fmt(r['iou_mean_all'])}, distinct {fmt(r['distinct_predictions'], 2)}, "
                  f"failures {r['failures'] or 'none'}, {r['seconds_per_image']:.2f} s/image", flush=True)
    return rows


def model_facts(model: Any, folder: str) -> Dict[str, Any]:
    """Size and training facts of a model folder (parameters, and train.py's test metrics when present)."""
    facts: Dict[str, Any] = {"path": folder, "parameters": int(sum(p.numel() for p in model.parameters()))}
    test = Path(folder) / "test_results.json"
    if test.is_file():
        res = json.loads(test.read_text())
        facts["synthetic_test"] = {k: res.get(k) for k in ("test_iou_mean_all", "test_valid_syntax_rate",
                                                            "test_distinct_predictions", "test_samples")}  # fmt: skip
    return facts


def transfer_table(summary: Dict[str, Any]) -> str:
    """Markdown table of a :func:`score_transfer` summary: one row per (model, strategy), then the baselines."""
    lines = ["| model | strategy | cands | VSR | iou_mean | iou_mean_all | distinct | cand. valid | failures | s / image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for m in summary["models"]:
        for r in m["rows"]:
            fails = ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "none"
            lines.append(f"| {m['path']} | {r['strategy']} | {r['num_candidates']} | {fmt(r['valid_syntax_rate'], 2)} | "
                         f"{fmt(r['iou_mean'])} | {fmt(r['iou_mean_all'])} | {fmt(r['distinct_predictions'], 2)} | "
                         f"{fmt(r['candidates_valid_share'], 2)} | {fails} | {r['seconds_per_image']:.2f} |")
    c = summary["baselines"]["constant"]
    lines.append(f"| constant program (baseline) | - | 1 | {fmt(c['valid_syntax_rate'], 2)} | {fmt(c['iou_mean'])} | "
                 f"{fmt(c['iou_mean_all'])} | {fmt(c['distinct_predictions'], 2)} | - | - | - |")
    lines.append(f"| chance (reference vs another reference) | - | - | - | {fmt(summary['baselines']['iou_chance'])} | - | - | - | - | - |")
    notes = []
    for m in summary["models"]:
        syn = m.get("synthetic_test")
        if syn and syn.get("test_iou_mean_all") is not None:
            notes.append(f"- {m['path']} ({m['parameters'] / 1e6:.1f}M parameters) on its own synthetic test split "
                         f"({syn.get('test_samples')} parts, from train.py): iou_mean_all {fmt(syn['test_iou_mean_all'])}, "
                         f"VSR {fmt(syn.get('test_valid_syntax_rate'), 2)}, distinct {fmt(syn.get('test_distinct_predictions'), 2)}")
    return "\n".join(lines + ([""] + notes if notes else []))


def check_transfer_request(strategies: Sequence[str] | None, models: Sequence[str] | None) -> tuple[List[str], List[str]]:
    """The strategies (default: all) and model folders (default: :data:`DEFAULT_MODEL`) of a transfer run.

    Raises:
        ValueError: an unknown strategy.
        FileNotFoundError: a model folder without ``config.json``.
    """
    from .inference import STRATEGIES

    strategies = list(strategies) if strategies else list(STRATEGIES)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"--strategies: unknown {unknown}; use a comma-separated subset of {','.join(STRATEGIES)}")
    models = list(models) if models else [DEFAULT_MODEL]
    for folder in models:
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"--model {folder}: no config.json there; train one first "
                                    f"(python train.py configs/quickstart.json writes {DEFAULT_MODEL})")
    return strategies, models


def score_transfer(records: Sequence[Dict[str, Any]], models: Sequence[str] | None, out: str | os.PathLike, *,
                   strategies: Sequence[str] | None = None, num_candidates: int = 8, seed: int = 0,
                   max_new_tokens: int | None = 640, batch_size: int = 8, protocol: str = "aligned",
                   input_style: str = "dataset", workers: int = 2, timeout: float = 30.0,
                   sandbox: Sandbox | None = None) -> Dict[str, Any]:
    """Run model folders on the real sample with each strategy; write and print ``transfer.json`` / ``transfer.md``.

    With ``input_style="random"`` the inputs are :func:`cadcoder.real_sample.jittered_inputs` instead of the real
    images (the references stay the real programs), and ``inputs_sheet.png`` shows them. Finished pairs are cached
    in ``transfer_cache.jsonl`` in ``out``, so an interrupted run resumes.

    Raises:
        ValueError, FileNotFoundError: see :func:`check_transfer_request`.
    """
    import torch

    from .inference import load_model

    strategies, models = check_transfer_request(strategies, models)
    refs, ids = [r["cadquery"] for r in records], [r["deepcad_id"] for r in records]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "transfer_cache.jsonl"  # finished pairs; a rerun with the same programs reuses them
    t0 = time.perf_counter()
    summary: Dict[str, Any] = {
        "sample": f"{len(records)} real GenCAD-Code test pairs (measurement only)", "protocol": protocol,
        "inputs": "the real images" if input_style == "dataset" else
                  f"the real programs rendered with RenderStyle.random (seed {seed})",
        "settings": {"strategies": strategies, "num_candidates": num_candidates, "seed": seed,
                     "max_new_tokens": max_new_tokens, "batch_size": batch_size, "workers": workers,
                     "timeout": timeout, "torch_threads": torch.get_num_threads()},
        "machine": machine_summary(), "commit": short_commit(), "goals": TRANSFER_GOALS, "models": [],
    }  # fmt: skip
    with borrow_or_open(sandbox, num_workers=workers, timeout=timeout) as box:
        if input_style == "dataset":
            images = [r["image"] for r in records]
        else:
            images = jittered_inputs(records, box, seed)
            write_sheet([(r["deepcad_id"], r["image"], im, None) for r, im in zip(records, images)],
                        out / "inputs_sheet.png", labels=("real", "input"))
        summary["baselines"] = transfer_baselines(refs, box, protocol=protocol, cache_path=cache, progress=False)
        for folder in models:
            model, processor = load_model(folder, device="cpu")
            facts = model_facts(model, folder)
            print(f"\nmodel {folder}: {facts['parameters'] / 1e6:.1f}M parameters; strategies {', '.join(strategies)}")
            facts["rows"] = transfer_runs(model, processor, images, refs, strategies, num_candidates, box, ids=ids,
                                          protocol=protocol, seed=seed, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, cache_path=cache, progress=True)  # fmt: skip
            summary["models"].append(facts)
            del model
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    floor = _add_margins(summary)
    _write_and_print(summary, out, floor, len(records))
    return summary


def _add_margins(summary: Dict[str, Any]) -> float:
    """Give every row its margin over max(constant, chance) and its goals met; return that floor."""
    base = summary["baselines"]
    floor = max(base["constant"]["iou_mean_all"] or 0.0, base["iou_chance"] or 0.0)
    for m in summary["models"]:
        for r in m["rows"]:
            r["margin_over_baselines"] = None if r["iou_mean_all"] is None else round(r["iou_mean_all"] - floor, 4)
            r["goals_met"] = {k: bool(r[k] is not None and r[k] >= g) for k, g in TRANSFER_GOALS.items()}
    return floor


def _write_and_print(summary: Dict[str, Any], out: Path, floor: float, num_images: int) -> None:
    """Write ``transfer.json`` and ``transfer.md`` and print the table with each row's margin and goals."""
    table = transfer_table(summary)
    (out / "transfer.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    header = (f"Synthetic-to-real transfer on {summary['sample']}, inputs: {summary['inputs']}, protocol "
              f"{summary['protocol']}, commit {summary['commit']}, {summary['machine']}.\n\n")  # fmt: skip
    (out / "transfer.md").write_text(header + table + "\n", encoding="utf-8")
    print(f"\n== Part 3: synthetic-to-real transfer ({num_images} real images, {summary['wall_seconds']:.0f} s wall) ==")
    print(table)
    print(f"goals: VSR >= {TRANSFER_GOALS['valid_syntax_rate']}, iou_mean_all >= {TRANSFER_GOALS['iou_mean_all']}; "
          f"floor max(constant, chance) = {floor:.3f}")
    for m in summary["models"]:
        for r in m["rows"]:
            met = " ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in r["goals_met"].items())
            print(f"  {m['path']} / {r['strategy']}: margin over the floor {fmt(r['margin_over_baselines'])}; {met}")
    print(f"wrote {out / 'transfer.json'} and {out / 'transfer.md'}")


def per_image_ious(row: Dict[str, Any]) -> Dict[str, float]:
    """IoU of each real image under one strategy row of :func:`transfer_runs`, failures counted as 0."""
    return {p["deepcad_id"]: float(p["iou"] or 0.0) for p in row["per_image"]}


def paired_difference(lever: Dict[str, float], base: Dict[str, float], resamples: int = 10000,
                      seed: int = 0) -> Dict[str, float]:
    """Mean per-image IoU difference (lever - base) over the images both scored, with a 95% bootstrap interval.

    The images are resampled in pairs, so the interval reflects how much the difference depends on which
    parts happen to be in the sample, not the (larger) spread of IoU between parts.

    Raises:
        ValueError: no image was scored for both.
    """
    ids = sorted(set(lever) & set(base))
    if not ids:
        raise ValueError("no image was scored for both the lever and base")
    diffs = np.array([lever[i] - base[i] for i in ids])
    means = np.random.default_rng(seed).choice(diffs, size=(resamples, diffs.size)).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "low": float(low), "high": float(high), "images": len(ids)}
