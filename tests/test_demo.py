"""The demo's request logic (cadcoder.demo) without a browser: uploads, model loading, results, examples.

A tiny model is overfitted on three programs so its greedy program builds a solid; each bad input must come
back as a message for the page, and the service must keep serving the next request.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

PROGRAMS = [
    "import cadquery as cq\nsolid = cq.Workplane('XY').box(2, 1, 0.5)",
    "import cadquery as cq\nsolid = cq.Workplane('XY').cylinder(1, 0.8)",
    "import cadquery as cq\nsolid = cq.Workplane('XY').sphere(1)",
]


@pytest.fixture(scope="module")
def renders():
    """448-px dataset-style renders of PROGRAMS (uploads are full-size; the processor resizes them)."""
    from cadcoder.sandbox import Sandbox
    from cadcoder.tasks import RENDER

    with Sandbox(num_workers=2, timeout=30) as sb:
        results = sb.map(PROGRAMS, task=RENDER, size=448)
    assert all(r.ok for r in results), [r.error for r in results]
    return [Image.fromarray(r.value) for r in results]


@pytest.fixture(scope="module")
def model_dir(renders, overfit_cadcoder, tmp_path_factory):
    model, processor = overfit_cadcoder(PROGRAMS, renders)
    folder = tmp_path_factory.mktemp("demo-model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def service(model_dir, tmp_path_factory):
    from cadcoder.demo.service import DemoService

    svc = DemoService(model_dir, num_workers=2, timeout=30, work_dir=tmp_path_factory.mktemp("demo-work"),
                      keep_requests=3)  # fmt: skip
    yield svc
    svc.close()


@pytest.fixture
def good_upload(renders, tmp_path):
    path = tmp_path / "part.png"
    renders[0].save(path)
    return path


def test_a_good_upload_gives_program_files_3d_view_table_and_progress(service, good_upload):
    import cadquery as cq
    import trimesh

    stages = []
    result = service.run(good_upload, "render_compare", 3, 0, on_progress=lambda *a: stages.append(a))
    assert result.ok, result.message
    assert result.message.startswith("**Done**")
    assert result.program.strip() == PROGRAMS[0]
    names = [p.name for p in result.downloads]
    assert names == ["part.py", "part.step", "part.stl"]
    shape = cq.importers.importStep(str(result.downloads[1])).val()
    assert shape.isValid() and math.isclose(shape.Volume(), 1.0, rel_tol=1e-3)  # the 2 x 1 x 0.5 box
    view = trimesh.load(result.view, force="mesh")
    assert math.isclose(view.volume, 1.0, rel_tol=0.02)
    assert Image.open(result.comparison).width > 448  # input and render side by side
    assert len(result.candidates) == 3 and sum(row[4] == "yes" for row in result.candidates) == 1
    assert [s[0] for s in stages][0] == "generating" and stages[-1][0] == "exporting"
    running = [s for s in stages if s[0] == "running"]
    assert running and running[-1][1] == running[-1][2]  # every program ran (identical samples run once)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not an image that can be read"),  # a corrupt PNG
        (b"solid = 1\n", "not an image that can be read"),  # a non-image
    ],
    ids=["empty", "corrupt", "non-image"],
)
def test_bad_uploads_get_a_message_and_the_next_request_still_works(service, good_upload, tmp_path, content, expected):
    bad = tmp_path / "upload.png"
    bad.write_bytes(content)
    result = service.run(bad, "greedy")
    assert not result.ok and expected in result.message
    assert result.downloads == [] and result.view is None
    assert service.run(good_upload, "greedy").ok


def test_a_huge_image_is_refused_before_decoding(service, tmp_path):
    from cadcoder.demo.uploads import MAX_UPLOAD_PIXELS

    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000), 255).save(huge)
    assert 8000 * 6000 > MAX_UPLOAD_PIXELS
    result = service.run(huge, "greedy")
    assert not result.ok and "8000 x 6000" in result.message and "Downscale" in result.message


def test_an_alpha_channel_is_put_on_white_and_noted(service, renders, tmp_path):
    rgba = renders[0].convert("RGBA")
    pixels = np.asarray(rgba).copy()
    white = (pixels[..., :3] > 250).all(-1)
    pixels[white, 3] = 0  # transparent background, as exported by many CAD tools
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, "RGBA").save(path)
    result = service.run(path, "greedy")
    assert result.ok and "alpha channel" in result.message
    assert result.program.strip() == PROGRAMS[0]


def test_bad_controls_get_a_message(service, good_upload):
    assert "unknown strategy" in service.run(good_upload, "beam").message
    assert "between 1 and" in service.run(good_upload, "render_compare", 0).message


def test_without_a_model_the_page_says_how_to_get_one(good_upload, tmp_path):
    from cadcoder.demo.service import DemoService

    svc = DemoService(None, work_dir=tmp_path)
    result = svc.run(good_upload)
    assert not result.ok and "python train.py configs/quickstart.json" in result.message
    assert "python train.py configs/quickstart.json" in svc.status()


def test_a_model_that_cannot_be_loaded_is_reported_and_the_loaded_one_kept(service, good_upload, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    status = service.load(broken)
    assert "Could not load model" in status and "still in use" in status
    assert service.run(good_upload, "greedy").ok
    service.load(service.model_name)  # clear the error for later tests
    assert "Could not load" not in service.status()


def test_old_request_folders_are_removed(service, good_upload):
    for _ in range(4):
        service.run(good_upload, "greedy")
    assert len(list(service.work_dir.glob("request-*"))) == service.keep_requests


def test_example_images_are_dataset_style_renders_made_once(tmp_path):
    from cadcoder.demo.examples import make_example_images

    paths = make_example_images(tmp_path, count=2, seed=3)
    assert [p.name for p in paths] == ["example_3_0.png", "example_3_1.png"]
    images = [np.asarray(Image.open(p)) for p in paths]
    assert all(im.shape == (448, 448, 3) for im in images)
    assert all(((im < 200).all(-1)).mean() > 0.02 for im in images)  # a part, not a blank page
    assert not np.array_equal(images[0], images[1])
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert make_example_images(tmp_path, count=2, seed=3) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # reused, not re-rendered
    assert not list(tmp_path.glob("*.part.png"))


def test_demo_command_without_gradio_names_the_extra(monkeypatch, capsys):
    from cadcoder.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["demo", "--port", "7999"]) == 2
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err
