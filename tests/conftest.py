"""Shared pytest fixtures: a locally trained tiny code tokenizer, tiny CadCoder models, synthetic images.

Everything here is offline and fast (tokenizer trained once per session in ~0.1 s, a tiny model builds in ~0.2 s).

torch runs with 1 intra-op thread in tests (env CADCODER_TEST_THREADS overrides it).

Fixtures (use them from any test file):
    repo_root            Path of the repository root (also put on sys.path so the Hub-face modules import).
    code_corpus          list[str]: ~200 deterministic GenCAD-Code-style CadQuery programs (synthetic, NOT the
                         real GenCAD sample, which is test data only).
    tiny_tokenizer       session-scoped CodeGenTokenizer trained on ``code_corpus`` (vocab 512, <image> included).
                         Treat it as read-only; ``make_tiny_cadcoder`` works on a private copy.
    make_tiny_cadcoder   factory: ``make_tiny_cadcoder(**kwargs) -> (model, processor)``, kwargs as in
                         ``cadcoder.factory.build_tiny_cadcoder`` (image_size=128, visual_tokens="grid",
                         text_model_type="codegen", n_layer=2, n_embd=64, ...). Each call returns a fresh, seeded
                         model in eval mode with its own tokenizer copy, so tests may train or mutate it.
    tiny_cadcoder        session-scoped default ``(model, processor)`` for read-only tests (do not train it).
    sample_images        list of 4 synthetic 448x448 RGB PIL renders of boxes/discs (distinct shapes).
    sample_programs      4 synthetic programs paired with ``sample_images`` by position (the drawings do not
                         depict them: use the pairs for shapes/plumbing, not for geometry).
    overfit_cadcoder     factory: ``overfit_cadcoder(programs, images) -> (model, processor)``, a 1-layer model
                         trained until greedy decoding writes each image's program (~80 AdamW steps, seconds).
"""

from __future__ import annotations

import copy
import os
import random
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the Hub-face modules are top-level files of the repo
    sys.path.insert(0, str(REPO_ROOT))

# Tiny models are overhead-bound: on a shared 2-core machine one intra-op thread ran a training step 3-4x faster
# (wall and CPU) than two, which spin-wait against other processes. Override with CADCODER_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("CADCODER_TEST_THREADS", "1")))


def _fmt(rng: random.Random) -> str:
    return repr(round(rng.uniform(-0.75, 0.75), rng.choice((2, 4, 8))))


def synthetic_program(rng: random.Random, n_sketches: int | None = None) -> str:
    """A small GenCAD-Code-style CadQuery program (workplanes, loops, extrusions, unions) as plain text."""
    n_sketches = n_sketches or rng.randint(1, 3)
    lines = ["import cadquery as cq"]
    for i in range(n_sketches):
        origin = ", ".join(_fmt(rng) for _ in range(3))
        lines.append(f"# Generating a workplane for sketch {i}")
        lines.append(
            f"wp_sketch{i} = cq.Workplane(cq.Plane(cq.Vector({origin}), cq.Vector(1.0, 0.0, 0.0), "
            "cq.Vector(0.0, 0.0, 1.0)))"
        )
        if rng.random() < 0.5:
            lines.append(f"loop{i}=wp_sketch{i}.moveTo({_fmt(rng)}, 0.0).circle({abs(float(_fmt(rng))) + 0.01})")
        else:
            pts = [(_fmt(rng), _fmt(rng)) for _ in range(rng.randint(2, 4))]
            body = "".join(f".lineTo({x}, {y})" for x, y in pts)
            lines.append(f"loop{i}=wp_sketch{i}.moveTo(0.0, 0.0){body}.close()")
        lines.append(f"solid{i}=wp_sketch{i}.add(loop{i}).extrude({abs(float(_fmt(rng))) + 0.01})")
        lines.append("solid=solid0" if i == 0 else f"solid=solid.union(solid{i})")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Path of the repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def code_corpus() -> list[str]:
    """~200 deterministic synthetic programs to train tokenizers and tiny models on."""
    rng = random.Random(0)
    return [synthetic_program(rng) for _ in range(200)]


@pytest.fixture(scope="session")
def tiny_tokenizer(code_corpus):
    """Session-wide byte-level BPE CodeGenTokenizer (vocab 512 + <image>), trained offline on ``code_corpus``."""
    from cadcoder.tokenizer import train_code_tokenizer

    tokenizer = train_code_tokenizer(code_corpus, vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


@pytest.fixture
def make_tiny_cadcoder(tiny_tokenizer):
    """Factory fixture: ``make_tiny_cadcoder(**build_tiny_cadcoder_kwargs) -> (model, processor)``."""
    from cadcoder.factory import build_tiny_cadcoder

    def make(**kwargs):
        tokenizer = kwargs.pop("tokenizer", None) or copy.deepcopy(tiny_tokenizer)
        model, processor = build_tiny_cadcoder(tokenizer, **kwargs)
        return model.eval(), processor

    return make


@pytest.fixture(scope="session")
def tiny_cadcoder(tiny_tokenizer):
    """A default tiny ``(model, processor)`` shared by read-only tests (never train or mutate it)."""
    from cadcoder.factory import build_tiny_cadcoder

    model, processor = build_tiny_cadcoder(copy.deepcopy(tiny_tokenizer))
    return model.eval(), processor


@pytest.fixture(scope="session")
def sample_programs() -> list[str]:
    """Four one-sketch synthetic programs, paired with ``sample_images`` by position only."""
    rng = random.Random(1)
    return [synthetic_program(rng, n_sketches=1) for _ in range(4)]


@pytest.fixture(scope="session")
def sample_images():
    """Four 448x448 RGB images in the GenCAD look (grey shapes with dark outlines on white), all different."""
    from PIL import Image, ImageDraw

    images = []
    for i in range(4):
        image = Image.new("RGB", (448, 448), "white")
        draw = ImageDraw.Draw(image)
        size = 80 + 50 * i
        box = (224 - size, 224 - size // 2, 224 + size // 2, 224 + size)
        if i % 2:
            draw.ellipse(box, fill=(190, 190, 190), outline=(20, 20, 20), width=3)
        else:
            draw.rectangle(box, fill=(170, 170, 170), outline=(20, 20, 20), width=3)
        images.append(image)
    return images


@pytest.fixture(scope="session")
def overfit_cadcoder():
    """Factory: ``overfit_cadcoder(programs, images, image_size=64) -> (model, processor)`` in eval mode.

    A tokenizer trained on ``programs``, ``test_resnet`` and a 1-layer CodeGen, fitted with ~80 AdamW steps
    on one thread, so greedy decoding reproduces the program of each image: a model whose output executes.
    """
    from cadcoder.factory import build_tiny_cadcoder
    from cadcoder.tokenizer import train_code_tokenizer

    def fit(programs, images, image_size=64, steps=80):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a shared CPU makes multi-threaded tiny steps far slower, not faster
        try:
            tokenizer = train_code_tokenizer(list(programs) * 4, vocab_size=300)
            model, processor = build_tiny_cadcoder(
                tokenizer, image_size=image_size, vision_architecture="test_resnet", n_layer=1, n_embd=64,
                n_head=2, max_new_tokens=40, seed=0,
            )  # fmt: skip
            batch = processor(images=list(images), text=list(programs), return_tensors="pt")
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            model.train()
            for _ in range(steps):
                loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
            model.eval()
        finally:
            torch.set_num_threads(threads)
        return model, processor

    return fit
