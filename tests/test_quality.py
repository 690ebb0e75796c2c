"""benchmarks/quality.py (run as a script) and cadcoder.quality_variants: the smoke preset end to end (tables, plot, baselines, every variant), caching, bad options.

The smoke run trains six tiny models for a few steps each on 60 generated pairs and scores them through the
sandbox; it takes one to two minutes on 2 cores. Its numbers mean nothing; what is tested is that the
benchmark trains what it claims to train and reports every variant against the chance and constant baselines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cadcoder.quality_variants as q

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality.py"


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(SCRIPT), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    out = root / "out"
    proc = _run("--preset", "smoke", "--out", str(out), "--dataset", str(root / "synth"))
    return {"root": root, "out": out, "stdout": proc.stdout + proc.stderr}


def test_smoke_writes_table_plot_and_json_with_every_variant_and_baselines(smoke):
    out = smoke["out"]
    table = (out / "results.md").read_text()
    for variant in q.VARIANTS:
        assert f"| {variant.name} |" in table, variant.name
    assert "| chance (reference vs another reference) |" in table
    assert "| constant program" in table
    assert "Partial" not in table

    from PIL import Image

    with Image.open(out / "learning_curve.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200

    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["variants"]] == [v.name for v in q.VARIANTS]
    for protocol in ("aligned", "mecagent"):
        base = results["baselines"][protocol]
        assert 0.0 <= base["iou_chance"] <= 1.0
        assert 0.0 <= base["constant_iou_mean_all"] <= 1.0
    # the chance pass scores every reference against itself too: a working metric gives 1.0 there
    assert results["baselines"]["aligned"]["reference_self_iou"] == pytest.approx(1.0, abs=1e-3)
    for r in results["variants"]:
        assert 0.0 <= r["aligned"]["valid_syntax_rate"] <= 1.0
        assert 0.0 <= r["aligned"]["iou_mean_all"] <= 1.0 and 0.0 <= r["mecagent"]["iou_mean_all"] <= 1.0
        assert 0.0 < r["distinct_predictions"] <= 1.0
        assert r["test_samples"] == results["test_samples"] > 0
        assert r["timing"]["optimisation_s"] > 0 and r["timing"]["train_runtime_s"] > 0
        assert r["curve"]["eval_step"] and len(r["curve"]["eval_step"]) == len(r["curve"]["eval_iou_mean_all"])
        preds = (out / r["variant"] / "test_predictions.jsonl").read_text().splitlines()
        assert len(preds) == r["test_samples"]
    # provenance is printed: machine, commit, settings
    assert "[quality] machine:" in smoke["stdout"] and "[quality] git:" in smoke["stdout"]
    assert "[quality] settings:" in smoke["stdout"]


def test_each_variant_trains_the_model_it_claims(smoke):
    """The saved model and train config of each variant carry that variant's switches (not a copy of another)."""
    out = smoke["out"]
    for variant in q.VARIANTS:
        vdir = out / variant.name
        config = json.loads((vdir / "train_config.json").read_text())
        assert config["visual_tokens"] == variant.visual_tokens
        assert config["canonical_numbers"] is variant.canonical_numbers
        assert config["train_stages"] == ("all" if variant.joint else "projector+language")
        model_config = json.loads((vdir / "config.json").read_text())
        assert model_config["visual_tokens"] == variant.visual_tokens
        assert model_config["text_config"]["model_type"] == variant.text_model_type
    results = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["variants"]}
    assert results["ours"]["image_tokens"] > results["enhanced"]["image_tokens"] == 1
    # canonical numbers must shorten the test programs in the variant's own tokens
    assert results["plus_canonical"]["token_lengths_test"]["mean"] < results["enhanced"]["token_lengths_test"]["mean"]


def test_rerun_reuses_finished_variants(smoke):
    proc = _run("--preset", "smoke", "--out", str(smoke["out"]), "--dataset", str(smoke["root"] / "synth"),
                "--variants", "baseline")
    assert "baseline: reusing" in proc.stdout
    assert "===== baseline" not in proc.stdout  # nothing retrained


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        q.resolve_settings("smoke", ["max_steps"])
    with pytest.raises(ValueError, match="unknown preset"):
        q.resolve_settings("huge", [])
    assert q.resolve_settings("smoke", ["max_steps=7", "lr_scheduler_type=cosine"])["max_steps"] == 7
    with pytest.raises(ValueError, match="unknown variant"):
        q.select_variants("ours,nonsense")  # what the script's --variants goes through
    assert q.select_variants(" baseline, ours ") == ["baseline", "ours"]


def test_variant_configs_differ_only_in_their_switches():
    settings = q.resolve_settings("full", [])
    base = q.train_config(settings, q.VARIANTS_BY_NAME["enhanced"], Path("x"))
    switches = {"visual_tokens", "text_model_type", "train_stages", "canonical_numbers", "_comment", "output_dir"}
    for variant in q.VARIANTS:
        config = q.train_config(settings, variant, Path("x"))
        assert {k for k in config if config[k] != base.get(k)} <= switches, variant.name
        assert not any(k.startswith("bench_") for k in config)  # benchmark-only settings never reach train.py
    # each ablation changes exactly one switch of the enhanced model
    enhanced = q.VARIANTS_BY_NAME["enhanced"].train_options()
    for name in ("plus_grid", "plus_joint", "plus_canonical"):
        changed = {k for k, v in q.VARIANTS_BY_NAME[name].train_options().items() if v != enhanced[k]}
        assert len(changed) == 1, (name, changed)


def test_script_refuses_an_unknown_variant_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "smoke", "--variants", "ours,nonsense",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unknown variant" in proc.stderr
    assert not (tmp_path / "out").exists()
