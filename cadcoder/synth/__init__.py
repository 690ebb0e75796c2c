"""Synthetic GenCAD-style data: procedural CadQuery programs and the resumable dataset builder.

* :mod:`cadcoder.synth.profiles`: the 2-D profiles (loops, outer-profile families, holes);
* :mod:`cadcoder.synth.programs`: sketch planes, features and the program text (:func:`generate_program`);
* :mod:`cadcoder.synth.dataset`: execution, validation, dedup and rendering through the sandbox, into a
  sharded, resumable work folder and a ``DatasetDict`` (:func:`build_synthetic_dataset`,
  :func:`build_synthetic_mix`, ``cadcoder synth``).

``generate_program(rng, complexity=...)`` is pure python + numpy and deterministic by seed;
``build_synthetic_dataset`` runs every program through :class:`cadcoder.sandbox.Sandbox`.
"""

from cadcoder.corpus_stats import corpus_stats
from cadcoder.schema import CHARS_PER_TOKEN, GENCAD_COLUMNS, GENCAD_PROMPT, SPLIT_NAMES, approx_token_count
from cadcoder.synth.dataset import (
    build_synthetic_dataset,
    build_synthetic_mix,
    code_key,
    code_skeleton,
    geometry_key,
    sample_seed,
    synth_cli,
    synth_sample_task,
)
from cadcoder.synth.profiles import MAX_LOOPS, SKETCH_UNITS
from cadcoder.synth.programs import COMPLEXITY_LEVELS, GRID, MAX_SCALE_STEPS, VALUE_RANGE, generate_program

__all__ = [
    "CHARS_PER_TOKEN",
    "COMPLEXITY_LEVELS",
    "GENCAD_COLUMNS",
    "GENCAD_PROMPT",
    "GRID",
    "MAX_LOOPS",
    "MAX_SCALE_STEPS",
    "SKETCH_UNITS",
    "SPLIT_NAMES",
    "VALUE_RANGE",
    "approx_token_count",
    "build_synthetic_dataset",
    "build_synthetic_mix",
    "code_key",
    "code_skeleton",
    "corpus_stats",
    "generate_program",
    "geometry_key",
    "sample_seed",
    "synth_cli",
    "synth_sample_task",
]
