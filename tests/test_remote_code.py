"""Hub face: save_pretrained writes a self-contained remote-code folder that loads through every Auto class in a
fresh process that cannot import the repository, and generates the same tokens as the original model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

HUB_FILES = ("configuration_cadcoder.py", "modeling_cadcoder.py", "processing_cadcoder.py")
AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText")

LOADER = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, sys

    HUB_FACE = ("configuration_cadcoder", "modeling_cadcoder", "processing_cadcoder", "cadcoder")

    class BlockRepoModules(importlib.abc.MetaPathFinder):
        # Even with `pip install -e .`, the copied folder must be enough: hide the installed modules.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HUB_FACE:
                raise ModuleNotFoundError(f"{name} is hidden in this test", name=name)
            return None

    sys.meta_path.insert(0, BlockRepoModules())
    import numpy as np, torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM,
                              AutoModelForImageTextToText, AutoProcessor)

    folder, images_path, repo_root = sys.argv[1], sys.argv[2], sys.argv[3]
    # The repository must not be on sys.path: everything has to come from the saved folder.
    leaked = [p for p in sys.path if p and repo_root in p]
    result = {"leaked": leaked, "modules": {}, "tokens": {}}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    result["modules"]["AutoConfig"] = type(config).__module__
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    result["modules"]["AutoProcessor"] = type(processor).__module__
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    result["modules"]["AutoImageProcessor"] = type(image_processor).__module__
    images = list(np.load(images_path))
    inputs = processor(images=images)
    for name, auto in [("AutoModel", AutoModel), ("AutoModelForCausalLM", AutoModelForCausalLM),
                       ("AutoModelForImageTextToText", AutoModelForImageTextToText)]:
        model = auto.from_pretrained(folder, trust_remote_code=True)
        result["modules"][name] = type(model).__module__ + "." + type(model).__name__
        result["tokens"][name] = model.generate(**inputs, max_new_tokens=12, do_sample=False).tolist()
    result["decoded"] = processor.batch_decode(torch.tensor(result["tokens"]["AutoModel"]))
    print("RESULT" + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_tokenizer, sample_images):
    """A tiny CodeGen-based CadCoder saved, then copied to a folder far from the repository."""
    import copy

    from cadcoder.factory import build_tiny_cadcoder

    model, processor = build_tiny_cadcoder(copy.deepcopy(tiny_tokenizer), image_size=96)
    model.eval()
    save_dir = tmp_path_factory.mktemp("save") / "cadcoder-tiny"
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "copied-model"
    shutil.copytree(save_dir, elsewhere)
    images = np.stack([np.asarray(image.convert("L")) for image in sample_images[:3]])
    expected = model.generate(**processor(images=list(images)), max_new_tokens=12, do_sample=False).tolist()
    return elsewhere, images, expected, processor


def test_saved_folder_is_a_complete_hub_repo(saved_model):
    folder, *_ = saved_model
    files = set(os.listdir(folder))
    assert set(HUB_FILES) <= files
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json"} <= files
    assert "tokenizer.json" in files or "vocab.json" in files
    assert not any(name.endswith(".bin") for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "cadcoder"
    auto_map = config["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_cadcoder.CadCoderConfig"
    for auto in AUTO_MODEL_CLASSES:
        assert auto_map[auto] == "modeling_cadcoder.CadCoderForConditionalGeneration"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_cadcoder.CadCoderProcessor"
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "processing_cadcoder.CadCoderImageProcessor"
    )
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] is not None
    assert "max_new_tokens" in generation and "max_new_tokens" not in config
    for name in HUB_FILES:  # the Hub face must not depend on the cadcoder package
        source = (folder / name).read_text()
        assert "import cadcoder" not in source and "from cadcoder" not in source


def test_fresh_process_loads_every_auto_class_and_generates_the_same_tokens(saved_model, tmp_path, repo_root):
    folder, images, expected, processor = saved_model
    images_path = tmp_path / "images.npy"
    np.save(images_path, images)
    script = tmp_path / "load_remote.py"
    script.write_text(LOADER)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONNOUSERSITE="1",
               OMP_NUM_THREADS=os.environ.get("CADCODER_TEST_THREADS", "1"))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(images_path), str(repo_root)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "backend is not available" not in proc.stderr, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    assert result["leaked"] == []
    for name, module in result["modules"].items():
        assert module.startswith("transformers_modules."), (name, module)
    for name in AUTO_MODEL_CLASSES:
        assert result["tokens"][name] == expected, name
    assert result["decoded"] == processor.batch_decode(torch.tensor(expected))


def test_installed_modules_load_without_trust_remote_code(saved_model):
    """The same folder loads through the Auto classes in-process when the Hub-face modules are importable."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_cadcoder
    import processing_cadcoder

    folder, images, expected, _ = saved_model
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model) is modeling_cadcoder.CadCoderForConditionalGeneration
    assert type(processor) is processing_cadcoder.CadCoderProcessor
    tokens = model.generate(**processor(images=list(images)), max_new_tokens=12, do_sample=False).tolist()
    assert tokens == expected
