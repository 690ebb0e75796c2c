"""How close is CadCoder's data to real GenCAD-Code data? Measured on the 34 real test pairs.

The real sample (``gencad_sample/``: 34 GenCAD-Code test images with their ground-truth programs) is
used for measurement only, never for training or tuning to single images. Numbers quoted from this
script must say they come from that sample.

Parts (``--part``, repeatable; default: all implemented parts):

1. ``fidelity``: renderer fidelity. Every ground-truth program runs in the sandbox and is rendered by
   :func:`cadcoder.render.render_task` at the dataset framing; the render is compared with the real
   image: silhouette IoU, edge-map F1 (2-px tolerance) and median face-colour difference (0-255).
   Writes ``fidelity.json`` and ``fidelity_sheet.png`` (real | ours, one pair per cell).
2. ``corpus``: corpus fidelity. The real programs against the synthetic corpus (programs drawn from
   :func:`cadcoder.synth.generate_program` at each level, plus a built dataset such as the quickstart's
   ``data/synth-quickstart`` when present) with :func:`cadcoder.corpus_stats.corpus_stats`: operation
   histogram, loops and sketches per model, plane normals, number formats and grids, token lengths (with
   the model's tokenizer, raw and in the canonical-number form the model trains on). Text only.
   Writes ``corpus.json``.
3. ``transfer``: synthetic-to-real transfer. One or more model folders (``--model``, repeatable; default
   ``outputs/quickstart``, trained on synthetic data only) run on the real images with each strategy of
   :func:`cadcoder.inference.generate_cad`; the chosen programs are scored with
   :func:`cadcoder.evaluation.evaluate_programs` (protocol ``aligned``, with the chance level) against the
   real programs, beside the constant-program baseline. VSR, ``iou_mean``, ``iou_mean_all``, failure
   reasons, share of distinct outputs, seconds per image. Writes ``transfer.json`` and ``transfer.md``;
   finished pairs are cached in ``transfer_cache.jsonl`` so an interrupted run resumes. What moves the
   number (more synthetic data, ``cadcoder synth --render-style random``, a larger model) is one command
   once those models are trained: ``--part transfer --model outputs/A --model outputs/B``.

New parts are functions ``part(records, args) -> dict`` registered in :data:`PARTS`.

Usage::

    python benchmarks/real_sample.py                                  # all parts, outputs/real_sample/
    python benchmarks/real_sample.py --part fidelity --workers 2 --out outputs/real_sample
    python benchmarks/real_sample.py --part corpus
    python benchmarks/real_sample.py --part transfer --model outputs/quickstart --num-candidates 8
    python benchmarks/real_sample.py --part transfer --model outputs/quickstart --model outputs/bigger  # one table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cadcoder.provenance import git_commit, machine_summary  # noqa: E402

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


def write_sheet(pairs: Sequence[tuple], path: Path, columns: int = 3, cell: int = 224,
                labels: tuple[str, str] = ("real", "ours")) -> None:
    """Grid of (real | ours) pairs, each labelled with its id and, when its row is given, silhouette IoU / edge F1."""
    from cadcoder.render import side_by_side

    tiles = []
    for deepcad_id, real, ours, row in pairs:
        scores = f" IoU {row['silhouette_iou']:.3f} F1 {row['edge_f1']:.2f}" if row else ""
        tile = side_by_side(
            real.resize((cell, cell), Image.BILINEAR),
            ours.resize((cell, cell), Image.BILINEAR),
            labels=(f"{labels[0]} {deepcad_id}", f"{labels[1]}{scores}"),
        )
        tiles.append(tile)
    tw, th = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tw + 12), rows * (th + 12)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (tw + 12), (i // columns) * (th + 12)))
    sheet.save(path)


# --------------------------------------------------------------------------------------------------
# Part 2: corpus fidelity
# --------------------------------------------------------------------------------------------------
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
    from cadcoder.data import canonicalize_numbers

    def describe(lengths: List[int]) -> Dict[str, float]:
        a = np.asarray(lengths, dtype=float)
        return {"mean": round(float(a.mean()), 1), "median": float(np.median(a)),
                "p95": round(float(np.percentile(a, 95)), 1), "max": float(a.max())}

    raw = [len(tokenizer(c)["input_ids"]) for c in programs]
    canon = [len(tokenizer(canonicalize_numbers(c, decimals=decimals))["input_ids"]) for c in programs]
    return {"raw": describe(raw), "canonical": describe(canon), "canonical_decimals": decimals,
            "max_length": max_length, "over_max_length": round(sum(n > max_length for n in canon) / len(canon), 4)}


def _corpus_tokenizer(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The tokenizer for token lengths: ``--tokenizer``, else the first ``--model`` folder's, else none."""
    candidates = [args.tokenizer] if args.tokenizer else list(args.model or [DEFAULT_MODEL])
    for folder in candidates:
        if folder and (Path(folder) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            # The file itself, not AutoTokenizer: a model folder's config.json names remote code to trust.
            return PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json")), str(folder)
    if args.tokenizer:
        raise FileNotFoundError(f"--tokenizer {args.tokenizer}: no tokenizer.json there; pass a model or tokenizer folder")
    return None, None


def corpus_fidelity(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Compare the synthetic corpus with the real programs (text statistics only; nothing is executed)."""
    from cadcoder.corpus_stats import GENCAD_FIGURES, corpus_stats, format_comparison
    from cadcoder.synth import generate_program, sample_seed

    t0 = time.perf_counter()
    tok, tok_source = _corpus_tokenizer(args)
    real = [r["cadquery"] for r in records]
    corpora: Dict[str, List[str]] = {f"real ({len(real)})": real}
    levels = [int(x) for x in args.corpus_levels.split(",")]
    corpora[f"generated c{','.join(map(str, levels))}"] = [
        generate_program(sample_seed(args.seed + 1000 * level, i), complexity=level)
        for level in levels for i in range(args.corpus_num)
    ]  # fmt: skip
    if args.corpus_dataset and Path(args.corpus_dataset).exists():
        from cadcoder.data import load_cad_dataset

        dd = load_cad_dataset(args.corpus_dataset)
        splits = dd.values() if hasattr(dd, "values") else [dd]
        corpora[f"dataset {Path(args.corpus_dataset).name}"] = [c for d in splits for c in d.select_columns(["cadquery"])["cadquery"]]
    columns = {name: corpus_stats(progs, tokenizer=tok) for name, progs in corpora.items()}
    real_key = next(iter(columns))
    gaps = {name: corpus_gaps(columns[real_key], s) for name, s in columns.items() if name != real_key}
    lengths = {name: token_lengths(progs, tok, args.number_decimals, args.max_length) for name, progs in corpora.items()} if tok else {}

    summary = {"tokenizer": tok_source or "approximation ceil(chars / 1.5)", "columns": columns, "gaps": gaps,
               "token_lengths": lengths, "gencad_figures": GENCAD_FIGURES, "seconds": round(time.perf_counter() - t0, 2),
               "settings": {"levels": levels, "per_level": args.corpus_num, "seed": args.seed, "dataset": args.corpus_dataset}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")

    print(f"\n== Part 2: corpus fidelity (token counts: {summary['tokenizer']}) ==")
    print(format_comparison(columns))
    for title, key in (("plane normals (share of sketch planes)", "normals"), ("sketches per model", "sketches_hist"),
                       ("loops per model", "loops_hist")):  # fmt: skip
        print(f"\n{title}:")
        for name, s in columns.items():
            hist = s[key]
            total = sum(hist.values()) or 1
            print(f"  {name:24s} " + ", ".join(f"{k}: {v / total:.2f}" for k, v in list(hist.items())[:8]))
    print("\ngaps to the real programs (TV = total-variation distance, 0 = same; diffs = synthetic - real):")
    for name, g in gaps.items():
        tvs = ", ".join(f"{k[3:]} {v:.2f}" for k, v in g.items() if k.startswith("tv_") and v is not None)
        print(f"  {name:24s} TV: {tvs}")
        print(f"  {'':24s} mean diffs: {g['mean_diff']}; grid-share diffs: {g['grid_share_diff']}")
        print(f"  {'':24s} op-use diffs: {g['op_program_share_diff']}; boolean-use diffs: {g['boolean_program_share_diff']}")
    if lengths:
        print(f"\ntoken lengths ({tok_source}; canonical = numbers at {args.number_decimals} decimals, as trained):")
        for name, t in lengths.items():
            print(f"  {name:24s} raw mean {t['raw']['mean']:.0f} p95 {t['raw']['p95']:.0f} max {t['raw']['max']:.0f} | "
                  f"canonical mean {t['canonical']['mean']:.0f} p95 {t['canonical']['p95']:.0f} max {t['canonical']['max']:.0f} | "
                  f"> {args.max_length} tokens: {t['over_max_length']:.2f}")
    print(f"wrote {out / 'corpus.json'} ({summary['seconds']:.1f} s)")
    return summary


# --------------------------------------------------------------------------------------------------
# Part 3: synthetic-to-real transfer
# --------------------------------------------------------------------------------------------------
#: The model trained on synthetic data only by ``python train.py configs/quickstart.json``.
DEFAULT_MODEL = "outputs/quickstart"
#: Goals of the transfer part (issue 8) for a model trained on synthetic data only.
TRANSFER_GOALS = {"valid_syntax_rate": 0.90, "iou_mean_all": 0.30}
_ROW_KEYS = ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all", "iou_chance", "distinct_predictions")


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
    from cadcoder.evaluation import DEFAULT_CONSTANT_PROGRAM, constant_program_baseline

    report = constant_program_baseline(list(references), protocol=protocol, with_chance=True, sandbox=sandbox,
                                       cache_path=cache_path, progress=progress)  # fmt: skip
    return {"constant": {**_scores(report), "program": DEFAULT_CONSTANT_PROGRAM},
            "iou_chance": report.get("iou_chance"), "iou_chance_pairs": report.get("iou_chance_pairs")}


def transfer_runs(model: Any, processor: Any, images: Sequence[Image.Image], references: Sequence[str],
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
    from cadcoder.evaluation import evaluate_programs
    from cadcoder.inference import generate_cad

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
        cand_status: Counter = Counter(c.status for p in preds for c in p.candidates)
        n_cand = sum(cand_status.values())
        rows.append({
            "strategy": strategy, "num_candidates": k, **_scores(report),
            "candidate_statuses": dict(cand_status.most_common()),
            "candidates_valid_share": round(cand_status.get("ok", 0) / n_cand, 4) if n_cand else None,
            "seconds_per_image": round(gen_wall / len(preds), 3),
            "per_image": [
                {"deepcad_id": i, "status": s, "iou": iou, "selected_status": p.status, "score": p.score,
                 "candidates": len(p.candidates), "valid_candidates": sum(c.ok for c in p.candidates),
                 "program": p.program}
                for i, p, s, iou in zip(ids, preds, report["statuses"], report["ious"])
            ],
        })  # fmt: skip
        if progress:  # one line per strategy as it finishes, so a long run shows its numbers early
            r = rows[-1]
            print(f"  {strategy}: VSR {_fmt(r['valid_syntax_rate'], 2)}, iou_mean {_fmt(r['iou_mean'])}, "
                  f"iou_mean_all {_fmt(r['iou_mean_all'])}, distinct {_fmt(r['distinct_predictions'], 2)}, "
                  f"failures {r['failures'] or 'none'}, {r['seconds_per_image']:.2f} s/image", flush=True)
    return rows


def _model_facts(model: Any, folder: str) -> Dict[str, Any]:
    """Size and training facts of a model folder (parameters, and train.py's test metrics when present)."""
    facts: Dict[str, Any] = {"path": folder, "parameters": int(sum(p.numel() for p in model.parameters()))}
    test = Path(folder) / "test_results.json"
    if test.is_file():
        res = json.loads(test.read_text())
        facts["synthetic_test"] = {k: res.get(k) for k in ("test_iou_mean_all", "test_valid_syntax_rate",
                                                            "test_distinct_predictions", "test_samples")}  # fmt: skip
    return facts


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def transfer_table(summary: Dict[str, Any]) -> str:
    """Markdown table of the transfer part: one row per (model, strategy), then the baselines."""
    lines = ["| model | strategy | cands | VSR | iou_mean | iou_mean_all | distinct | cand. valid | failures | s / image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for m in summary["models"]:
        for r in m["rows"]:
            fails = ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "none"
            lines.append(f"| {m['path']} | {r['strategy']} | {r['num_candidates']} | {_fmt(r['valid_syntax_rate'], 2)} | "
                         f"{_fmt(r['iou_mean'])} | {_fmt(r['iou_mean_all'])} | {_fmt(r['distinct_predictions'], 2)} | "
                         f"{_fmt(r['candidates_valid_share'], 2)} | {fails} | {r['seconds_per_image']:.2f} |")
    c = summary["baselines"]["constant"]
    lines.append(f"| constant program (baseline) | - | 1 | {_fmt(c['valid_syntax_rate'], 2)} | {_fmt(c['iou_mean'])} | "
                 f"{_fmt(c['iou_mean_all'])} | {_fmt(c['distinct_predictions'], 2)} | - | - | - |")
    lines.append(f"| chance (reference vs another reference) | - | - | - | {_fmt(summary['baselines']['iou_chance'])} | - | - | - | - | - |")
    notes = []
    for m in summary["models"]:
        syn = m.get("synthetic_test")
        if syn and syn.get("test_iou_mean_all") is not None:
            notes.append(f"- {m['path']} ({m['parameters'] / 1e6:.1f}M parameters) on its own synthetic test split "
                         f"({syn.get('test_samples')} parts, from train.py): iou_mean_all {_fmt(syn['test_iou_mean_all'])}, "
                         f"VSR {_fmt(syn.get('test_valid_syntax_rate'), 2)}, distinct {_fmt(syn.get('test_distinct_predictions'), 2)}")
    return "\n".join(lines + ([""] + notes if notes else []))


def jittered_inputs(records: Sequence[Dict[str, Any]], sandbox: Any, seed: int = 0) -> List[Image.Image]:
    """The real programs rendered with :meth:`cadcoder.render.RenderStyle.random` (image ``i`` from seed
    ``[seed, i]``): another grey level, line width, camera direction, zoom and shift than the dataset's, at the
    real images' size. A stand-in for renders that do not come from GenCAD-Code's own pipeline.

    Raises:
        RuntimeError: a program of the sample failed to render.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cadcoder.render import RenderStyle, render_task

    size = records[0]["image"].width
    styles = [RenderStyle.random(np.random.default_rng([seed, i])).to_dict() for i in range(len(records))]
    with ThreadPoolExecutor(max(1, sandbox.num_workers)) as pool:
        results = list(pool.map(lambda i: sandbox.run(records[i]["cadquery"], task=render_task, size=size, **styles[i]),
                                range(len(records))))  # fmt: skip
    failed = [(r["deepcad_id"], res.error) for r, res in zip(records, results) if not res.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} sample programs failed to render, e.g. {failed[0]}")
    return [Image.fromarray(np.asarray(res.value, dtype=np.uint8), mode="RGB") for res in results]


def synthetic_to_real(records: Sequence[Dict[str, Any]], args: argparse.Namespace) -> Dict[str, Any]:
    """Run model(s) trained on synthetic data on the real images with each strategy; write transfer.json/.md.

    With ``--input-style random`` the inputs are :func:`jittered_inputs` instead of the real images (the
    references stay the real programs).
    """
    import torch

    from cadcoder.inference import STRATEGIES, load_model
    from cadcoder.sandbox import Sandbox

    strategies = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"--strategies: unknown {unknown}; use a comma-separated subset of {','.join(STRATEGIES)}")
    models = args.model or [DEFAULT_MODEL]
    for folder in models:
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"--model {folder}: no config.json there; train one first "
                                    f"(python train.py configs/quickstart.json writes {DEFAULT_MODEL})")
    if args.threads:
        torch.set_num_threads(args.threads)
    refs = [r["cadquery"] for r in records]
    ids = [r["deepcad_id"] for r in records]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "transfer_cache.jsonl"  # finished pairs; a rerun with the same programs reuses them
    t0 = time.perf_counter()
    summary: Dict[str, Any] = {
        "sample": f"{len(records)} real GenCAD-Code test pairs (measurement only)", "protocol": args.protocol,
        "inputs": "the real images" if args.input_style == "dataset" else
                  f"the real programs rendered with RenderStyle.random (seed {args.seed})",
        "settings": {"strategies": strategies, "num_candidates": args.num_candidates, "seed": args.seed,
                     "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "workers": args.workers,
                     "timeout": args.timeout, "torch_threads": torch.get_num_threads()},
        "machine": machine_summary(), "commit": _commit(), "goals": TRANSFER_GOALS, "models": [],
    }  # fmt: skip
    with Sandbox(num_workers=args.workers, timeout=args.timeout) as sandbox:
        if args.input_style == "dataset":
            images = [r["image"] for r in records]
        else:
            images = jittered_inputs(records, sandbox, args.seed)
            write_sheet([(r["deepcad_id"], r["image"], im, None) for r, im in zip(records, images)],
                        out / "inputs_sheet.png", labels=("real", "input"))
        summary["baselines"] = transfer_baselines(refs, sandbox, protocol=args.protocol, cache_path=cache, progress=False)
        for folder in models:
            model, processor = load_model(folder, device="cpu")
            facts = _model_facts(model, folder)
            print(f"\nmodel {folder}: {facts['parameters'] / 1e6:.1f}M parameters; strategies {', '.join(strategies)}")
            facts["rows"] = transfer_runs(model, processor, images, refs, strategies, args.num_candidates, sandbox,
                                          ids=ids, protocol=args.protocol, seed=args.seed, batch_size=args.batch_size,
                                          max_new_tokens=args.max_new_tokens, cache_path=cache, progress=True)  # fmt: skip
            summary["models"].append(facts)
            del model
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    base = summary["baselines"]
    floor = max(base["constant"]["iou_mean_all"] or 0.0, base["iou_chance"] or 0.0)
    for m in summary["models"]:
        for r in m["rows"]:
            r["margin_over_baselines"] = None if r["iou_mean_all"] is None else round(r["iou_mean_all"] - floor, 4)
            r["goals_met"] = {k: bool(r[k] is not None and r[k] >= g) for k, g in TRANSFER_GOALS.items()}

    table = transfer_table(summary)
    (out / "transfer.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    header = (f"Synthetic-to-real transfer on {summary['sample']}, inputs: {summary['inputs']}, protocol {args.protocol}, "
              f"commit {summary['commit']}, {summary['machine']}.\n\n")  # fmt: skip
    (out / "transfer.md").write_text(header + table + "\n", encoding="utf-8")
    print(f"\n== Part 3: synthetic-to-real transfer ({len(records)} real images, {summary['wall_seconds']:.0f} s wall) ==")
    print(table)
    print(f"goals: VSR >= {TRANSFER_GOALS['valid_syntax_rate']}, iou_mean_all >= {TRANSFER_GOALS['iou_mean_all']}; "
          f"floor max(constant, chance) = {floor:.3f}")
    for m in summary["models"]:
        for r in m["rows"]:
            met = " ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in r["goals_met"].items())
            print(f"  {m['path']} / {r['strategy']}: margin over the floor {_fmt(r['margin_over_baselines'])}; {met}")
    print(f"wrote {out / 'transfer.json'} and {out / 'transfer.md'}")
    return summary


def _commit() -> str:
    """The checkout's short commit (``+dirty`` when tracked files differ), or ``unknown`` outside git."""
    info = git_commit(REPO)
    if not info["commit"]:
        return "unknown"
    return info["commit"][:7] + ("+dirty" if info["dirty"] else "")


# --------------------------------------------------------------------------------------------------
PARTS: Dict[str, Callable[[Sequence[Dict[str, Any]], argparse.Namespace], Dict[str, Any]]] = {
    "fidelity": renderer_fidelity,
    "corpus": corpus_fidelity,
    "transfer": synthetic_to_real,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts and print their reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default=str(DEFAULT_SAMPLE), help="gencad_sample folder (programs.jsonl + images/)")
    parser.add_argument("--out", default="outputs/real_sample", help="output folder for JSON reports and PNG sheets")
    parser.add_argument("--part", action="append", choices=sorted(PARTS), help="part(s) to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per program in the sandbox")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs (smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus and of sampling")
    corpus = parser.add_argument_group("corpus part")
    corpus.add_argument("--corpus-num", type=int, default=1000, help="generated programs per complexity level")
    corpus.add_argument("--corpus-levels", default=",".join(map(str, CORPUS_LEVELS)), help="generator levels, e.g. 0,1,2,3")
    corpus.add_argument("--corpus-dataset", default="data/synth-quickstart",
                        help="also a built synthetic dataset (all splits), when the folder exists")
    corpus.add_argument("--tokenizer", default=None, help="tokenizer folder for token lengths (default: the first --model's)")
    corpus.add_argument("--number-decimals", type=int, default=3, help="decimals of the canonical numbers the model trains on")
    corpus.add_argument("--max-length", type=int, default=640, help="training max_length: longer canonical programs are flagged")
    transfer = parser.add_argument_group("transfer part")
    transfer.add_argument("--model", action="append", default=None,
                          help=f"model folder trained on synthetic data (repeatable: one table for several; default {DEFAULT_MODEL})")
    transfer.add_argument("--num-candidates", type=int, default=8, help="candidates per image of first_valid / render_compare")
    transfer.add_argument("--strategies", default=None, help="comma-separated subset of greedy,first_valid,render_compare (default: all)")
    transfer.add_argument("--max-new-tokens", type=int, default=640, help="generation length cap (quickstart trains with max_length 640)")
    transfer.add_argument("--batch-size", type=int, default=8, help="images per generate call")
    transfer.add_argument("--protocol", default="aligned", choices=("aligned", "bbox", "mecagent"), help="IoU protocol")
    transfer.add_argument("--input-style", default="dataset", choices=("dataset", "random"),
                          help="'random': feed the real programs rendered with randomised look and camera instead of the real images")
    transfer.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.num_candidates < 1:
        parser.error("--num-candidates must be >= 1")

    records = load_sample(args.sample)
    if args.limit is not None:
        records = records[: args.limit]
    print(f"real sample: {len(records)} pairs from {args.sample} (GenCAD-Code test split; measurement only)")
    print(machine_summary())
    for name in args.part or list(PARTS):
        PARTS[name](records, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
