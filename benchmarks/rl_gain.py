"""Before and after RL: a starting (SFT) checkpoint against RL-tuned ones, on synthetic and on real parts.

    python benchmarks/rl_gain.py --base outputs/quickstart \\
        --tuned outputs/rl-quickstart outputs/rl-quickstart-render --out outputs/benchmarks/rl_gain
    python benchmarks/rl_gain.py ... --skip-real                   # the synthetic part only
    python benchmarks/rl_gain.py ... --synthetic-parts 10 --real-images 4 --real-candidates 2   # a smoke run

Every tuned model is compared with ``--base``, part by part, and every tuned model after the first with the first
(e.g. the ``render`` reward against the ``iou`` reward).

1. **Synthetic**: the held-out parts that ``train.py``'s test phase scores (``configs/quickstart.json``: the first
   ``test_samples`` = 100 parts of ``data/synth-quickstart``'s test split, protocol ``aligned``), chosen, generated
   for and scored by the same steps (``cadcoder.recipe``): ``held_out_subset``, the generation length of
   ``fit_lengths``, greedy decoding with ``cadcoder.training.generate_programs`` (what ``train.py``'s trainer calls,
   bf16 autocast when the config trains in bf16, as there), then ``cadcoder.evaluation.evaluate_programs`` with the
   chance level and ``best_constant_program`` over ``constant_candidates`` chosen on ``select_references``: the two
   calls of ``recipe.score_test_set``, here keeping the per-part IoUs. Reported: VSR, ``iou_mean_all`` (failures 0),
   distinct share (``evaluation.distinct_share``), and the paired per-part difference to the base model with a 95 %
   bootstrap interval (``cadcoder.transfer.paired_difference``).
2. **Real**: the 34 real GenCAD-Code test pairs (``cadcoder.real_sample``; measurement only, never training), each
   model with ``greedy``, ``first_valid@K`` and ``render_compare@K`` (K = ``--real-candidates``, 8) through
   ``cadcoder.transfer.transfer_runs`` (``cadcoder.inference.generate_cad``, seed 0, at most 640 new tokens, as
   ``benchmarks/real_sample.py --part transfer``), beside the constant program and chance
   (``transfer.transfer_baselines``), with paired differences to the base model, and the share of the base model's
   greedy-to-``render_compare@K`` gap that the tuned model's greedy closes.

Goals (:data:`GOALS`): greedy VSR >= 0.97 and greedy ``iou_mean_all`` >= base + 0.05 with the paired interval above 0
on the synthetic parts; on the real images greedy closes at least half of the base model's gap to ``render_compare@8``.

Each finished piece (baselines, a model's synthetic predictions and scores, a model's real strategy) is saved under
``--out/pieces/`` with the settings it was measured under, and reused by a rerun with the same settings and model
weights (``--fresh`` redoes everything). Outputs: ``rl_gain.json`` and ``rl_gain.md`` (command, machine, commit,
settings, tables, goals) and ``<model>/synthetic_predictions.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py, beside this script

from cadcoder.provenance import machine_info, machine_summary, short_commit
from cadcoder.transfer import fmt, paired_difference, per_image_ious

#: What the tuned models are held to (see the module docstring).
GOALS = {"synthetic_greedy_vsr": 0.97, "synthetic_greedy_iou_gain": 0.05, "real_gap_closed": 0.5}
#: The real-image strategies, in table order (``@K`` is added to the sampling ones).
REAL_STRATEGIES = ("greedy", "first_valid", "render_compare")


# ------------------------------------------------------------------------------------------------ models
@dataclass
class ModelEntry:
    """A model folder under test: its table label, role and what its folder says about its training."""

    label: str
    path: str
    role: str  # "base" or "tuned"
    facts: dict[str, Any]


def weights_fingerprint(folder: str | Path) -> str:
    """A short hash of the folder's config and weight files (name, size, mtime): a retrained model is not reused."""
    parts = []
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    if not parts:
        raise FileNotFoundError(f"{folder} holds no config.json or weights; pass a folder written by train.py / train_rl.py")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def rl_facts(folder: str | Path) -> dict[str, Any]:
    """Reward, starting checkpoint, steps and training seconds of an RL-tuned folder (``train_rl.py``'s card and
    ``rl_results.json``); empty for a folder ``train_rl.py`` did not write."""
    folder = Path(folder)
    facts: dict[str, Any] = {}
    results = folder / "rl_results.json"
    if results.is_file():
        summary = json.loads(results.read_text())
        facts.update({k: summary.get(k) for k in ("steps", "train_seconds")})
    card = folder / "README.md"
    if card.is_file():
        found = re.search(r"## RL config\s*```json\s*(\{.*?\})\s*```", card.read_text(encoding="utf-8"), re.DOTALL)
        if found:
            config = json.loads(found.group(1))
            facts.update({k: config.get(k) for k in ("reward", "failure_penalty", "temperature", "model_name_or_path",
                                                     "learning_rate", "kl_coef", "group_size", "prompts_per_step",
                                                     "max_steps")})  # fmt: skip
    return facts


