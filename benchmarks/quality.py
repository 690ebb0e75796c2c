"""Baseline vs enhanced, answered with measurements.

Trains and evaluates, on the same synthetic train / validation / test split and with the same number of
optimizer steps, batch size, learning-rate schedule and seed, these CadCoder variants (every decoder tiny
and randomly initialised; the vision encoder is a randomly initialised ResNet18 too: no Hub access here):

=================  ===============  ===========  =========================  =================
variant            visual tokens    decoder      encoder                    program numbers
=================  ===============  ===========  =========================  =================
baseline      pooled (1)       GPT-2 arch   frozen                     as in the data
enhanced      pooled (1)       CodeGen      frozen                     as in the data
plus_grid          grid (HxW/32^2)  CodeGen      frozen                     as in the data
plus_joint         pooled (1)       CodeGen      trained jointly            as in the data
plus_canonical     pooled (1)       CodeGen      frozen                     canonical format
ours               grid             CodeGen      trained jointly            canonical format
=================  ===============  ===========  =========================  =================

``baseline`` and ``enhanced`` reproduce the two models of the brief; ``plus_*`` add each of our changes on its own to
the enhanced model (the ablation); ``ours`` has all three (the variants and presets are in
``cadcoder.quality_variants``). Training runs ``train.py``'s own named steps (``cadcoder.recipe``), on one JSON
config per variant written next to its results, so ``python train.py <that config>`` reruns one variant;
the test set is selected, generated for and scored by the same steps as train.py's test phase, through the
sandbox (``cadcoder.evaluation``). Nothing here re-implements either.

Every table carries the two floors a model must clear: ``iou_chance`` (each test reference scored
against another reference) and the constant program (the best fixed program among the default one and a
few training programs, chosen on validation references, predicted for every test image), plus the
share of distinct programs each model writes: a collapsed model that emits a few valid templates
otherwise looks like progress.

Reported per variant: VSR, ``iou_mean`` (valid predictions), ``iou_mean_all`` (failures count 0) and
``chamfer_median`` under the ``aligned`` protocol; ``iou_mean_all`` under the challenge's ``mecagent``
protocol for comparison; failure reasons; distinct share; token lengths; training wall time (optimizer
steps only, and with the in-training evaluations). The learning curve (validation ``iou_mean_all`` and
training loss against step) is drawn to PNG.

Usage::

    python benchmarks/quality.py --preset smoke          # tests: a few minutes, numbers meaningless
    python benchmarks/quality.py --preset full           # ~10 min a variant on 2 quiet CPU cores, the README table
    python benchmarks/quality.py --preset full --variants baseline,ours
    python benchmarks/quality.py --preset gpu            # real sizes (448 px, codegen-350M shape); a GPU
    python benchmarks/quality.py --preset full --set max_steps=600 --set n_layer=6   # any train.py option

Outputs (default ``outputs/quality/<preset>/``): ``results.json``, ``results.md`` (tables),
``learning_curve.png``, and per variant a folder with the train config, the trained model, its
``trainer_state.json`` (log history), ``test_predictions.jsonl`` and ``quality.json``. A rerun with the
same settings reuses finished variants (``--force`` retrains); the synthetic dataset is cached.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the offline switches above)
from transformers import AutoTokenizer, set_seed  # noqa: E402

from cadcoder import recipe  # noqa: E402
from cadcoder.data import canonicalize_numbers, decode_image, load_cad_dataset  # noqa: E402
from cadcoder.evaluation import best_constant_program, evaluate_programs, execution_metrics  # noqa: E402
from cadcoder.inference import load_model  # noqa: E402
from cadcoder.model_card import write_model_card  # noqa: E402
from cadcoder.provenance import git_commit, machine_info  # noqa: E402
from cadcoder.quality_variants import (  # noqa: E402
    PRESETS,
    VARIANTS,
    VARIANTS_BY_NAME,
    Variant,
    resolve_settings,
    select_variants,
    settings_key,
    train_config,
)
from cadcoder.sandbox import Sandbox  # noqa: E402
from cadcoder.synth import build_synthetic_mix  # noqa: E402
from cadcoder.training import config_snapshot, generate_programs  # noqa: E402
from configuration_cadcoder import CadCoderConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # default output and dataset folders live in the checkout


def _abs_dataset(settings: dict[str, Any]) -> dict[str, Any]:
    path = Path(settings["dataset"])
    if not path.is_absolute() and not path.exists() and (REPO / path).parent.exists():
        settings = {**settings, "dataset": str(REPO / path)}
    return settings


# --------------------------------------------------------------------------------------------------
# Data and baselines
# --------------------------------------------------------------------------------------------------
def ensure_dataset(settings: dict[str, Any]) -> tuple[Any, float]:
    """Build the synthetic set if its folder is missing (cached afterwards); return it and the build seconds."""
    path = Path(settings["dataset"])
    seconds = 0.0
    if not (path / "dataset_dict.json").exists():
        if settings.get("synth_num", 0) <= 0:
            raise FileNotFoundError(f"dataset {path} does not exist; build it with `cadcoder synth` or set synth_num")
        print(f"[quality] generating {settings['synth_num']} synthetic pairs into {path} (cached for later runs)", flush=True)
        t0 = time.perf_counter()
        build_synthetic_mix(settings["synth_num"], path, settings["synth_complexity"], seed=settings["synth_seed"],
                            workers=settings["synth_workers"], image_size=settings["synth_image_size"], progress=False)
        seconds = time.perf_counter() - t0
    return load_cad_dataset(str(path)), seconds


def test_references(data: Any, settings: dict[str, Any]) -> list[str]:
    """The test programs every variant is scored on (train.py's test selection)."""
    return list(recipe.held_out_subset(data, "test", settings["bench_test_samples"])["cadquery"])


def score_baselines(data: Any, refs: list[str], settings: dict[str, Any], sandbox: Any) -> dict[str, Any]:
    """Chance level and the constant-program baseline under the aligned and mecagent protocols.

    The constant program is chosen among the default program and ``bench_constant_candidates`` training
    programs on the first ``bench_select_references`` validation references (aligned IoU), then scored on the
    test references under both protocols. ``iou_chance`` scores each test reference against another one (a
    seeded derangement, ``evaluate_programs(with_chance=True)``). Under ``aligned`` the chance pass also scores
    every reference against itself, which must give 1.0 (reported as ``reference_self_iou``: a check of the
    metric); under ``mecagent`` that check runs on the first ``bench_self_check_samples`` references only, and
    everything is scored on the first ``bench_mecagent_samples`` test parts (its voxelisation is the slow part).
    """
    candidates = recipe.constant_candidates(data["train"], settings["bench_constant_candidates"], settings["seed"])
    select = recipe.select_references(data["validation"], settings["bench_select_references"])
    out: dict[str, Any] = {"constant_candidates": len(candidates), "select_references": len(select)}

    t0 = time.perf_counter()
    ev = dict(timeout=settings["eval_timeout"], progress=False, sandbox=sandbox)
    chance = evaluate_programs(refs, refs, protocol="aligned", with_chance=True, **ev)
    constant = best_constant_program(candidates, select, refs, protocol="aligned", **ev)
    out["aligned"] = {
        "iou_chance": chance.get("iou_chance"),
        "reference_self_iou": chance.get("iou_mean"),
        "reference_failures": chance["reference_failures"]["count"],
        "constant_iou_mean_all": constant["iou_mean_all"],
        "constant_valid_syntax_rate": constant["valid_syntax_rate"],
        "constant_program": constant["program"],
        "samples": len(refs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    t0 = time.perf_counter()
    meca_refs = refs[: settings.get("bench_mecagent_samples", len(refs))]
    n_self = min(len(meca_refs), settings.get("bench_self_check_samples", len(meca_refs)))
    meca = evaluate_programs([constant["program"]] * len(meca_refs), meca_refs, protocol="mecagent",
                             with_chance=True, chamfer_points=0, **ev)
    self_check = evaluate_programs(meca_refs[:n_self], meca_refs[:n_self], protocol="mecagent", chamfer_points=0, **ev)
    out["mecagent"] = {
        "iou_chance": meca.get("iou_chance"),
        "reference_self_iou": self_check.get("iou_mean"),
        "reference_self_iou_samples": n_self,
        "constant_iou_mean_all": meca["iou_mean_all"],
        "constant_valid_syntax_rate": meca["valid_syntax_rate"],
        "samples": len(meca_refs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out


# --------------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------------
def train_variant(config_path: Path) -> dict[str, Any]:
    """train.py's steps on one variant's config, up to the trained, saved model and its card.

    Its config sets ``test_samples`` to 0: the benchmark scores the test set itself, on one shared sandbox.
    """
    margs, dargs, targs, stages = recipe.parse_options([str(config_path)])
    set_seed(targs.seed)
    splits = recipe.load_splits(dargs, targs)
    train_programs = [recipe.program_text(c, dargs) for c in splits.train["cadquery"]]
    model, processor = recipe.build_model_and_processor(margs, dargs, targs, train_programs)
    fit = recipe.fit_lengths(model, processor, splits, dargs, targs)
    trainer = recipe.build_trainer(model, processor, fit, splits, stages, margs, dargs, targs)
    snapshot, card = config_snapshot(margs, dargs, targs), recipe.card_options(margs, dargs, targs)
    recipe.save_hub_folder(trainer, snapshot, card)
    results = recipe.train(trainer)
    write_model_card(targs.output_dir, config=snapshot, results=results, **card)
    return results


def learning_curve(log_history: list[dict[str, Any]]) -> dict[str, list]:
    """Validation execution metrics and training loss against step, from a Trainer log history."""
    curve: dict[str, list] = {"eval_step": [], "eval_iou_mean_all": [], "eval_valid_syntax_rate": [],
                              "eval_distinct_predictions": [], "eval_loss": [], "eval_image_gain": [], "train_step": [],
                              "train_loss": []}
    for entry in log_history:
        if "eval_loss" in entry:
            curve["eval_step"].append(entry.get("step"))
            for key in ("eval_iou_mean_all", "eval_valid_syntax_rate", "eval_distinct_predictions", "eval_loss",
                        "eval_image_gain"):
                curve[key].append(entry.get(key))
        elif "loss" in entry:
            curve["train_step"].append(entry.get("step"))
            curve["train_loss"].append(entry.get("loss"))
    return curve


def token_lengths(output_dir: Path, programs: list[str], canonical: bool, decimals: int) -> dict[str, float] | None:
    """Mean / median / max tokens of ``programs`` with the variant's own tokenizer and number format."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    except Exception as err:  # noqa: BLE001 - a missing statistic must not lose a finished training run
        print(f"[quality] token lengths skipped ({type(err).__name__}: {err})", flush=True)
        return None
    texts = [canonicalize_numbers(p, decimals) if canonical else p for p in programs]
    lengths = sorted(len(ids) for ids in tokenizer(texts)["input_ids"])
    return {"mean": round(sum(lengths) / len(lengths), 1), "median": float(lengths[len(lengths) // 2]),
            "max": float(lengths[-1]), "characters_mean": round(sum(map(len, texts)) / len(texts), 1)}


def score_test(vdir: Path, variant: Variant, settings: dict[str, Any], data: Any, sandbox: Any) -> dict[str, Any]:
    """Greedy programs for the test images from the trained model in ``vdir``, scored under both protocols.

    Uses train.py's own test selection, generation length and generation (``cadcoder.recipe``,
    ``cadcoder.training.generate_programs``) and scoring (``cadcoder.evaluation.execution_metrics``) on the
    benchmark's shared sandbox, so the sandbox starts once per benchmark instead of several times per variant.
    """
    use_cpu = settings.get("use_cpu", True) or not torch.cuda.is_available()
    device = "cpu" if use_cpu else "cuda"
    model, processor = load_model(vdir, device=device)
    test = recipe.held_out_subset(data, "test", settings["bench_test_samples"])
    refs = list(test["cadquery"])
    images = [decode_image(v) for v in test["image"]]
    decimals = settings.get("number_decimals", 4)
    train_programs = [canonicalize_numbers(c, decimals) if variant.canonical_numbers else c for c in data["train"]["cadquery"]]
    max_new = recipe.generation_length(processor, train_programs, images[0], settings["max_length"],
                                settings.get("generate_max_new_tokens"))
    # fp32 by default: on CPU, bf16 autocast slows small-batch decoding down (casts around every small matmul).
    bf16 = settings.get("bench_generate_bf16", not use_cpu and settings.get("bf16", False))
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else None  # a fresh context per batch
    t0 = time.perf_counter()
    preds = generate_programs(model, processor, images, max_new_tokens=max_new,
                              batch_size=settings.get("bench_generate_batch_size", settings["generate_batch_size"]),
                              autocast=autocast)
    generate_s = time.perf_counter() - t0
    del model
    gc.collect()
    recipe.write_predictions(vdir / "test_predictions.jsonl", preds, refs)
    ev = dict(timeout=settings["eval_timeout"], progress=False, sandbox=sandbox)
    t1 = time.perf_counter()
    aligned = execution_metrics(preds, refs, protocol="aligned", **ev)
    aligned_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    n_meca = settings.get("bench_mecagent_samples", len(refs))
    meca = execution_metrics(preds[:n_meca], refs[:n_meca], protocol="mecagent", chamfer_points=0, **ev)
    meca_s = time.perf_counter() - t2
    return {"predictions": preds, "references": refs, "aligned": aligned, "mecagent": meca,
            "max_new_tokens": max_new, "generate_s": generate_s, "aligned_s": aligned_s, "mecagent_s": meca_s}


def run_variant(variant: Variant, settings: dict[str, Any], out_dir: Path, data: Any, sandbox: Any,
                force: bool = False) -> dict[str, Any]:
    """Train one variant with train.py, score its test predictions under both protocols; cached by settings."""
    vdir = out_dir / variant.name
    config = train_config(settings, variant, vdir)
    key = settings_key({**config, "bench_test_samples": settings["bench_test_samples"]})
    result_path = vdir / "quality.json"
    if result_path.exists() and not force:
        cached = json.loads(result_path.read_text())
        if cached.get("settings_key") == key:
            print(f"[quality] {variant.name}: reusing {result_path} (same settings; --force retrains)", flush=True)
            return cached
    vdir.mkdir(parents=True, exist_ok=True)
    config_path = vdir / "train_config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    print(f"\n[quality] ===== {variant.name}: {variant.label} =====\n[quality] python train.py {config_path}", flush=True)

    t0 = time.perf_counter()
    train_results = train_variant(config_path)
    train_wall = time.perf_counter() - t0
    gc.collect()
    log_history = json.loads((vdir / "trainer_state.json").read_text()).get("log_history", [])
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in log_history if "eval_loss" in e)
    train_runtime = float(train_results.get("train_runtime_s") or 0.0)
    optimisation = max(0.0, train_runtime - eval_seconds)
    samples = settings["max_steps"] * settings["per_device_train_batch_size"]

    test = score_test(vdir, variant, settings, data, sandbox)
    aligned, meca = test["aligned"], test["mecagent"]
    failures = {k[len("failures_"):]: v for k, v in aligned.items() if k.startswith("failures_")}
    model_config = CadCoderConfig.from_pretrained(str(vdir))
    n_params = None
    try:
        from safetensors import safe_open

        with safe_open(str(vdir / "model.safetensors"), "pt") as fh:
            n_params = sum(math.prod(fh.get_slice(name).get_shape()) for name in fh.keys())
    except Exception:  # noqa: BLE001 - informational only
        pass
    record = {
        "variant": variant.name,
        "label": variant.label,
        "switches": asdict(variant),
        "settings_key": key,
        "parameters": n_params,
        "image_tokens": model_config.num_image_tokens,
        "aligned": {k: aligned.get(k) for k in ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all", "chamfer_median")},
        "mecagent": {**{k: meca.get(k) for k in ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all")},
                     "samples": min(len(test["references"]), settings.get("bench_mecagent_samples", len(test["references"])))},
        "distinct_predictions": aligned.get("distinct_predictions"),
        "image_gain": next((e["eval_image_gain"] for e in reversed(log_history) if "eval_image_gain" in e), None),
        "failures": failures,
        "test_samples": len(test["references"]),
        "train_loss": train_results.get("train_loss"),
        "max_new_tokens": test["max_new_tokens"],
        "timing": {
            "train_runtime_s": round(train_runtime, 3),
            "in_training_eval_s": round(eval_seconds, 3),
            "optimisation_s": round(optimisation, 3),
            "samples_per_s": round(samples / optimisation, 2) if optimisation > 0 else None,
            "train_py_wall_s": round(train_wall, 1),
            "test_generate_s": round(test["generate_s"], 1),
            "test_score_aligned_s": round(test["aligned_s"], 1),
            "test_score_mecagent_s": round(test["mecagent_s"], 1),
        },
        "token_lengths_test": token_lengths(vdir, test["references"], variant.canonical_numbers,
                                            settings.get("number_decimals", 4)),
        "curve": learning_curve(log_history),
        "example_predictions": test["predictions"][:3],
    }
    result_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------
def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_tables(records: list[dict[str, Any]], baselines: dict[str, Any], meta: dict[str, Any]) -> str:
    """The results as markdown: the main table (with the baselines), failure reasons, cost and lengths."""
    s = meta["settings"]
    al, me = baselines["aligned"], baselines["mecagent"]
    n = meta["test_samples"]
    lines = [
        f"Preset `{meta['preset']}`: {n} test parts, {s['max_steps']} optimizer steps x batch "
        f"{s['per_device_train_batch_size']} per variant, images {s['image_size']} px, decoder "
        f"{s['n_layer']}x{s['n_embd']} (random init), lr {s['learning_rate']} {s['lr_scheduler_type']}, "
        f"bf16={bool(s.get('bf16'))}, seed {s['seed']}. Machine: {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores, torch {meta['machine']['torch']}. "
        f"Commit {(meta['git']['commit'] or 'unknown')[:12]}{' (+ uncommitted changes)' if meta['git']['dirty'] else ''}.",
        "",
        "| model | visual tokens | decoder | encoder | numbers | VSR | iou_mean | iou_mean_all | chamfer_median "
        f"| mecagent iou_mean_all ({me.get('samples', n)} parts) | distinct | image gain | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| chance (reference vs another reference) | | | | | | | {_f(al['iou_chance'])} | | {_f(me['iou_chance'])} | | | |",
        f"| constant program (best of {baselines['constant_candidates']}, chosen on validation) | | | | | "
        f"{_f(al['constant_valid_syntax_rate'], 2)} | | {_f(al['constant_iou_mean_all'])} | | "
        f"{_f(me['constant_iou_mean_all'])} | {_f(1 / n if n else None, 2)} | 0 | |",
    ]
    for r in records:
        d = Variant(**r["switches"]).describe()
        a, m = r["aligned"], r["mecagent"]
        lines.append(
            f"| {r['variant']} | {d['visual tokens']} | {d['decoder']} | {d['encoder']} | {d['numbers']} | "
            f"{_f(a['valid_syntax_rate'], 2)} | {_f(a['iou_mean'])} | **{_f(a['iou_mean_all'])}** | "
            f"{_f(a['chamfer_median'], 4)} | {_f(m['iou_mean_all'])} | {_f(r['distinct_predictions'], 2)} | "
            f"{_f(r.get('image_gain'), 4)} | {_f(r['timing']['optimisation_s'], 0)} |"
        )
    lines += [
        "",
        "VSR: share of programs that run to a valid solid. iou_mean: over valid predictions; iou_mean_all: over all "
        "test parts, failures count 0 (the number to compare). chamfer_median: over valid predictions, after the "
        "same alignment. mecagent: the challenge's surface-voxel IoU (its protocol scores a part against itself at "
        f"{_f(me.get('reference_self_iou'))} here, not 1.0), on the first {me.get('samples', n)} test parts. "
        "distinct: share of distinct programs. image gain: validation loss with another part's image minus "
        "the loss with the right one, at the last evaluation (near 0: the model ignores its input). "
        "train s: wall seconds of the optimizer steps (in-training evaluations excluded).",
        "",
    ]
    reasons = sorted({k for r in records for k, v in r["failures"].items() if v})
    if reasons:
        lines += ["Failure reasons of the test predictions (counts):", "",
                  "| model | " + " | ".join(reasons) + " |", "| --- |" + " --- |" * len(reasons)]
        lines += [f"| {r['variant']} | " + " | ".join(str(r["failures"].get(k, 0)) for k in reasons) + " |" for r in records]
        lines.append("")
    lines += ["Cost and lengths:", "",
              "| model | parameters | image tokens | optimisation s | samples/s | in-training eval s | test generation s "
              "| mean test program tokens | mean train loss | final validation loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        t, tl = r["timing"], r.get("token_lengths_test") or {}
        params = f"{r['parameters'] / 1e6:.1f}M" if r.get("parameters") else "n/a"
        lines.append(f"| {r['variant']} | {params} | {_f(r.get('image_tokens'))} | {_f(t['optimisation_s'], 0)} | "
                     f"{_f(t['samples_per_s'], 1)} | {_f(t['in_training_eval_s'], 0)} | {_f(t['test_generate_s'], 1)} | "
                     f"{_f(tl.get('mean'), 0)} | {_f(r.get('train_loss'))} | "
                     f"{_f(next((v for v in reversed(r['curve'].get('eval_loss', [])) if v is not None), None))} |")
    return "\n".join(lines) + "\n"


def plot_learning_curves(records: list[dict[str, Any]], baselines: dict[str, Any], path: Path) -> None:
    """Validation iou_mean_all, validation loss, image gain and training loss against step, one line per variant (PNG).

    Losses are per token of each variant's own tokenizer, so they compare directly only between variants with
    the same number format (raw or canonical); the IoU panel compares every variant.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_iou, ax_vloss, ax_gain, ax_loss) = plt.subplots(1, 4, figsize=(21, 4.5))
    for r in records:
        c = r["curve"]
        style = dict(lw=2.5) if r["variant"] == "ours" else dict(lw=1.4)
        if r["switches"].get("canonical_numbers"):
            style["ls"] = "--"
        pts = [(s, v) for s, v in zip(c["eval_step"], c["eval_iou_mean_all"]) if v is not None]
        if pts:
            ax_iou.plot(*zip(*pts), marker="o", label=r["variant"], **style)
        pts = [(s, v) for s, v in zip(c["eval_step"], c.get("eval_loss", [])) if v is not None]
        if pts:
            ax_vloss.plot(*zip(*pts), marker="o", label=r["variant"], **style)
        pts = [(s, v) for s, v in zip(c["eval_step"], c.get("eval_image_gain", [])) if v is not None]
        if pts:
            ax_gain.plot(*zip(*pts), marker="o", label=r["variant"], **style)
        if c["train_step"]:
            ax_loss.plot(c["train_step"], c["train_loss"], label=r["variant"], **style)
    al = baselines["aligned"]
    if al.get("iou_chance") is not None:
        ax_iou.axhline(al["iou_chance"], color="grey", ls="--", lw=1, label="chance (test)")
    ax_iou.axhline(al["constant_iou_mean_all"], color="black", ls=":", lw=1, label="constant program (test)")
    ax_iou.set(xlabel="optimizer step", ylabel="validation iou_mean_all (aligned)", title="Validation IoU (failures = 0)")
    ax_iou.set_ylim(bottom=0)
    ax_vloss.set(xlabel="optimizer step", ylabel="validation loss per token", title="Validation loss (dashed: canonical numbers)")
    ax_gain.set(xlabel="optimizer step", ylabel="loss(other image) - loss(its image)",
                title="Image gain (0: the model ignores the image)")
    ax_gain.axhline(0.0, color="grey", lw=0.8)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss per token", title="Training loss (dashed: canonical numbers)")
    for ax in (ax_iou, ax_vloss, ax_gain, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(records: list[dict[str, Any]], baselines: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> str:
    """Write results.json, results.md and learning_curve.png for the variants finished so far; return the tables."""
    table = markdown_tables(records, baselines, meta)
    plot_learning_curves(records, baselines, out_dir / "learning_curve.png")
    results = {**meta, "baselines": baselines, "variants": records}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    status = "" if meta.get("complete", True) else "**Partial: not every variant has finished yet.**\n\n"
    (out_dir / "results.md").write_text(f"# CadCoder quality benchmark ({meta['preset']})\n\n{status}{table}\n"
                                        f"![learning curve](learning_curve.png)\n\nReproduce: `{meta['command']}`\n")
    return table


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the results dict that is also written to ``results.json``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                    help="comma list of variants to run (default: all): " + ", ".join(VARIANTS_BY_NAME))
    ap.add_argument("--out", default=None, help="output folder (default: outputs/quality/<preset>)")
    ap.add_argument("--dataset", default=None, help="dataset folder (default: the preset's; generated if missing)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset setting or any train.py option, e.g. --set max_steps=600 (repeatable)")
    ap.add_argument("--force", action="store_true", help="retrain variants that already have results")
    args = ap.parse_args(argv)

    names = select_variants(args.variants)
    settings = resolve_settings(args.preset, args.set)
    if args.dataset:
        settings["dataset"] = args.dataset
    settings = _abs_dataset(settings)
    out_dir = Path(args.out) if args.out else REPO / "outputs" / "quality" / args.preset
    out_dir.mkdir(parents=True, exist_ok=True)

    if settings.get("use_cpu", True):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    started = time.perf_counter()
    machine, git = machine_info(), git_commit(REPO)
    print("[quality] machine: " + json.dumps(machine), flush=True)
    print(f"[quality] git: {git['commit']}{' (dirty working tree)' if git['dirty'] else ''}", flush=True)
    print("[quality] settings: " + json.dumps(settings, sort_keys=True), flush=True)
    print(f"[quality] variants: {', '.join(names)}; output: {out_dir}", flush=True)

    data, synth_seconds = ensure_dataset(settings)
    refs = test_references(data, settings)
    if not refs:
        raise ValueError(f"dataset {settings['dataset']} has an empty test split; generate more pairs (synth_num)")
    split_sizes = {k: len(v) for k, v in data.items()}
    print(f"[quality] dataset {settings['dataset']}: {split_sizes}; scoring {len(refs)} test parts", flush=True)
    meta = {"preset": args.preset, "settings": settings, "machine": machine, "git": git, "test_samples": len(refs),
            "dataset_splits": split_sizes, "synth_seconds": round(synth_seconds, 1),
            "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}

    records: list[dict[str, Any]] = []
    with Sandbox(num_workers=settings["bench_workers"], timeout=settings["eval_timeout"]) as sandbox:
        base_path = out_dir / "baselines.json"
        base_key = hashlib.sha256(json.dumps([refs, {k: v for k, v in settings.items() if k.startswith("bench_")},
                                              settings["seed"], settings["eval_timeout"]], sort_keys=True).encode()).hexdigest()[:16]
        baselines = json.loads(base_path.read_text()) if base_path.exists() else {}
        if baselines.get("key") != base_key or args.force:
            print("[quality] scoring the chance level and the constant-program baseline", flush=True)
            baselines = {"key": base_key, **score_baselines(data, refs, settings, sandbox)}
            base_path.write_text(json.dumps(baselines, indent=2) + "\n")
        for name in names:
            records.append(run_variant(VARIANTS_BY_NAME[name], settings, out_dir, data, sandbox, force=args.force))
            # Rewritten after every variant: a run stopped early still leaves a table of what finished.
            meta.update(complete=len(records) == len(names), total_seconds=round(time.perf_counter() - started, 1))
            table = write_report(records, baselines, meta, out_dir)

    print("\n" + table, flush=True)
    print(f"[quality] wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'learning_curve.png'} "
          f"in {meta['total_seconds'] / 60:.1f} min", flush=True)
    return {**meta, "baselines": baselines, "variants": records}


if __name__ == "__main__":
    main()
