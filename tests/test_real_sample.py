"""Tests of the real-sample measurements: corpus fidelity (cadcoder.corpus_gaps), synthetic-to-real transfer
(cadcoder.transfer) and the jittered inputs (cadcoder.real_sample), plus benchmarks/real_sample.py run as a script.

The real sample (``gencad_sample/``) is measurement data: these tests only check that the parts run on it
and report consistent numbers; no threshold here is fitted to single images. The transfer test uses a tiny
random model on 2 images with the greedy strategy, so it checks the plumbing, not the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cadcoder import corpus_gaps as cg
from cadcoder import real_sample as rs
from cadcoder.transfer import score_transfer

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(argv: list[str]) -> int:
    """Run ``benchmarks/real_sample.py`` in a fresh process, as a user would; return its exit status."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_sample.py"), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    print(proc.stdout, proc.stderr, sep="\n")  # shown by pytest when an assertion fails
    return proc.returncode


needs_sample = pytest.mark.skipif(
    not (rs.DEFAULT_SAMPLE / "programs.jsonl").is_file(),
    reason=f"real sample not found at {rs.DEFAULT_SAMPLE} (set CADCODER_GENCAD_SAMPLE)",
)


def test_histogram_distance_bounds_and_normalisation():
    assert cg.histogram_distance({1: 3, 2: 1}, {1: 0.75, 2: 0.25}) == pytest.approx(0.0)
    assert cg.histogram_distance({"a": 2}, {"b": 5}) == pytest.approx(1.0)
    assert cg.histogram_distance({1: 1, 2: 1}, {1: 1}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        cg.histogram_distance({}, {1: 1})


def test_corpus_gaps_zero_against_itself_and_positive_against_a_different_corpus(code_corpus):
    from cadcoder.corpus_stats import corpus_stats

    one_sketch = [c for c in code_corpus if c.count("wp_sketch1 =") == 0]
    many = [c for c in code_corpus if c.count("wp_sketch1 =") > 0]
    assert one_sketch and many
    a, b = corpus_stats(one_sketch), corpus_stats(many)
    same = cg.corpus_gaps(a, a)
    assert all(same[k] in (0.0, None) for k in same if k.startswith("tv_"))
    assert same["mean_diff"] == {"chars": 0.0, "tokens": 0.0, "sketches": 0.0, "loops": 0.0}
    diff = cg.corpus_gaps(a, b)
    assert diff["tv_sketches_hist"] == pytest.approx(1.0)  # 1 sketch vs >= 2 sketches: disjoint
    assert diff["mean_diff"]["sketches"] > 0


@needs_sample
def test_token_lengths_canonical_numbers_shorten_real_programs(tiny_tokenizer):
    real = [r["cadquery"] for r in rs.load_sample()]
    lengths = cg.token_lengths(real, tiny_tokenizer, decimals=3, max_length=0)
    assert lengths["canonical"]["mean"] < lengths["raw"]["mean"]  # real programs print 16-17 digit floats
    assert lengths["over_max_length"] == 1.0
    assert cg.token_lengths(real, tiny_tokenizer, decimals=3, max_length=10**6)["over_max_length"] == 0.0


@needs_sample
def test_corpus_part_writes_a_report_over_the_34_programs(tmp_path):
    out = tmp_path / "out"
    rc = run_benchmark(["--part", "corpus", "--corpus-num", "15", "--corpus-dataset", "", "--out", str(out),
                  "--model", str(tmp_path / "no-model")])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "corpus.json").read_text())
    real_name, gen_name = list(report["columns"])
    n_real = len(rs.load_sample())
    assert report["columns"][real_name]["n"] == n_real
    assert report["columns"][gen_name]["n"] == 15 * len(cg.CORPUS_LEVELS)
    assert report["tokenizer"].startswith("approximation")  # no tokenizer folder given or found
    gaps = report["gaps"][gen_name]
    assert all(0.0 <= v <= 1.0 for k, v in gaps.items() if k.startswith("tv_") and v is not None)
    normals = report["columns"][real_name]["normals"]
    assert sum(normals.values()) == pytest.approx(1.0)