def model_entries(base: str, tuned: Sequence[str]) -> list[ModelEntry]:
    """The base and tuned models with unique labels (folder names); warns when a tuned model started elsewhere.

    Raises:
        FileNotFoundError: a folder without ``config.json``.
    """
    entries, used = [], set()
    for role, path in [("base", base), *(("tuned", t) for t in tuned)]:
        if not (Path(path) / "config.json").is_file():
            hint = "python train.py configs/quickstart.json" if role == "base" else "python train_rl.py configs/rl-quickstart.json"
            raise FileNotFoundError(f"--{role} {path}: no config.json there; train it first ({hint})")
        label = Path(path).resolve().name
        while label in used:
            label += "'"
        used.add(label)
        facts = rl_facts(path) if role == "tuned" else {}
        start = facts.get("model_name_or_path")
        if start and Path(start).resolve() != Path(base).resolve():
            print(f"[rl_gain] warning: {path} was RL-tuned from {start}, not from --base {base}", flush=True)
        entries.append(ModelEntry(label, str(path), role, facts))
    return entries


def reward_name(entry: ModelEntry) -> str:
    """The table's name for how a model was trained."""
    if entry.role == "base":
        return "SFT (train.py)"
    reward = entry.facts.get("reward")
    if not reward:
        return "RL (reward unknown)"
    settings = [f"{name} {entry.facts[key]:g}" for key, name in (("failure_penalty", "penalty"), ("temperature", "T"))
                if isinstance(entry.facts.get(key), int | float)]  # fmt: skip
    return ", ".join([f"RL, {reward} reward", *settings])


