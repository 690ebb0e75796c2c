"""Sandbox side of the RL rewards: score a solid from its BREP in a child where no generated code ran.

A reward is computed in two sandbox jobs, so that nothing a generated program does to its own process can
reach the score:

1. the program runs with :data:`cadcoder.tasks.REFERENCE`, which returns its validated solid as BREP bytes;
2. :func:`score_brep_task` runs in a fresh child forked from the warm worker, with the fixed
   :data:`CLEAN_PROGRAM` as its "program". It loads the BREP, validates it again and computes the IoU
   (:func:`cadcoder.geometry.score_task`) and / or the render of its union (:func:`cadcoder.render.render_task`).

A program that monkeypatches CadQuery, OpenCascade or numpy (``cq.Shape.Volume``, ``intersect``,
``np.argmax``...), prints a fake score, or fakes validity in step 1 changes at most the geometry that
crosses over as BREP: the score is then the honest score of that geometry, or a failure.

Every import is at module level: the worker imports this module before it forks and chroots.
"""

from __future__ import annotations

from typing import Any

import cadquery as cq  # noqa: F401  (loaded before the worker is jailed)

from cadcoder.alignment import union_solids
from cadcoder.geometry import score_task, shape_from_brep
from cadcoder.render import render_task
from cadcoder.sandbox_program import ProgramError, collect_shape

__all__ = ["CLEAN_PROGRAM", "score_brep_task"]

CLEAN_PROGRAM = "solid = cq.Workplane('XY').box(1, 1, 1)"
"""The fixed program of the scoring job; its own solid is ignored by :func:`score_brep_task`."""


def _load_solid(candidate_brep: bytes) -> Any:
    """The candidate's solid, re-validated in this clean process.

    Raises:
        ProgramError: ``invalid_shape`` when the bytes do not load or hold no valid solid of positive volume.
    """
    if not isinstance(candidate_brep, bytes | bytearray) or not candidate_brep:
        raise ProgramError("invalid_shape", "the program's solid did not serialise to BREP")
    try:
        shape = shape_from_brep(bytes(candidate_brep))
    except Exception as exc:  # noqa: BLE001 - OpenCascade raises assorted types on bad BREP
        raise ProgramError("invalid_shape", f"the program's BREP does not load: {type(exc).__name__}: {exc}"[:300]) from None
    return collect_shape(shape)


def score_brep_task(
    shape: Any,
    candidate_brep: bytes,
    reference_brep: bytes | None = None,
    protocol: str = "aligned",
    fast: bool = True,
    render_size: int | None = None,
    style: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sandbox task: score a candidate solid given as BREP, ignoring ``shape`` (the clean program's box).

    Args:
        shape: the solid of :data:`CLEAN_PROGRAM` (unused).
        candidate_brep: the generated program's solid from :data:`cadcoder.tasks.REFERENCE`.
        reference_brep: the reference solid's BREP; ``None`` skips the IoU.
        protocol, fast: IoU settings of :func:`cadcoder.geometry.score_task`.
        render_size: side of a dataset-style render of the candidate; ``None`` skips it.
        style: :class:`cadcoder.render.RenderStyle` fields of the render (``None``: the dataset look).

    Returns:
        ``{"valid": True, "iou": float | None, "render": array | None}``, or ``{"valid": False, "error": str}``
        when the candidate's solid does not load or is not a valid solid.
    """
    try:
        solid = _load_solid(candidate_brep)
    except ProgramError as exc:
        return {"valid": False, "error": exc.error}
    out: dict[str, Any] = {"valid": True, "iou": None, "render": None}
    if reference_brep is not None:
        out["iou"] = float(score_task(solid, reference_brep, protocol=protocol, fast=fast, chamfer_points=0)["iou"])
    if render_size is not None:
        # Solids that overlap without a union would show each other's hidden edges: render their union, as
        # the IoU counts it, so several solids look like the one solid they make.
        out["render"] = render_task(union_solids(solid), int(render_size), **(style or {}))
    return out
