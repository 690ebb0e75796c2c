"""Inside a sandbox child where no generated code ran: score a solid that arrives as BREP bytes.

The task of step 2 of clean scoring (the caller's side, and why, are in :mod:`cadcoder.clean_scoring`). The
child runs the fixed :data:`cadcoder.clean_scoring.CLEAN_PROGRAM`, whose own box :func:`score_brep_task`
ignores: it loads the candidate's BREP, validates it again (:func:`cadcoder.sandbox_program.collect_shape`)
and computes the IoU and Chamfer distance against the reference's BREP (:func:`cadcoder.geometry.score_task`)
and / or the render of the candidate (:func:`cadcoder.render.render_task`).

Every import is at module level: the worker imports this module before it forks and chroots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cadquery as cq  # noqa: F401  (loaded before the worker is jailed)

from cadcoder.alignment import union_solids
from cadcoder.geometry import score_task, shape_from_brep
from cadcoder.render import render_task
from cadcoder.sandbox_program import ProgramError, collect_shape

__all__ = ["load_candidate", "score_brep_task", "score_brep_batch_task"]


def load_candidate(candidate_brep: bytes) -> Any:
    """The candidate's solid, loaded from BREP and re-validated in this clean process.

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
    fast: bool = False,
    chamfer_points: int = 0,
    seed: int = 0,
    render_size: int | None = None,
    style: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sandbox task: score a candidate solid given as BREP, ignoring ``shape`` (the clean program's box).

    Args:
        shape: the solid of :data:`cadcoder.clean_scoring.CLEAN_PROGRAM` (unused).
        candidate_brep: the candidate's solid from :data:`cadcoder.tasks.REFERENCE`.
        reference_brep: the reference solid's BREP; ``None`` skips IoU and Chamfer distance.
        protocol, fast, chamfer_points, seed: settings of :func:`cadcoder.geometry.score_task`
            (``chamfer_points=0``: no Chamfer distance).
        render_size: side of a dataset-style render of the candidate; ``None`` skips it.
        style: :class:`cadcoder.render.RenderStyle` fields of the render (``None``: the dataset look).

    Returns:
        ``{"valid": True, "iou", "chamfer", "method", "search", "render"}`` (``None`` for what was not
        asked; the score keys are :func:`cadcoder.geometry.score_task`'s), or ``{"valid": False, "status": "invalid_shape",
        "error": str}`` when the candidate's BREP does not load or holds no valid solid.
    """
    try:
        solid = load_candidate(candidate_brep)
    except ProgramError as exc:
        return {"valid": False, "status": exc.status, "error": exc.error}
    out: dict[str, Any] = {"valid": True, "iou": None, "chamfer": None, "method": None, "search": None, "render": None}
    if reference_brep is not None:
        scored = score_task(solid, reference_brep, protocol=protocol, fast=fast, chamfer_points=chamfer_points, seed=seed)
        out.update(scored, iou=float(scored["iou"]))
    if render_size is not None:
        # Solids that overlap without a union would show each other's hidden edges: render their union, as
        # the IoU counts it, so several solids look like the one solid they make.
        out["render"] = render_task(union_solids(solid), int(render_size), **(style or {}))
    return out


def score_brep_batch_task(shape: Any, requests: Sequence[dict[str, Any]], budget_seconds: float) -> list[tuple[float, dict[str, Any]] | None]:
    """Sandbox task: :func:`score_brep_task` for several candidates in one clean child, in order.

    A reference shared by consecutive requests is loaded and normalised once (:func:`cadcoder.geometry.score_task`
    keeps the last few). Once ``budget_seconds`` have passed, the remaining requests are left undone; a request
    whose scoring raises is left undone too. The caller scores undone requests one per child
    (:func:`cadcoder.clean_scoring.score_breps`), where they get the sandbox's own timeout and failure report.

    Args:
        shape: the solid of :data:`cadcoder.clean_scoring.CLEAN_PROGRAM` (unused).
        requests: keyword arguments of :func:`score_brep_task`, one dict per candidate.
        budget_seconds: wall-clock seconds after which no further request is started.

    Returns:
        Per request, ``(seconds, score dict of score_brep_task)``, or ``None`` when it was left undone.
    """
    start = time.monotonic()
    out: list[tuple[float, dict[str, Any]] | None] = []
    for kwargs in requests:
        began = time.monotonic()
        if began - start > budget_seconds:
            out.append(None)
            continue
        try:
            scored = score_brep_task(shape, **kwargs)
            out.append((time.monotonic() - began, scored))
        except Exception:  # noqa: BLE001 - rerun alone by the caller, which reports the failure as usual
            out.append(None)
    return out