# ------------------------------------------------------------------------------------------------ saved pieces
class Pieces:
    """Finished measurements as JSON files, each with the settings it was measured under; reused when they match."""

    def __init__(self, out: Path, fresh: bool) -> None:
        self.dir = out / "pieces"
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def cache(self, name: str) -> Path:
        """A JSONL cache of scored pairs (``evaluate_programs``' ``cache_path``), removed with ``--fresh``."""
        return self.dir / f"{name}.jsonl"

    def get(self, name: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """The saved piece ``name`` when it was measured under ``key``, else None."""
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.get("key") != json.loads(json.dumps(key, default=str)):
            return None
        print(f"[rl_gain] reusing {path} (same settings; --fresh redoes it)", flush=True)
        return saved["data"]

    def put(self, name: str, key: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Save the piece ``name`` measured under ``key``; return ``data``."""
        path = self.dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "data": data}, indent=1, default=str), encoding="utf-8")
        tmp.replace(path)  # a kill mid-write leaves the previous piece, never half a file
        return data

    def get_or_make(self, name: str, key: dict[str, Any], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The saved piece, or ``make()`` saved under ``key``."""
        found = self.get(name, key)
        return found if found is not None else self.put(name, key, make())


# ------------------------------------------------------------------------------------------------ synthetic part
@dataclass
class SyntheticTask:
    """The held-out parts of ``train.py``'s test phase, and how that phase generates and scores them."""

    config: str
    dataset: str
    ids: list[str]
    images: list[Any]
    references: list[str]
    candidates: list[str]
    select_references: list[str]
    max_new_tokens: int
    batch_size: int
    bf16: bool
    protocol: str
    timeout: float

    def key(self) -> dict[str, Any]:
        """What a synthetic piece depends on besides the model."""
        return {"config": self.config, "dataset": self.dataset, "parts": len(self.ids),
                "references": hashlib.sha256("\0".join(self.references).encode()).hexdigest()[:16],
                "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "bf16": self.bf16,
                "protocol": self.protocol}  # fmt: skip


def synthetic_task(args: argparse.Namespace, base: ModelEntry, device: str) -> SyntheticTask:
    """Rebuild ``train.py``'s test selection for ``--config`` with the base model's processor.

    Raises:
        FileNotFoundError: the config's dataset is not there (``train.py`` builds it; this script does not).
        ValueError: the config scores no test parts.
    """
    from cadcoder import recipe
    from cadcoder.data import decode_image
    from cadcoder.inference import load_model

    argv = [str(args.config)] + (["--test_samples", str(args.synthetic_parts)] if args.synthetic_parts else [])
    _, dargs, targs, _ = recipe.parse_options(argv)
    if dargs.synth_num > 0 and not (Path(dargs.dataset) / "dataset_dict.json").exists():
        raise FileNotFoundError(f"dataset {dargs.dataset} of {args.config} is not built; `python train.py {args.config}` "
                                "builds it (and trains the base model), or pass --config with another dataset")
    splits = recipe.load_splits(dargs, targs)
    if dargs.test_samples <= 0 or dargs.test_split not in splits.data:
        raise ValueError(f"{args.config} scores no test parts (test_samples {dargs.test_samples}, split "
                         f"{dargs.test_split!r}); pass --synthetic-parts N or --skip-synthetic")
    model, processor = load_model(base.path, device=device)
    fit = recipe.fit_lengths(model, processor, splits, dargs, targs)  # the generation length train.py used
    del model
    test = recipe.held_out_subset(splits.data, dargs.test_split, dargs.test_samples)
    return SyntheticTask(
        config=str(args.config), dataset=str(dargs.dataset), ids=[f"{dargs.test_split}[{i}]" for i in range(len(test))],
        images=[decode_image(v) for v in test["image"]], references=list(test["cadquery"]),
        candidates=recipe.constant_candidates(fit.train, dargs.constant_candidates, targs.seed),
        select_references=recipe.select_references(splits.eval), max_new_tokens=fit.max_new_tokens,
        batch_size=dargs.generate_batch_size, bf16=targs.bf16 if args.bf16 is None else args.bf16,
        protocol=dargs.eval_protocol, timeout=dargs.eval_timeout,
    )  # fmt: skip


def synthetic_baselines(task: SyntheticTask, box: Any, pieces: Pieces) -> dict[str, Any]:
    """The constant program of ``train.py``'s test phase: chosen on validation references, scored on the test parts."""
    from cadcoder.evaluation import best_constant_program

    def make() -> dict[str, Any]:
        constant = best_constant_program(task.candidates, task.select_references, task.references,
                                         protocol=task.protocol, progress=False, sandbox=box,
                                         cache_path=pieces.cache("synthetic_scores"))  # fmt: skip
        return {"constant": {**constant, "candidates": len(task.candidates), "select_references": len(task.select_references)}}

    return pieces.get_or_make("synthetic-baselines", task.key(), make)


def synthetic_predictions(entry: ModelEntry, task: SyntheticTask, device: str, pieces: Pieces,
                          fingerprint: str) -> dict[str, Any]:
    """Greedy programs of one model for the test images, as ``train.py``'s test phase decodes them."""
    import torch

    from cadcoder.inference import load_model
    from cadcoder.training import generate_programs

    def make() -> dict[str, Any]:
        model, processor = load_model(entry.path, device=device)
        kind = torch.device(device).type
        autocast = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if task.bf16 else None
        print(f"[rl_gain] synthetic: {entry.label} generating {len(task.images)} greedy programs "
              f"(max {task.max_new_tokens} new tokens, bf16 {task.bf16})", flush=True)
        t0 = time.perf_counter()
        programs = generate_programs(model, processor, task.images, max_new_tokens=task.max_new_tokens,
                                     batch_size=task.batch_size, autocast=autocast)  # fmt: skip
        return {"programs": programs, "generate_seconds": round(time.perf_counter() - t0, 1)}

    return pieces.get_or_make(f"synthetic-predictions-{entry.label}", {**task.key(), "model": fingerprint}, make)


def synthetic_row(entry: ModelEntry, task: SyntheticTask, device: str, box: Any, pieces: Pieces, out: Path) -> dict[str, Any]:
    """One model on the synthetic test parts: greedy programs scored with the chance level (saved as it finishes)."""
    from cadcoder import recipe
    from cadcoder.evaluation import distinct_share, evaluate_programs

    fingerprint = weights_fingerprint(entry.path)
    preds = synthetic_predictions(entry, task, device, pieces, fingerprint)
    programs = preds["programs"]
    (out / entry.label).mkdir(parents=True, exist_ok=True)
    recipe.write_predictions(out / entry.label / "synthetic_predictions.jsonl", programs, task.references)

    def make() -> dict[str, Any]:
        t0 = time.perf_counter()
        report = evaluate_programs(programs, task.references, protocol=task.protocol, with_chance=True,
                                   progress=False, sandbox=box, cache_path=pieces.cache("synthetic_scores"))  # fmt: skip
        ref_failed = set(report["reference_failures"]["indices"])
        return {
            "valid_syntax_rate": report["valid_syntax_rate"], "iou_mean": report["iou_mean"],
            "iou_mean_all": report["iou_mean_all"], "iou_chance": report.get("iou_chance"),
            "distinct_predictions": distinct_share(programs),
            "failures": {k: v for k, v in report["failures"].items() if v},
            "reference_failures": len(ref_failed), "generate_seconds": preds["generate_seconds"],
            "score_seconds": round(time.perf_counter() - t0, 1),
            "per_part": [{"id": i, "status": s, "iou": iou} for n, (i, s, iou) in
                         enumerate(zip(task.ids, report["statuses"], report["ious"])) if n not in ref_failed],
        }  # fmt: skip

    row = pieces.get_or_make(f"synthetic-scores-{entry.label}", {**task.key(), "model": fingerprint}, make)
    print(f"[rl_gain] synthetic: {entry.label}: VSR {fmt(row['valid_syntax_rate'], 2)}, iou_mean_all "
          f"{fmt(row['iou_mean_all'])}, distinct {fmt(row['distinct_predictions'], 2)}", flush=True)
    return {"model": entry.label, **row}


def part_ious(row: dict[str, Any]) -> dict[str, float]:
    """Per-part IoU of a synthetic row, failures counted as 0 (parts whose reference failed are left out)."""
    return {p["id"]: float(p["iou"] or 0.0) if p["status"] == "ok" else 0.0 for p in row["per_part"]}


def run_synthetic(args: argparse.Namespace, entries: Sequence[ModelEntry], pieces: Pieces) -> dict[str, Any]:
    """The synthetic part for every model, with the constant-program baseline."""
    from cadcoder.sandbox import Sandbox

    task = synthetic_task(args, entries[0], args.device)
    print(f"[rl_gain] synthetic: {len(task.ids)} held-out parts of {task.dataset} (protocol {task.protocol})", flush=True)
    with Sandbox(num_workers=args.workers, timeout=task.timeout) as box:
        baselines = synthetic_baselines(task, box, pieces)
        rows = [synthetic_row(e, task, args.device, box, pieces, args.out) for e in entries]
    settings = {k: v for k, v in task.key().items() if k != "references"}
    settings.update({"constant_candidates": len(task.candidates), "select_references": len(task.select_references),
                     "generation": "cadcoder.training.generate_programs (greedy), as train.py's test phase"})
    return {"settings": settings, "baselines": baselines, "rows": rows, "train_py_test": train_py_test(entries[0].path)}


def train_py_test(folder: str) -> dict[str, Any] | None:
    """What ``train.py``'s own test phase reported for a model (``test_results.json``), to check the reproduction."""
    path = Path(folder) / "test_results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    return {k: res.get(f"test_{k}") for k in ("samples", "valid_syntax_rate", "iou_mean_all", "distinct_predictions",
                                              "constant_iou_mean_all", "iou_chance")}  # fmt: skip


