"""Execution-guided inference (cadcoder.inference, cadcoder.selection) and `cadcoder generate`.

A tiny model (timm's ``test_resnet`` + a 1-layer CodeGen) is overfitted inside this module on four short
programs rendered through the sandbox, so greedy decoding emits valid programs. Candidate selection is also
tested without a model, on hand-written candidates, so its guarantees do not depend on what the model learnt.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

PROGRAMS = [
    "import cadquery as cq\nsolid = cq.Workplane('XY').box(2, 1, 0.5)",
    "import cadquery as cq\nsolid = cq.Workplane('XY').cylinder(1, 0.8)",
    "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 3)",
    "import cadquery as cq\nsolid = cq.Workplane('XY').sphere(1)",
]
BAD = [
    "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1",  # syntax_error
    "import os\nsolid = os.getcwd()",  # forbidden
    "import cadquery as cq\nsolid = undefined_name.box(1, 1, 1)",  # runtime_error
    "import cadquery as cq\nsolid = cq.Workplane('XY').rect(1, 1)",  # no solid: invalid_shape
    "",  # empty
]
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def sandbox():
    from cadcoder.sandbox import Sandbox

    with Sandbox(num_workers=2, timeout=30) as sb:
        yield sb


@pytest.fixture(scope="module")
def shape_images(sandbox):
    """Dataset-style renders of PROGRAMS at the tiny model's input size."""
    from cadcoder.render import render_task

    results = sandbox.map(PROGRAMS, task=render_task, size=IMAGE_SIZE)
    assert all(r.ok for r in results), [r.error for r in results]
    return [Image.fromarray(r.value) for r in results]


@pytest.fixture(scope="module")
def big_image(sandbox):
    """A 224-px render of PROGRAMS[0] for the model-free selection tests."""
    from cadcoder.render import render_program

    return render_program(PROGRAMS[0], size=224, sandbox=sandbox)


