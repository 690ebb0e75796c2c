"""Tests of the synthetic GenCAD-style generator and dataset builder (cadcoder.synth)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cadcoder.corpus_stats import corpus_stats, program_stats
from cadcoder.real_sample import DEFAULT_SAMPLE
from cadcoder.schema import GENCAD_COLUMNS, GENCAD_PROMPT
from cadcoder.synth import (
    COMPLEXITY_LEVELS,
    build_synthetic_dataset,
    code_key,
    code_skeleton,
    generate_program,
    geometry_key,
    sample_seed,
)

REAL = DEFAULT_SAMPLE / "programs.jsonl"
SMALL = 96  # image side for the 50-sample set (speed); one 448 render is checked separately


# --------------------------------------------------------------------------- generator (no CAD kernel)
def test_same_seed_same_program_and_seeds_differ():
    assert generate_program(7) == generate_program(np.random.default_rng(7))
    progs = [generate_program(sample_seed(0, i)) for i in range(40)]
    assert len(set(progs)) == 40


def test_bad_complexity_is_rejected():
    with pytest.raises(ValueError, match="complexity"):
        generate_program(0, complexity=9)


@pytest.mark.parametrize("complexity", COMPLEXITY_LEVELS)
def test_programs_follow_the_gencad_format(complexity):
    progs = [generate_program(sample_seed(1, i), complexity=complexity) for i in range(60)]
    for p in progs:
        assert p.startswith("import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(")
        assert p.endswith("\n") and re.search(r"^solid=solid0$", p, re.M)
        for line in p.strip().splitlines()[1:]:
            assert re.match(r"(# Generating a workplane for sketch \d+|wp_sketch\d+ = cq\.Workplane|loop\d+=wp_sketch\d+\.moveTo"
                            r"|solid\d+=wp_sketch\d+(\.add\(loop\d+\))+\.extrude|solid(_temp)?=solid)", line), line
    stats = corpus_stats(progs)
    # the dataset's grids and ranges: origins, extrudes and sketch coordinates on the GenCAD grids
    assert stats["grid_share"] == {"origins": 1.0, "extrudes": 1.0, "sketch_coords": 1.0}
    lo, hi = stats["value_range"]
    assert lo >= -1.0 and hi <= 1.52
    assert stats["loops"]["max"] <= 10 and stats["sketches"]["max"] <= 8
    if complexity == 0:
        assert stats["sketches"]["max"] == 1 and stats["loops"]["max"] <= 2


def test_full_level_covers_every_construct():
    progs = [generate_program(sample_seed(2, i)) for i in range(400)]
    text = "\n".join(progs)
    for needle in (".lineTo(", ".threePointArc(", ".circle(", "both=True", ".union(", ".cut(", ".intersect(",
                   "solid_temp", "cq.Vector(0.0, 0.0, 1.0)", "cq.Vector(6.123233995736766e-17, -1.0, 6.123233995736766e-17)",
                   "cq.Vector(1.0, 0.0, 6.123233995736766e-17)", "e-17"):
        assert needle in text, needle
    stats = corpus_stats(progs)
    assert stats["sketches"]["median"] == 1 and stats["sketches"]["max"] >= 6
    assert stats["loops"]["median"] in (1, 2, 3)
    assert any(program_stats(p)["loops"] >= 2 for p in progs)  # holes
    # not a handful of templates
    assert stats["distinct_skeletons"] > 0.3 and stats["top_skeleton_share"] < 0.25


def test_plane_vectors_print_like_the_dataset():
    real = "\n".join(json.loads(line)["cadquery"] for line in REAL.read_text().splitlines())
    real_frames = set(re.findall(r"cq\.Vector\([^)]*\), cq\.Vector\([^)]*\)\)\)", real))
    ours = set()
    for i in range(300):
        ours |= set(re.findall(r"cq\.Vector\([^)]*\), cq\.Vector\([^)]*\)\)\)", generate_program(sample_seed(3, i))))
    assert real_frames <= ours


def test_dedup_keys():
    a = generate_program(5)
    nudged = re.sub(r"extrude\((-?[\d.]+)", lambda m: f"extrude({float(m.group(1)) + 1e-9!r}", a, count=1)
    assert code_key(a) == code_key(nudged)
    assert code_key(a) != code_key(generate_program(6))
    assert code_skeleton("x=f(0.25, -1e-17)") == "x=f(#, #)"
    fp = {"volume": 1.0, "area": 6.0, "bbox": (0, 0, 0, 1, 1, 1), "center": (0.5, 0.5, 0.5)}
    assert geometry_key(fp) == geometry_key({**fp, "volume": 1.0 + 1e-9})
    assert geometry_key(fp) != geometry_key({**fp, "volume": 1.01})


# --------------------------------------------------------------------------- dataset (sandbox + render)
@pytest.fixture(scope="module")
def box():
    from cadcoder.sandbox import Sandbox

    with Sandbox(num_workers=2, timeout=20) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def synth50(tmp_path_factory, box):
    out = tmp_path_factory.mktemp("synth50")
    dd = build_synthetic_dataset(50, out, seed=0, image_size=SMALL, progress=False, chunk_size=32, sandbox=box)
    return out, dd


def test_fifty_samples_schema_and_splits(synth50):
    out, dd = synth50
    assert set(dd) == {"train", "validation", "test"}
    assert sum(len(d) for d in dd.values()) == 50
    for d in dd.values():
        assert tuple(d.column_names) == GENCAD_COLUMNS
        assert all(p == GENCAD_PROMPT for p in d["prompt"])
    assert all(dd["test"]["hundred_subset"]) and not any(dd["train"]["hundred_subset"])
    codes = [c for d in dd.values() for c in d["cadquery"]]
    assert len(set(codes)) == 50 and len({code_key(c) for c in codes}) == 50
    assert all(t > 0 for d in dd.values() for t in d["token_count"])
    stats = json.loads((out / "synth_stats.json").read_text())
    assert stats["kept"] >= 50 and stats["attempted"] >= stats["kept"]


def test_every_kept_program_executes_in_the_sandbox(synth50, box):
    _, dd = synth50
    codes = [c for d in dd.values() for c in d["cadquery"]]
    results = box.map(codes)
    assert [r.status for r in results] == ["ok"] * len(codes)
    assert all(r.value["n_solids"] == 1 and r.value["volume"] > 0 for r in results)


def _style_checks(img: np.ndarray) -> None:
    h, w, _ = img.shape
    corners = np.concatenate([img[:4, :4].reshape(-1, 3), img[-4:, -4:].reshape(-1, 3)])
    assert (corners == 255).all(), "background must be white"
    grey = (np.abs(img.astype(int) - np.array([141, 141, 138])).max(-1) <= 40) & (img.std(-1) < 8)
    assert grey.mean() > 0.01, "grey faces expected"
    assert (img.max(-1) < 60).mean() > 0.001, "dark edges expected"
    assert (img.min(-1) < 250).mean() > 0.02, "image is (nearly) blank"


def test_images_are_in_dataset_style(synth50):
    _, dd = synth50
    for row in dd["train"].select(range(5)):
        img = np.asarray(row["image"].convert("RGB"))
        assert img.shape == (SMALL, SMALL, 3)
        _style_checks(img)


def test_one_render_at_448(box):
    from cadcoder.render import render_program

    img = np.asarray(render_program(generate_program(sample_seed(0, 1), complexity=1), size=448, sandbox=box))
    assert img.shape == (448, 448, 3)
    _style_checks(img)


def _rows(dd):
    return [(r["deepcad_id"], r["cadquery"], r["image"].tobytes()) for d in dd.values() for r in d]


def test_same_seed_identical_and_resume_after_interrupt(tmp_path, box):
    kw = dict(seed=11, image_size=48, progress=False, chunk_size=6, complexity=1, sandbox=box)
    full = build_synthetic_dataset(10, tmp_path / "full", **kw)
    # interrupted after one chunk, plus debris of a crash mid-write
    part = tmp_path / "part"
    assert build_synthetic_dataset(10, part, stop_after_chunks=1, **kw) is None
    manifest = json.loads((part / "_synth_work" / "manifest.json").read_text())
    assert manifest["next_index"] == 6 and len(manifest["shards"]) == 1
    (part / "_synth_work" / "shard-000000006-000000012.parquet.tmp").write_bytes(b"half a shard")
    resumed = build_synthetic_dataset(10, part, **kw)
    assert _rows(resumed) == _rows(full)
    manifest = json.loads((part / "_synth_work" / "manifest.json").read_text())
    starts = [s["start"] for s in manifest["shards"]]
    assert starts == sorted(set(starts)) and starts[0] == 0  # no chunk done twice
    with pytest.raises(ValueError, match="other settings"):
        build_synthetic_dataset(10, part, **{**kw, "seed": 12})


def test_too_few_samples_for_every_split_fail_before_any_work(tmp_path, box):
    """datasets cannot reload an empty split, so a set too small for train/validation/test is refused up front."""
    import datasets

    from cadcoder.synth import build_synthetic_mix

    with pytest.raises(ValueError, match="validation split empty.*at least 3 samples"):
        build_synthetic_dataset(2, tmp_path / "two", progress=False)
    with pytest.raises(ValueError, match="3 per complexity level"):
        build_synthetic_mix(4, tmp_path / "mix", complexities=[0, 1], progress=False)
    assert not any((tmp_path / "two").glob("_synth_work/*.parquet"))
    no_test = build_synthetic_dataset(3, tmp_path / "no-test", image_size=48, progress=False, complexity=0,
                                      splits=(0.9, 0.1, 0.0), sandbox=box)
    assert set(no_test) == {"train", "validation"}
    assert len(datasets.load_from_disk(str(tmp_path / "no-test"))["validation"]) == 1


def test_domain_randomised_mix_renders_the_same_programs_differently(tmp_path):
    """`train.py --synth_render_style random`: same programs as the plain mix, other looks, and no resuming across."""
    import datasets

    from cadcoder.synth import build_synthetic_mix

    kw = dict(complexities=[0, 1], seed=5, workers=1, image_size=48, progress=False, chunk_size=4)
    plain = datasets.load_from_disk(str(build_synthetic_mix(6, tmp_path / "plain", **kw)))
    randomised = datasets.load_from_disk(str(build_synthetic_mix(6, tmp_path / "random", render_style="random", **kw)))
    for split in plain:
        assert plain[split]["cadquery"] == randomised[split]["cadquery"]
    pngs = [(a["image"].tobytes(), b["image"].tobytes()) for s in plain for a, b in zip(plain[s], randomised[s])]
    assert sum(a != b for a, b in pngs) >= len(pngs) - 1
    with pytest.raises(ValueError, match="other settings"):
        build_synthetic_mix(8, tmp_path / "random", render_style=None, **kw)