def reproduction_note(synthetic: dict[str, Any]) -> str:
    """One line comparing the base row with what ``train.py``'s test phase reported for the same model."""
    t, r = synthetic.get("train_py_test"), synthetic["rows"][0]
    if not t:
        return "The base model's folder holds no test_results.json to compare this reproduction with."
    return (f"train.py's own test phase reported for `{r['model']}` on {t['samples']} parts: VSR {fmt(t['valid_syntax_rate'], 2)}, "
            f"iou_mean_all {fmt(t['iou_mean_all'])}, distinct {fmt(t['distinct_predictions'], 2)}, constant program "
            f"{fmt(t['constant_iou_mean_all'])}, chance {fmt(t['iou_chance'])} (test_results.json).")


# ------------------------------------------------------------------------------------------------ real part
def strategy_label(strategy: str, k: int) -> str:
    """``greedy``, ``first_valid@8``, ``render_compare@8``."""
    return strategy if strategy == "greedy" else f"{strategy}@{k}"


@dataclass
class RealTask:
    """The real pairs under test and the settings every strategy run shares."""

    ids: list[str]
    images: list[Any]
    references: list[str]
    sample_key: dict[str, Any]
    run_key: dict[str, Any]


def real_task(args: argparse.Namespace) -> RealTask:
    """The first ``--real-images`` pairs of the real sample (all 34 by default)."""
    from cadcoder.real_sample import load_sample

    records = load_sample(args.sample)[: args.real_images or None]
    ids = [r["deepcad_id"] for r in records]
    sample_key = {"sample": str(args.sample), "ids": ids, "protocol": "aligned"}
    run_key = {**sample_key, "seed": args.seed, "max_new_tokens": args.real_max_new_tokens, "batch_size": args.batch_size}
    return RealTask(ids, [r["image"] for r in records], [r["cadquery"] for r in records], sample_key, run_key)


