"""Tests of the headless renderer (cadcoder.render) and the image metrics (cadcoder.image_metrics).

Shapes built here are trusted test fixtures made directly with cadquery; every program given as source
text goes through cadcoder.sandbox (render_program, render_cli, the real-sample check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

cq = pytest.importorskip("cadquery")

from cadcoder.image_metrics import (  # noqa: E402
    compare_images,
    edge_f1,
    edge_map,
    face_colour,
    foreground_mask,
    image_similarity,
    silhouette_iou,
)
from cadcoder.render import (  # noqa: E402
    DATASET_FACE_RGB,
    RenderStyle,
    render_cli,
    render_program,
    render_shape,
    render_task,
    side_by_side,
)
from cadcoder.real_sample import DEFAULT_SAMPLE as SAMPLE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Real-sample check: a few varied pairs (flat L-bracket, tube with seam, plate with arcs, plate with pockets).
SAMPLE_IDS = ("00955962", "00189332", "00790402", "00531511")
# Set from benchmarks/real_sample.py over all 34 pairs (silhouette IoU mean 0.996, worst pair 0.967;
# edge F1 mean 0.967): the IoU floor sits just under the worst measured pair. A mirrored camera scores
# 0.51-0.63 on two of these parts and a 3 % framing error about 0.95, so either fails.
MIN_SILHOUETTE_IOU = 0.96
MIN_MEAN_EDGE_F1 = 0.70


@pytest.fixture(scope="module")
def plate() -> "cq.Shape":
    """A plate with a through hole and a slot: planar and cylindrical faces."""
    return cq.Workplane("XY").box(1.2, 0.8, 0.2).faces(">Z").workplane().hole(0.3).val()


@pytest.fixture(scope="module")
def sandbox():
    from cadcoder.sandbox import Sandbox

    with Sandbox(num_workers=1, timeout=30.0) as box:
        yield box


# --------------------------------------------------------------------------------------------------
# renderer output
# --------------------------------------------------------------------------------------------------
def test_dataset_look(plate):
    img = render_shape(plate)
    assert img.mode == "RGB" and img.size == (448, 448)
    arr = np.asarray(img)
    assert (arr[0] == 255).all() and (arr[-1] == 255).all() and (arr[:, 0] == 255).all()  # white background
    mask = foreground_mask(arr)
    assert 0.1 < mask.mean() < 0.8  # not blank, not flooded
    lines = edge_map(arr)
    assert lines.sum() > 500 and (arr[lines] < 60).all()  # black edges are drawn
    # Axis-aligned faces are seen at the isometric angle: exactly the dataset grey.
    assert np.abs(face_colour(arr) - np.array(DATASET_FACE_RGB)).max() <= 2


def test_framing_follows_dataset_rule(plate):
    """The part's bounding box, projected, fills a 400x300 window centred in the 448 image."""
    mask = foreground_mask(render_shape(plate))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    width, height = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    assert width <= 402 and height <= 302  # fits the window...
    assert min(abs(width - 400), abs(height - 300)) <= 2  # ...and touches it in one direction
    assert abs((cols[0] + cols[-1]) / 2 - 223.5) <= 1.5


def test_hidden_lines_removed():
    """A blind pocket in the bottom face cannot be seen from above: the render equals the plain box's."""
    box = cq.Workplane("XY").box(1.0, 1.0, 0.5)
    pocketed = box.faces("<Z").workplane().rect(0.4, 0.4).cutBlind(-0.2)
    a = np.asarray(render_shape(box.val(), size=256))
    b = np.asarray(render_shape(pocketed.val(), size=256))
    assert (a != b).any(axis=2).sum() <= 20  # at most a few tessellation-noise pixels
    # ...while the lines of a pocket in the top face are drawn (its walls have the same grey as the top).
    top = box.faces(">Z").workplane().rect(0.4, 0.4).cutBlind(-0.2)
    c = np.asarray(render_shape(top.val(), size=256))
    assert edge_map(c).sum() > edge_map(a).sum() + 150


