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
"""The shape's BREP bytes: a reference's, or a candidate's handed over to :data:`SCORE_BREP`."""
SCORE_BREP = "cadcoder.brep_scoring:score_brep_task"
"""IoU, Chamfer distance and / or render of a solid given as BREP, in a child where no generated code ran
(run on :data:`cadcoder.clean_scoring.CLEAN_PROGRAM`; the metric and the RL rewards score only this way)."""
SCORE_BREP_BATCH = "cadcoder.brep_scoring:score_brep_batch_task"
""":data:`SCORE_BREP` for several candidates in one clean child (one fork, a shared reference normalised once)."""
RENDER = "cadcoder.render:render_task"
"""A render of the shape in the GenCAD-Code look (or a given :class:`cadcoder.render.RenderStyle`)."""
CANDIDATE = "cadcoder.export:candidate_task"
"""Summary and render of one inference candidate, for render-and-compare."""
EXPORT = "cadcoder.export:export_task"
"""STEP text, mesh arrays and preview of the chosen program's solid."""
SYNTH_SAMPLE = "cadcoder.synth.dataset:synth_sample_task"
"""Validation, geometry key and render of one synthetic program."""

ALL_TASKS: tuple[str, ...] = (DESCRIBE_SHAPE, REFERENCE, SCORE_BREP, SCORE_BREP_BATCH, RENDER, CANDIDATE, EXPORT, SYNTH_SAMPLE)