def real_rows(entry: ModelEntry, task: RealTask, args: argparse.Namespace, box: Any, pieces: Pieces) -> list[dict[str, Any]]:
    """One model with every strategy on the real images; each strategy is saved as it finishes."""
    from cadcoder.inference import load_model
    from cadcoder.transfer import transfer_runs

    fingerprint = weights_fingerprint(entry.path)
    plan = [(s, 1 if s == "greedy" else args.real_candidates, strategy_label(s, args.real_candidates)) for s in REAL_STRATEGIES]
    keys = {label: {**task.run_key, "k": k, "model": fingerprint} for _, k, label in plan}
    found = {label: pieces.get(f"real-{entry.label}-{label}", keys[label]) for _, _, label in plan}
    model = processor = None
    if any(row is None for row in found.values()):
        model, processor = load_model(entry.path, device=args.device)
    rows = []
    for strategy, k, label in plan:
        row = found[label]
        if row is None:
            print(f"[rl_gain] real: {entry.label} / {label}", flush=True)
            row = transfer_runs(model, processor, task.images, task.references, [strategy], k, box, ids=task.ids,
                                protocol="aligned", seed=args.seed, batch_size=args.batch_size,
                                max_new_tokens=args.real_max_new_tokens, cache_path=pieces.cache("real_scores"),
                                progress=True)[0]  # fmt: skip
            pieces.put(f"real-{entry.label}-{label}", keys[label], row)
        rows.append({"model": entry.label, "label": label, **row})
    return rows


def run_real(args: argparse.Namespace, entries: Sequence[ModelEntry], pieces: Pieces) -> dict[str, Any]:
    """The real part: every model with every strategy on the real sample, beside constant program and chance."""
    from cadcoder.sandbox import Sandbox
    from cadcoder.transfer import transfer_baselines

    task = real_task(args)
    print(f"[rl_gain] real: {len(task.ids)} real GenCAD-Code test pairs from {args.sample} (measurement only)", flush=True)
    with Sandbox(num_workers=args.workers, timeout=args.real_timeout) as box:
        baselines = pieces.get_or_make("real-baselines", task.sample_key, lambda: transfer_baselines(
            task.references, box, protocol="aligned", cache_path=pieces.cache("real_scores"), progress=False))
        rows = [row for entry in entries for row in real_rows(entry, task, args, box, pieces)]
    return {"settings": {**task.run_key, "images": len(task.ids), "num_candidates": args.real_candidates},
            "baselines": baselines, "rows": rows}


# ------------------------------------------------------------------------------------------------ comparisons
def interval(d: dict[str, float] | None) -> str:
    """``+0.012 [-0.010, +0.034]`` for a paired difference, ``-`` for none."""
    return "-" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def compare(row: dict[str, Any], against: dict[str, Any] | None,
            ious: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, float] | None:
    """The paired difference of ``row`` to ``against`` (None without another row to compare with)."""
    return None if against is None or row is against else paired_difference(ious(row), ious(against))


