"""The functions that run inside the sandbox on a program's validated shape, each named once.

A sandbox task is a module-level function ``task(shape, **kwargs) -> picklable`` that the worker imports
before it forks (see :class:`cadcoder.sandbox.Sandbox`). Callers pass these names instead of importing the
functions, so the parent process never imports CadQuery for a task it only hands on. Search for a constant
to find every caller of its task; ``tests/test_sandbox.py`` checks that each name resolves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

TaskRef = Union[str, Callable[..., Any]]
"""A task as a function object or as its ``"package.module:function"`` name."""

DESCRIBE_SHAPE = "cadcoder.sandbox_program:describe_shape"
"""Volume, bounding box and solid count of the shape (the default task)."""
REFERENCE = "cadcoder.geometry:reference_task"
"""A reference solid's BREP and normalisation, scored against later by :data:`SCORE`."""
SCORE = "cadcoder.geometry:score_task"
"""IoU and Chamfer distance of the shape against a reference from :data:`REFERENCE`."""
RENDER = "cadcoder.render:render_task"
"""A render of the shape in the GenCAD-Code look (or a given :class:`cadcoder.render.RenderStyle`)."""
CANDIDATE = "cadcoder.export:candidate_task"
"""Summary and render of one inference candidate, for render-and-compare."""
EXPORT = "cadcoder.export:export_task"
"""STEP text, mesh arrays and preview of the chosen program's solid."""
SYNTH_SAMPLE = "cadcoder.synth.dataset:synth_sample_task"
"""Validation, geometry key and render of one synthetic program."""
RL_SCORE_BREP = "cadcoder.rl.scoring:score_brep_task"
"""IoU and / or render of a solid given as BREP, in a child where no generated code ran (the RL rewards)."""

ALL_TASKS: tuple[str, ...] = (DESCRIBE_SHAPE, REFERENCE, SCORE, RENDER, CANDIDATE, EXPORT, SYNTH_SAMPLE, RL_SCORE_BREP)