def test_curved_faces_shaded_lighter_toward_viewer():
    cyl = cq.Workplane("XY").circle(0.5).extrude(1.0).val()
    arr = np.asarray(render_shape(cyl)).astype(int)
    face = foreground_mask(arr) & ~edge_map(arr)
    greys = arr[face][:, 0]
    assert greys.max() >= DATASET_FACE_RGB[0] + 10  # the side facing the camera is lighter
    assert greys.min() <= DATASET_FACE_RGB[0] - 10  # grazing parts are darker
    # As in the dataset, the smooth sides get no outline by default; the option draws them.
    outlined = np.asarray(render_shape(cyl, style=RenderStyle(draw_silhouettes=True)))
    assert edge_map(outlined).sum() > edge_map(arr).sum() + 300


def test_render_task_and_style(plate):
    out = render_task(plate, size=128)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (128, 128, 3)
    style = RenderStyle.random(np.random.default_rng(3))
    assert style == RenderStyle.random(np.random.default_rng(3))  # deterministic by seed
    styled = render_task(plate, size=128, **style.to_dict())
    assert styled.shape == (128, 128, 3) and (styled != out).any()
    thick = render_task(plate, size=128, edge_width=3)
    assert edge_map(thick).sum() > 1.5 * edge_map(out).sum()
    with pytest.raises(ValueError, match="unknown render style"):
        render_task(plate, size=128, colour="red")