def gap_closed(base_greedy: float | None, base_rc: float | None, tuned_greedy: float | None) -> float | None:
    """Share of the base model's greedy-to-render_compare gap closed by the tuned greedy (None: no gap to close)."""
    if None in (base_greedy, base_rc, tuned_greedy) or base_rc - base_greedy <= 0:
        return None
    return (tuned_greedy - base_greedy) / (base_rc - base_greedy)


def find_row(rows: Sequence[dict[str, Any]], model: str | None, label: str | None = None) -> dict[str, Any] | None:
    """The row of ``model`` (and strategy ``label``, for real rows), or None."""
    return next((r for r in rows if r["model"] == model and r.get("label") == label), None)


def add_paired_differences(entries: Sequence[ModelEntry], synthetic: dict[str, Any] | None,
                           real: dict[str, Any] | None) -> None:
    """Give every row its paired difference to the base model and to the first tuned one (same strategy)."""
    base, first = entries[0].label, (entries[1].label if len(entries) > 1 else None)
    for part, ious in ((synthetic, part_ious), (real, per_image_ious)):
        for r in (part or {}).get("rows", []):
            r["vs_base"] = compare(r, find_row(part["rows"], base, r.get("label")), ious)
            r["vs_first_tuned"] = None if r["model"] == base else compare(r, find_row(part["rows"], first, r.get("label")), ious)


def verdict(entry: ModelEntry, base: str, synthetic: dict[str, Any] | None, real: dict[str, Any] | None) -> dict[str, Any]:
    """One tuned model against :data:`GOALS` (after :func:`add_paired_differences`)."""
    v: dict[str, Any] = {"model": entry.label, "reward": reward_name(entry)}
    if synthetic:
        row = find_row(synthetic["rows"], entry.label)
        vsr, gain = row["valid_syntax_rate"], row["vs_base"]
        v.update({"synthetic_greedy_vsr": vsr, "synthetic_iou_gain": gain,
                  "synthetic_vsr_met": bool(vsr is not None and vsr >= GOALS["synthetic_greedy_vsr"]),
                  "synthetic_iou_gain_met": bool(gain and gain["mean"] >= GOALS["synthetic_greedy_iou_gain"]
                                                 and gain["low"] > 0)})
    if real:
        rc = strategy_label("render_compare", real["settings"]["num_candidates"])
        pairs = ((base, "greedy"), (base, rc), (entry.label, "greedy"))
        bg, brc, tg = (find_row(real["rows"], m, lab)["iou_mean_all"] for m, lab in pairs)
        closed = gap_closed(bg, brc, tg)
        v.update({"real_base_greedy": bg, "real_base_render_compare": brc, "real_tuned_greedy": tg, "real_gap_closed": closed,
                  "real_gap_closed_met": bool(closed is not None and closed >= GOALS["real_gap_closed"])})
    return v


