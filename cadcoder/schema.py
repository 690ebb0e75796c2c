"""The GenCAD-Code schema: prompt, columns, splits, features and the token estimate, in one place.

The loader (:mod:`cadcoder.data`) reads every source into this schema and the synthetic builder
(:mod:`cadcoder.synth`) writes it. This module imports nothing heavy: ``datasets`` is imported only by
:func:`gencad_features`, when the features are asked for.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_HUB_DATASET = "CADCODER/GenCAD-Code"
"""The Hub dataset loaded when no source is given (a default, never a requirement)."""

GENCAD_PROMPT = (
    "Generate the CADQuery code needed to create the CAD for the provided image. Just the code, no other words."
)
"""The ``prompt`` column: one prompt for every row."""

GENCAD_COLUMNS: tuple[str, ...] = ("image", "deepcad_id", "cadquery", "token_count", "prompt", "hundred_subset")
"""The columns of every split, in order. ``hundred_subset`` marks the first 100 rows of the test split."""

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "cadquery")
"""The columns a source must have; the loader fills the others."""

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
"""The split names, in order."""

CHARS_PER_TOKEN = 1.5
"""Characters per CodeGen token on GenCAD-Code programs (~900 characters, ~600 tokens per program)."""


def approx_token_count(code: str) -> int:
    """Approximate CodeGen token count of a program: ``ceil(len(code) / CHARS_PER_TOKEN)``.

    The ratio is the one GenCAD-Code's own figures imply (~900 characters, ~600 CodeGen tokens per
    program). Count with a tokenizer where exact lengths matter.
    """
    return int(math.ceil(len(code) / CHARS_PER_TOKEN))


def gencad_features(decode_images: bool = True) -> Any:
    """The ``datasets.Features`` of a GenCAD-Code split.

    Args:
        decode_images: whether the ``image`` column decodes to PIL images on access (``datasets.Image()``,
            what a built dataset stores) or stays encoded (``Image(decode=False)``, what the loader hands
            to the collator).
    """
    import datasets

    return datasets.Features({
        "image": datasets.Image(decode=decode_images),
        "deepcad_id": datasets.Value("string"),
        "cadquery": datasets.Value("string"),
        "token_count": datasets.Value("int64"),
        "prompt": datasets.Value("string"),
        "hundred_subset": datasets.Value("bool"),
    })