@needs_sample
def test_transfer_part_with_a_tiny_model(tmp_path, make_tiny_cadcoder):
    model, processor = make_tiny_cadcoder(image_size=64, n_layer=1, n_embd=32, n_head=2)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    out = tmp_path / "out"
    rc = run_benchmark(["--part", "transfer", "--model", str(folder), "--limit", "2", "--strategies", "greedy",
                  "--max-new-tokens", "8", "--workers", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "transfer.json").read_text())
    (row,) = report["models"][0]["rows"]
    assert row["strategy"] == "greedy" and row["num_candidates"] == 1
    assert [p["deepcad_id"] for p in row["per_image"]] == [r["deepcad_id"] for r in rs.load_sample()[:2]]
    assert 0.0 <= row["valid_syntax_rate"] <= 1.0
    n_failed = sum(row["failures"].values())
    assert n_failed == round(2 * (1 - row["valid_syntax_rate"]))  # every invalid output has a named reason
    base = report["baselines"]
    assert base["constant"]["valid_syntax_rate"] == 1.0  # the constant program always runs
    assert base["constant"]["distinct_predictions"] == 0.5  # one program for two images
    assert base["iou_chance"] is not None and 0.0 <= base["iou_chance"] <= 1.0
    table = (out / "transfer.md").read_text()
    assert "constant program" in table and "chance" in table and str(folder) in table
    one = rs.load_sample()[:1]
    with pytest.raises(ValueError, match="unknown"):
        score_transfer(one, [str(folder)], out, strategies=["beam"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        score_transfer(one, [str(tmp_path / "missing")], out)


@needs_sample
def test_jittered_inputs_render_the_real_programs_in_another_look_reproducibly():
    from cadcoder.image_metrics import compare_images
    from cadcoder.sandbox import Sandbox

    records = rs.load_sample()[:2]
    with Sandbox(num_workers=1, timeout=30) as box:
        first = rs.jittered_inputs(records, box, seed=0)
        again = rs.jittered_inputs(records, box, seed=0)
    assert [im.size for im in first] == [r["image"].size for r in records]
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]
    for rec, im in zip(records, first):
        m = compare_images(rec["image"], im)
        assert 0.5 < m["silhouette_iou"] < 0.995, m  # the same part, seen from a jittered camera


@needs_sample
def test_load_sample_without_images_reads_only_the_programs():
    with_images, programs_only = rs.load_sample(), rs.load_sample(with_images=False)
    assert [r["cadquery"] for r in programs_only] == [r["cadquery"] for r in with_images]
    assert all(isinstance(r["image"], str) and (rs.DEFAULT_SAMPLE / r["image"]).is_file() for r in programs_only)
    with pytest.raises(FileNotFoundError, match="CADCODER_GENCAD_SAMPLE"):
        rs.load_sample(REPO / "no-such-sample")


def test_paired_difference_interval_brackets_the_mean_and_needs_shared_images():
    from cadcoder.transfer import paired_difference

    base = {"a": 0.2, "b": 0.4, "c": 0.6, "d": 0.1}
    lever = {"a": 0.3, "b": 0.45, "c": 0.9, "e": 1.0}  # "d" and "e" are not scored for both
    d = paired_difference(lever, base, resamples=2000)
    assert d["images"] == 3 and d["mean"] == pytest.approx((0.1 + 0.05 + 0.3) / 3)
    assert d["low"] <= d["mean"] <= d["high"] and d["low"] >= 0.05 - 1e-9
    assert paired_difference(lever, base, resamples=2000) == d  # same seed, same interval
    with pytest.raises(ValueError, match="both"):
        paired_difference({"x": 1.0}, {"y": 0.0})