@pytest.fixture(scope="module")
def trained(shape_images, overfit_cadcoder):
    """(model, processor) overfitted on the four programs: ~80 AdamW steps on one thread (a few seconds)."""
    return overfit_cadcoder(PROGRAMS, shape_images, image_size=IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------
# Selection without a model
# ----------------------------------------------------------------------------------------------
def test_render_compare_picks_matching_valid_candidate_and_explains_rejections(big_image, sandbox, tmp_path):
    from cadcoder.selection import select_programs

    others = [PROGRAMS[1], PROGRAMS[2]]
    pred = select_programs([big_image], [BAD + others + [PROGRAMS[0], PROGRAMS[0]]], strategy="render_compare",
                           sandbox=sandbox)[0]  # fmt: skip
    assert pred.ok and pred.program == PROGRAMS[0]
    statuses = [c.status for c in pred.candidates]
    assert statuses[:5] == ["syntax_error", "forbidden", "runtime_error", "invalid_shape", "empty"]
    assert statuses[5:] == ["ok"] * 4
    chosen = [c for c in pred.candidates if c.selected]
    assert len(chosen) == 1 and chosen[0].index == 7 and pred.score == chosen[0].score
    assert all(c.score < pred.score for c in pred.candidates[5:7])
    assert pred.candidates[8].reason == "duplicate of candidate 7"
    assert all(c.reason for c in pred.rejected)
    assert pred.rejection_counts()["ok"] == 3

    # The written files are readable: STEP re-imports with the same volume, the STL is watertight.
    import cadquery as cq
    import trimesh

    paths = pred.save(tmp_path / "part", input_image=big_image)
    assert {"program", "step", "stl", "preview", "report"} <= set(paths)
    assert paths["program"].read_text().strip() == PROGRAMS[0]
    shape = cq.importers.importStep(str(paths["step"])).val()
    assert shape.isValid()
    assert math.isclose(shape.Volume(), 1.0, rel_tol=1e-6) and math.isclose(pred.solid["volume"], 1.0, rel_tol=1e-6)
    mesh = trimesh.load(paths["stl"])
    assert mesh.is_watertight and math.isclose(mesh.volume, 1.0, rel_tol=1e-3)
    preview = Image.open(paths["preview"])
    assert preview.width > 2 * big_image.width - 1


def test_render_compare_never_returns_invalid_when_a_valid_candidate_exists(big_image, sandbox):
    from cadcoder.selection import select_programs

    # The only valid candidate looks nothing like the image; it must still win over every invalid one.
    for position in (0, 2, len(BAD)):
        cands = BAD[:position] + [PROGRAMS[3]] + BAD[position:]
        pred = select_programs([big_image], [cands], strategy="render_compare", sandbox=sandbox, export=False)[0]
        assert pred.ok and pred.program == PROGRAMS[3], (position, [c.status for c in pred.candidates])
        assert pred.score is not None and pred.score < 0.9


def test_no_valid_candidate_is_a_clear_failure(big_image, sandbox):
    from cadcoder.selection import select_programs

    for strategy in ("greedy", "first_valid", "render_compare"):
        pred = select_programs([big_image], [BAD], strategy=strategy, sandbox=sandbox)[0]
        assert not pred.ok and pred.status == "no_valid_candidate"
        assert "syntax_error" in pred.error and pred.step is None and pred.solid is None
        assert not any(c.selected for c in pred.candidates)


def test_first_valid_and_greedy_order(big_image, sandbox):
    from cadcoder.selection import select_programs

    cands = [BAD[0], PROGRAMS[2], BAD[2], PROGRAMS[0], PROGRAMS[1]]
    pred = select_programs([big_image], [cands], strategy="first_valid", sandbox=sandbox, export=False)[0]
    assert pred.ok and pred.program == PROGRAMS[2] and pred.score is None
    assert pred.candidates[0].status == "syntax_error"
    later = pred.candidates[3:]
    assert all(c.status in ("ok", "not_run") and not c.selected for c in later)
    greedy = select_programs([big_image], [cands], strategy="greedy", sandbox=sandbox, export=False)[0]
    assert not greedy.ok and len(greedy.candidates) == 1


def test_selection_names_are_importable_from_inference():
    import cadcoder.inference as inference
    import cadcoder.selection as selection

    for name in ("select_programs", "Candidate", "CadPrediction", "STRATEGIES"):
        assert getattr(inference, name) is getattr(selection, name)


# ----------------------------------------------------------------------------------------------
# With a model trained in the test
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["greedy", "first_valid", "render_compare"])
def test_strategies_return_executable_programs(trained, shape_images, sandbox, strategy):
    from cadcoder.inference import generate_cad

    model, processor = trained
    preds = generate_cad(model, processor, shape_images, num_candidates=4, strategy=strategy, sandbox=sandbox,
                         temperature=1.0, export=strategy == "render_compare", batch_size=3)  # fmt: skip
    assert len(preds) == len(shape_images)
    for pred in preds:
        assert pred.ok, (pred.error, [c.program for c in pred.candidates])
        res = sandbox.run(pred.program)  # the returned program really executes to a valid solid
        assert res.ok and math.isclose(res.value["volume"], pred.solid["volume"], rel_tol=1e-9)
        expected = 1 if strategy == "greedy" else 4
        assert len(pred.candidates) <= expected and pred.candidates[0].sampled is False
    if strategy == "render_compare":
        for pred in preds:
            assert len(pred.candidates) == 4
            best = max(c.score for c in pred.candidates if c.ok)
            assert pred.score == best and pred.step.startswith("ISO-10303-21")
            assert pred.vertices is not None and pred.render.shape == (448, 448, 3)
    # greedy decoding of the overfitted model reproduces the training programs
    if strategy == "greedy":
        assert sum(p.program in PROGRAMS for p in preds) >= 3