def add_comparisons(entries: Sequence[ModelEntry], synthetic: dict[str, Any] | None,
                    real: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Paired differences in place (:func:`add_paired_differences`); the goal verdict of every tuned model."""
    add_paired_differences(entries, synthetic, real)
    return [verdict(e, entries[0].label, synthetic, real) for e in entries[1:]]


# ------------------------------------------------------------------------------------------------ tables
def failures_cell(failures: dict[str, int]) -> str:
    """``runtime_error 4, no_solid 1`` or ``none``."""
    return ", ".join(f"{k} {v}" for k, v in failures.items()) or "none"


def synthetic_table(entries: Sequence[ModelEntry], synthetic: dict[str, Any]) -> str:
    """Markdown: greedy VSR, IoU and distinct share of every model on the synthetic parts, then the baselines."""
    kinds = {e.label: reward_name(e) for e in entries}
    lines = [("| model | training | VSR | iou_mean | iou_mean_all | vs SFT, paired [95% CI] | vs first RL model [95% CI] | "
              "distinct | failures | generate s |"), "|---|---|---:|---:|---:|---|---|---:|---|---:|"]
    for r in synthetic["rows"]:
        lines.append(f"| {r['model']} | {kinds[r['model']]} | {fmt(r['valid_syntax_rate'], 2)} | {fmt(r['iou_mean'])} | "
                     f"**{fmt(r['iou_mean_all'])}** | {interval(r['vs_base'])} | {interval(r['vs_first_tuned'])} | "
                     f"{fmt(r['distinct_predictions'], 2)} | {failures_cell(r['failures'])} | {fmt(r['generate_seconds'], 1)} |")
    c = synthetic["baselines"]["constant"]
    lines.append(f"| constant program (best of {c['candidates']}, chosen on {c['select_references']} validation parts) | - | "
                 f"{fmt(c['valid_syntax_rate'], 2)} | - | {fmt(c['iou_mean_all'])} | | | - | | |")
    chance = synthetic["rows"][0].get("iou_chance")
    lines.append(f"| chance (reference vs another reference) | - | - | - | {fmt(chance)} | | | - | | |")
    return "\n".join(lines)


def real_table(entries: Sequence[ModelEntry], real: dict[str, Any]) -> str:
    """Markdown: every model and strategy on the real images, then the constant program and chance."""
    kinds = {e.label: reward_name(e) for e in entries}
    lines = [("| model | training | strategy | VSR | iou_mean_all | vs SFT, paired [95% CI] | vs first RL model [95% CI] | "
              "distinct | failures | s / image |"), "|---|---|---|---:|---:|---|---|---:|---|---:|"]
    for r in real["rows"]:
        lines.append(f"| {r['model']} | {kinds[r['model']]} | {r['label']} | {fmt(r['valid_syntax_rate'], 2)} | "
                     f"**{fmt(r['iou_mean_all'])}** | {interval(r['vs_base'])} | {interval(r['vs_first_tuned'])} | "
                     f"{fmt(r['distinct_predictions'], 2)} | {failures_cell(r['failures'])} | {fmt(r['seconds_per_image'], 2)} |")
    c = real["baselines"]["constant"]
    lines.append(f"| constant program | - | - | {fmt(c['valid_syntax_rate'], 2)} | {fmt(c['iou_mean_all'])} | | | "
                 f"{fmt(c['distinct_predictions'], 2)} | | |")
    lines.append(f"| chance (reference vs another reference) | - | - | - | {fmt(real['baselines']['iou_chance'])} | | | | | |")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def goals_table(verdicts: Sequence[dict[str, Any]], real: dict[str, Any] | None) -> str:
    """Markdown: each tuned model against the three goals, MET / NOT MET with the measured value."""
    k = real["settings"]["num_candidates"] if real else 8
    lines = [(f"| model | training | synthetic greedy VSR >= {GOALS['synthetic_greedy_vsr']} | synthetic greedy iou_mean_all "
              f">= SFT + {GOALS['synthetic_greedy_iou_gain']}, CI above 0 | real greedy closes >= {GOALS['real_gap_closed']:.0%} "
              f"of SFT's gap to render_compare@{k} |"), "|---|---|---|---|---|"]
    for v in verdicts:
        vsr = f"{fmt(v['synthetic_greedy_vsr'], 2)} {_met(v['synthetic_vsr_met'])}" if "synthetic_greedy_vsr" in v else "not run"
        gain = f"{interval(v['synthetic_iou_gain'])} {_met(v['synthetic_iou_gain_met'])}" if "synthetic_iou_gain" in v else "not run"
        if "real_gap_closed" not in v:
            gap = "not run"
        elif v["real_gap_closed"] is None:
            gap = (f"no gap: SFT greedy {fmt(v['real_base_greedy'])} >= render_compare {fmt(v['real_base_render_compare'])}")
        else:
            gap = (f"{v['real_gap_closed']:.0%} ({fmt(v['real_base_greedy'])} -> {fmt(v['real_tuned_greedy'])} of "
                   f"{fmt(v['real_base_render_compare'])}) {_met(v['real_gap_closed_met'])}")
        lines.append(f"| {v['model']} | {v['reward']} | {vsr} | {gain} | {gap} |")
    return "\n".join(lines)


def models_list(entries: Sequence[ModelEntry]) -> str:
    """Markdown list: each model's folder and, for tuned ones, what their RL run says."""
    lines = []
    for e in entries:
        f = e.facts
        extra = "" if e.role == "base" else (
            f": from `{f.get('model_name_or_path', '?')}`, {f.get('steps', '?')} steps in {fmt(f.get('train_seconds'), 0)} s, "
            f"lr {f.get('learning_rate', '?')}, KL {f.get('kl_coef', '?')}, K={f.get('group_size', '?')}, "
            f"{f.get('prompts_per_step', '?')} images/step")  # fmt: skip
        lines.append(f"- `{e.label}` = `{e.path}`, {reward_name(e)}{extra}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="outputs/quickstart", help="the starting (SFT) checkpoint")
    parser.add_argument("--tuned", nargs="+", required=True, help="RL-tuned checkpoints, each compared with --base "
                        "(and those after the first with the first)")
    parser.add_argument("--out", type=Path, default=common.REPO / "outputs" / "benchmarks" / "rl_gain")
    parser.add_argument("--fresh", action="store_true", help="redo every piece instead of reusing saved ones")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    syn = parser.add_argument_group("synthetic part")
    syn.add_argument("--config", type=Path, default=common.REPO / "configs" / "quickstart.json",
                     help="the train.py config whose test phase is reproduced (dataset, test_samples, protocol, ...)")
    syn.add_argument("--synthetic-parts", type=int, default=None, help="held-out parts (default: the config's test_samples)")
    syn.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast while decoding (default: the config's bf16, as train.py's test phase)")
    syn.add_argument("--skip-synthetic", action="store_true")
    real = parser.add_argument_group("real part")
    common.add_sample_argument(real)
    real.add_argument("--real-images", type=int, default=None, help="use the first N real pairs (default: all 34)")
    real.add_argument("--real-candidates", type=int, default=8, help="K of first_valid@K and render_compare@K")
    real.add_argument("--real-max-new-tokens", type=int, default=640, help="generation cap (as real_sample.py --part transfer)")
    real.add_argument("--real-timeout", type=float, default=30.0, help="sandbox seconds per program")
    real.add_argument("--batch-size", type=int, default=8, help="images per generate call on the real images")
    real.add_argument("--seed", type=int, default=0, help="sampling seed of first_valid / render_compare")
    real.add_argument("--skip-real", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure base and tuned models on both parts, compare them, write and print the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.real_candidates < 2:
        parser.error("--real-candidates must be >= 2 (the sampling strategies need candidates to choose among)")
    if args.skip_real and args.skip_synthetic:
        parser.error("--skip-real and --skip-synthetic together leave nothing to measure")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    command = "python benchmarks/rl_gain.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    entries = model_entries(args.base, args.tuned)
    args.out.mkdir(parents=True, exist_ok=True)
    pieces = Pieces(args.out, args.fresh)
    machine, commit, started = machine_summary(), short_commit(), time.perf_counter()
    print(f"[rl_gain] {command}\n[rl_gain] commit {commit}; {machine}", flush=True)

    synthetic = None if args.skip_synthetic else run_synthetic(args, entries, pieces)
    real = None if args.skip_real else run_real(args, entries, pieces)
    verdicts = add_comparisons(entries, synthetic, real)

    sections = [(f"# Before and after RL\n\nCommand: `{command}`\n\nCommit `{commit}`, {machine}, device {args.device}; "
                 f"{time.perf_counter() - started:.0f} s wall (reused pieces take none).\n\n{models_list(entries)}")]
    if synthetic:
        s = synthetic["settings"]
        sections.append(f"## Synthetic: {s['parts']} held-out parts of `{s['dataset']}` (`{s['config']}`'s test phase, "
                        f"protocol `{s['protocol']}`, greedy, max {s['max_new_tokens']} new tokens, bf16 {s['bf16']})\n\n"
                        + synthetic_table(entries, synthetic) + "\n\n" + reproduction_note(synthetic))  # fmt: skip
    if real:
        s = real["settings"]
        sections.append(f"## Real: {s['images']} GenCAD-Code test images (measurement only; `aligned`, seed {s['seed']}, "
                        f"max {s['max_new_tokens']} new tokens)\n\n" + real_table(entries, real))
    if verdicts:
        sections.append("## Goals\n\n" + goals_table(verdicts, real))
    markdown = "\n\n".join(sections) + "\n"
    report = {"command": command, "commit": commit, "machine": machine_info(), "device": args.device,
              "settings": {k: str(v) for k, v in vars(args).items()}, "goals": GOALS,
              "models": [vars(e) for e in entries], "synthetic": synthetic, "real": real, "verdicts": verdicts,
              "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    path = common.write_report(args.out, "rl_gain", report, markdown=markdown)
    print("\n" + markdown + f"\nwrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
