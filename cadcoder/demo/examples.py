"""The demo's example images: synthetic parts rendered in the GenCAD-Code look, made once and cached."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["default_examples_dir", "make_example_images"]

_MIN_INK = 0.02  # skip parts that cover less than 2 % of the image: too small to show anything


def default_examples_dir() -> Path:
    """``$CADCODER_DEMO_EXAMPLES``, else ``cadcoder-demo-examples`` in the system's temporary folder."""
    env = os.environ.get("CADCODER_DEMO_EXAMPLES")
    return Path(env) if env else Path(tempfile.gettempdir()) / "cadcoder-demo-examples"


def make_example_images(
    folder: str | os.PathLike | None = None,
    count: int = 4,
    seed: int = 0,
    size: int = 448,
    sandbox: Any = None,
    complexity: int = 3,
) -> list[Path]:
    """Synthetic parts rendered in the dataset look, as PNG files: ``example_<seed>_<k>.png``.

    Programs come from :func:`cadcoder.synth.programs.generate_program` and run only in the sandbox.
    Files already in ``folder`` are reused, and each new file is written under a temporary name and then
    renamed, so an interrupted run leaves no half-written image.

    Args:
        folder: where the PNGs go (default :func:`default_examples_dir`).
        count: how many examples.
        seed: the first program seed; the same seed gives the same examples.
        size: image side in pixels (the dataset's is 448).
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse; ``None`` opens one when needed.
        complexity: the synthetic curriculum level (3 is the GenCAD-Code distribution).

    Returns:
        The ``count`` image paths, in order.
    """
    from cadcoder.sandbox import borrow_or_open
    from cadcoder.synth.dataset import ink_fraction
    from cadcoder.synth.programs import generate_program
    from cadcoder.tasks import RENDER

    out = Path(folder) if folder is not None else default_examples_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"example_{seed}_{k}.png" for k in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    with borrow_or_open(sandbox, num_workers=1, timeout=30.0) as box:
        for k, path in enumerate(paths):
            if path.is_file():
                continue
            program_seed = seed * 10_000 + k * 100  # example k does not depend on which others were cached
            for _ in range(50):
                result = box.run(generate_program(program_seed, complexity), task=RENDER, size=size)
                program_seed += 1
                if result.ok and ink_fraction(result.value) >= _MIN_INK:
                    break
            else:
                raise RuntimeError(f"no synthetic part rendered in 50 tries ({result.status}: {result.error})")
            partial = path.with_suffix(".part.png")
            Image.fromarray(np.asarray(result.value, dtype=np.uint8), mode="RGB").save(partial)
            os.replace(partial, path)
    return paths