def test_sampling_is_deterministic_and_leaves_global_rng_alone(trained, shape_images, sandbox):
    from cadcoder.inference import generate_cad

    model, processor = trained
    kwargs = dict(num_candidates=3, strategy="render_compare", sandbox=sandbox, export=False, temperature=1.5,
                  max_new_tokens=30)  # fmt: skip
    state = torch.get_rng_state()
    a = generate_cad(model, processor, shape_images[:2], seed=7, **kwargs)
    assert torch.equal(state, torch.get_rng_state())
    b = generate_cad(model, processor, shape_images[:2], seed=7, **kwargs)
    assert [[c.program for c in p.candidates] for p in a] == [[c.program for c in p.candidates] for p in b]
    assert [p.program for p in a] == [p.program for p in b]
    c = generate_cad(model, processor, shape_images[:2], seed=8, **kwargs)
    assert [[x.program for x in p.candidates] for p in a] != [[x.program for x in p.candidates] for p in c]


def test_time_budget_stops_sampling_but_runs_first_candidate(trained, shape_images, sandbox):
    from cadcoder.inference import generate_cad

    model, processor = trained
    preds = generate_cad(model, processor, shape_images[:2], num_candidates=8, strategy="render_compare",
                         sandbox=sandbox, export=False, time_budget=1e-4)  # fmt: skip
    for pred in preds:
        assert len(pred.candidates) < 8  # later sampling rounds never started
        assert pred.candidates[0].status != "not_run"


def test_bad_arguments(trained, shape_images, tmp_path):
    from cadcoder.inference import generate_cad, load_image

    model, processor = trained
    with pytest.raises(ValueError, match="unknown strategy"):
        generate_cad(model, processor, shape_images[:1], strategy="beam")
    with pytest.raises(ValueError, match="num_candidates"):
        generate_cad(model, processor, shape_images[:1], num_candidates=0)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "notes.png")


def test_options_object_and_keyword_overrides_agree(trained, shape_images, sandbox):
    from cadcoder.inference import GenerationOptions, generate_cad

    model, processor = trained
    options = GenerationOptions(num_candidates=3, strategy="first_valid", export=False, temperature=1.5, seed=3)
    a = generate_cad(model, processor, shape_images[:2], options, sandbox=sandbox)
    b = generate_cad(model, processor, shape_images[:2], sandbox=sandbox, num_candidates=3, strategy="first_valid",
                     export=False, temperature=1.5, seed=3)  # fmt: skip
    assert [[c.program for c in p.candidates] for p in a] == [[c.program for c in p.candidates] for p in b]
    greedy = generate_cad(model, processor, shape_images[:1], options, sandbox=sandbox, strategy="greedy")
    assert greedy[0].strategy == "greedy" and len(greedy[0].candidates) == 1
    assert options.strategy == "first_valid"  # overrides never change the caller's options

    with pytest.raises(TypeError, match="unknown generation option.*num_candiates.*valid options are: num_candidates"):
        generate_cad(model, processor, shape_images[:1], num_candiates=2)
    with pytest.raises(TypeError, match="GenerationOptions"):
        generate_cad(model, processor, shape_images[:1], 4)
    with pytest.raises(ValueError, match="unknown strategy"):
        GenerationOptions(strategy="beam")
    with pytest.raises(ValueError, match="time_budget"):
        GenerationOptions(time_budget=0)