def test_render_works_without_display(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys, numpy as np, cadquery as cq
        assert "DISPLAY" not in os.environ
        from cadcoder.render import render_shape
        img = render_shape(cq.Workplane("XY").box(1, 2, 3).val(), size=96)
        a = np.asarray(img)
        assert img.size == (96, 96) and (a < 200).any()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_side_by_side(plate):
    left = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    right = render_shape(plate, size=200)
    sheet = side_by_side(left, right, labels=("input", "prediction"))
    assert sheet.mode == "RGB" and sheet.height == 200 + 18 and sheet.width == 400 + 8 + 200
    assert side_by_side(left, right, labels=None).height == 200
    with pytest.raises(ValueError):
        side_by_side(left, right, labels=("only one",))


# --------------------------------------------------------------------------------------------------
# through the sandbox
# --------------------------------------------------------------------------------------------------
def test_render_program_and_failure_reason(sandbox):
    img = render_program("solid = cq.Workplane('XY').box(1, 1, 1)", size=64, sandbox=sandbox)
    assert img.size == (64, 64) and img.mode == "RGB"
    # Every style option must work inside the jailed worker (no lazy imports there).
    style = RenderStyle(draw_silhouettes=True, edge_width=2, azimuth_deg=5.0, roll_deg=1.0, shift=(0.05, 0.0))
    styled = render_program("solid = cq.Workplane('XY').circle(0.5).extrude(1)", size=64, sandbox=sandbox, style=style)
    assert (np.asarray(styled) < 60).any()
    with pytest.raises(RuntimeError, match="runtime_error"):
        render_program("solid = 1 / 0", size=64, sandbox=sandbox)
    with pytest.raises(RuntimeError, match="syntax_error"):
        render_program("solid = (", size=64, sandbox=sandbox)


def test_render_cli_writes_png(tmp_path, monkeypatch):
    program = tmp_path / "part.py"
    program.write_text("import cadquery as cq\nsolid = cq.Workplane('XY').circle(0.4).extrude(0.3)\n")
    out = tmp_path / "out" / "part.png"
    assert render_cli(argparse.Namespace(program=str(program), out=str(out), size=96, timeout=30.0)) == 0
    img = Image.open(out)
    assert img.size == (96, 96) and img.mode == "RGB"
    # A failing program (reasons come from the sandbox, tested above) gives exit status 1 and no file.
    import cadcoder.render as render_module

    def failing(*args, **kwargs):
        raise RuntimeError("could not render the program: runtime_error: NameError")

    monkeypatch.setattr(render_module, "render_program", failing)
    bad = tmp_path / "bad.png"
    assert render_cli(argparse.Namespace(program=str(program), out=str(bad), size=96, timeout=30.0)) == 1
    assert not bad.exists()
    with pytest.raises(FileNotFoundError):
        render_cli(argparse.Namespace(program=str(tmp_path / "missing.py"), out=str(out), size=96, timeout=30.0))


@pytest.mark.skipif(not (SAMPLE / "programs.jsonl").is_file(), reason=f"real GenCAD-Code sample not found at {SAMPLE}")
def test_matches_real_gencad_images(sandbox):
    records = {}
    with (SAMPLE / "programs.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            records[rec["deepcad_id"]] = rec
    f1s = []
    for deepcad_id in SAMPLE_IDS:
        rec = records[deepcad_id]
        real = Image.open(SAMPLE / rec["image"]).convert("RGB")
        ours = render_program(rec["cadquery"], size=real.width, sandbox=sandbox)
        m = compare_images(real, ours)
        assert m["silhouette_iou"] >= MIN_SILHOUETTE_IOU, (deepcad_id, m)
        assert m["face_colour_diff"] <= 10.0, (deepcad_id, m)
        f1s.append(m["edge_f1"])
    assert np.mean(f1s) >= MIN_MEAN_EDGE_F1, f1s


# --------------------------------------------------------------------------------------------------
# image metrics
# --------------------------------------------------------------------------------------------------
def _disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 255, np.uint8)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (141, 141, 138)
    return img


def test_silhouette_iou_values():
    a = _disc(64, 20, 20, 8)
    assert silhouette_iou(a, a) == 1.0
    assert silhouette_iou(a, _disc(64, 48, 48, 8)) == 0.0
    half = silhouette_iou(np.pad(np.ones((4, 8), bool), ((0, 4), (0, 0))), np.ones((8, 8), bool))
    assert half == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different sizes"):
        silhouette_iou(a, _disc(32, 10, 10, 4))


def test_edge_f1_tolerance():
    line = np.zeros((40, 40), bool)
    line[20, 5:35] = True
    near = np.roll(line, 2, axis=0)
    far = np.roll(line, 5, axis=0)
    assert edge_f1(line, near, tolerance=2) == 1.0
    assert edge_f1(line, far, tolerance=2) == 0.0
    assert edge_f1(line, line | far, tolerance=2) == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_image_similarity_ignores_framing(plate):
    big = render_shape(plate, size=224)
    small = render_shape(plate, size=224, style=RenderStyle(zoom=0.6, shift=(0.1, -0.05)))
    other = render_shape(cq.Workplane("XY").circle(0.5).extrude(0.8).val(), size=224)
    same = image_similarity(big, small)
    assert same > 0.85
    assert same > image_similarity(big, other) + 0.1


# --------------------------------------------------------------------------------------------------
# rasteriser helpers and style round trip
# --------------------------------------------------------------------------------------------------
def test_dilate_grows_a_width_square():
    from cadcoder.raster import dilate

    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert dilate(mask, 1) is mask
    for width, rows in ((2, slice(4, 6)), (3, slice(3, 6)), (4, slice(3, 7))):
        want = np.zeros_like(mask)
        want[rows, rows] = True
        assert np.array_equal(dilate(mask, width), want), width


def test_outline_is_the_part_border_in_four_neighbourhood():
    from cadcoder.raster import outline_pixels

    zbuf = np.full((6, 6), -np.inf)
    zbuf[1:5, 0:4] = 1.0  # touches the image's left border: that side counts as outline too
    outline = outline_pixels(zbuf)
    inner = np.zeros((6, 6), bool)
    inner[2:4, 1:3] = True
    assert np.array_equal(outline, np.isfinite(zbuf) & ~inner)


def test_style_from_dict_round_trip():
    style = RenderStyle.random(7)
    as_json = json.loads(json.dumps(style.to_dict()))
    assert RenderStyle.from_dict(as_json) == style
    with pytest.raises(ValueError, match="valid fields"):
        RenderStyle.from_dict({"colour": (1, 2, 3)})