def test_generate_new_tokens_returns_only_the_continuation(trained, shape_images):
    from cadcoder.inference import generate_new_tokens

    model, processor = trained
    sampled = generate_new_tokens(model, processor, shape_images[:2], max_new_tokens=5, do_sample=True,
                                  num_return_sequences=2)  # fmt: skip
    assert sampled.shape[0] == 4 and 0 < sampled.shape[1] <= 5
    tokens = generate_new_tokens(model, processor, shape_images[:1], max_new_tokens=5, do_sample=False)
    prompt = processor(images=shape_images[:1], return_tensors="pt")["input_ids"]
    full = model.generate(**processor(images=shape_images[:1], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert torch.equal(tokens[0, : full.shape[1] - prompt.shape[1]], full[0, prompt.shape[1] :])


def test_load_model_uses_the_installed_classes_and_names_missing_files(model_dir, tmp_path):
    from cadcoder.inference import load_model
    from modeling_cadcoder import CadCoderForConditionalGeneration
    from processing_cadcoder import CadCoderProcessor

    model, processor = load_model(model_dir, device="cpu")
    assert isinstance(model, CadCoderForConditionalGeneration) and isinstance(processor, CadCoderProcessor)
    assert not model.training
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json.*train.py"):
        load_model(empty)
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_model(model_dir / "config.json")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory):
    model, processor = trained
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _run_cli(argv):
    from cadcoder.cli import main

    return main(["generate", *map(str, argv)])


def test_cli_writes_readable_files(model_dir, shape_images, tmp_path, capsys):
    import cadquery as cq
    import trimesh

    paths = []
    for i in (0, 2):
        p = tmp_path / f"in{i}.png"
        shape_images[i].save(p)
        paths.append(p)
    out = tmp_path / "out"
    rc = _run_cli([*paths, "--model", model_dir, "--out", out, "--num-candidates", "2", "--timeout", "30"])
    assert rc == 0, capsys.readouterr().err
    for p in paths:
        folder = out / p.stem
        names = {f.name for f in folder.iterdir()}
        assert {"part.py", "part.step", "part.stl", "part_preview.png", "report.json"} <= names
        shape = cq.importers.importStep(str(folder / "part.step")).val()
        assert shape.isValid() and shape.Volume() > 0
        mesh = trimesh.load(folder / "part.stl")
        assert mesh.is_watertight
        assert math.isclose(mesh.volume, shape.Volume(), rel_tol=0.02)


def test_cli_bad_inputs_give_clear_errors(model_dir, shape_images, tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.png"
    shape_images[0].save(good)
    out = tmp_path / "out"

    assert _run_cli([tmp_path / "missing.png", "--model", model_dir, "--out", out]) == 2
    assert "image file not found" in capsys.readouterr().err

    text = tmp_path / "drawing.png"
    text.write_text("this is not a PNG")
    assert _run_cli([text, "--model", model_dir, "--out", out]) == 2
    assert "not a readable image" in capsys.readouterr().err

    no_proc = tmp_path / "weights_only"
    no_proc.mkdir()
    for f in model_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            (no_proc / f.name).write_bytes(f.read_bytes())
    assert _run_cli([good, "--model", no_proc, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "has no processor" in err and "processor.save_pretrained" in err

    assert _run_cli([good, "--model", tmp_path / "no" / "such" / "folder", "--out", out]) == 2
    assert "neither an existing folder nor a valid Hub id" in capsys.readouterr().err

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network, whatever the environment says
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert _run_cli([good, "--model", "no-such-org/no-such-cadcoder", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "could not load model 'no-such-org/no-such-cadcoder'" in err and "HF_HUB_OFFLINE" in err
    assert "local model folder" in err
    assert not out.exists()


def test_generation_never_runs_past_the_position_table(make_tiny_cadcoder, shape_images, sandbox):
    """An untrained model rarely emits EOS; decoding must stop at n_positions instead of crashing."""
    from cadcoder.inference import generate_cad

    model, processor = make_tiny_cadcoder(image_size=IMAGE_SIZE, vision_architecture="test_resnet", n_layer=1,
                                          n_embd=32, n_positions=48)  # fmt: skip
    preds = generate_cad(model, processor, shape_images[:1], strategy="greedy", max_new_tokens=500, sandbox=sandbox,
                         export=False)  # fmt: skip
    assert len(preds) == 1 and preds[0].status in ("ok", "no_valid_candidate")
    assert preds[0].ok or preds[0].error
