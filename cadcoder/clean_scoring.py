"""Score generated programs in a sandbox child where no generated code ran: the metric's and the RL rewards' way.

A program and its score never share a process. Scoring is two sandbox jobs:

1. :func:`run_to_brep`: the program runs with :data:`cadcoder.tasks.REFERENCE`, which returns its validated
   solid as BREP bytes (each distinct program once; a failing program keeps its status and reason here);
2. :func:`score_breps`: :data:`cadcoder.tasks.SCORE_BREP` (:func:`cadcoder.brep_scoring.score_brep_task`) runs
   in a fresh child forked from the warm worker, with the fixed :data:`CLEAN_PROGRAM` as its "program". It
   loads the BREP, validates it again and computes the IoU and Chamfer distance against a reference's BREP
   and / or a render of the candidate.

A program that monkeypatches CadQuery, OpenCascade or numpy (``cq.Shape.importBrep``, ``Volume``,
``intersect``, ``np.argmax``...), prints a fake score, or fakes validity in step 1 changes at most the geometry
that crosses over as BREP: the score is then the honest score of that geometry, or a failure. Both steps go
through :meth:`cadcoder.sandbox.Sandbox.map` on the same warm workers.

This is the caller's side: it never imports CadQuery (the child side is :mod:`cadcoder.brep_scoring`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cadcoder.sandbox import Sandbox, SandboxJob, SandboxResult
from cadcoder.tasks import REFERENCE, SCORE_BREP

__all__ = ["CLEAN_PROGRAM", "run_to_brep", "clean_score_job", "clean_result", "score_breps"]

CLEAN_PROGRAM = "solid = cq.Workplane('XY').box(1, 1, 1)"
"""The fixed program of every scoring job; its own solid is ignored by the scoring task."""


def run_to_brep(sandbox: Sandbox, programs: Iterable[str], progress: bool | str = False) -> dict[str, SandboxResult]:
    """Step 1: run each distinct program once; its result holds the solid's BREP bytes, or its failure.

    Args:
        sandbox: an open :class:`cadcoder.sandbox.Sandbox`.
        programs: CadQuery sources (untrusted); repeats run once.
        progress: show a tqdm bar; a string is its description.

    Returns:
        ``{source: SandboxResult}``; ``value`` is the BREP when ``ok``.
    """
    todo = list(dict.fromkeys(programs))
    results = sandbox.map([SandboxJob(p, REFERENCE) for p in todo], progress=progress)
    return dict(zip(todo, results, strict=True))


def clean_score_job(candidate_brep: bytes, **score_kwargs: Any) -> SandboxJob:
    """Step 2 as a job: score ``candidate_brep`` in a clean child.

    ``score_kwargs`` are those of :func:`cadcoder.brep_scoring.score_brep_task`: ``reference_brep``,
    ``protocol``, ``fast``, ``chamfer_points``, ``seed``, ``render_size``, ``style``.
    """
    return SandboxJob(CLEAN_PROGRAM, SCORE_BREP, {"candidate_brep": candidate_brep, **score_kwargs})


def clean_result(scored: SandboxResult) -> SandboxResult:
    """A scoring job's outcome as the candidate's result.

    ``ok`` with the score dict of :func:`cadcoder.brep_scoring.score_brep_task` as ``value``; the sandbox's
    status when the scoring job itself failed (``timeout``, ``crashed``...); ``invalid_shape`` when the
    candidate's BREP does not load or holds no valid solid.
    """
    if scored.ok and not scored.value["valid"]:
        return SandboxResult(scored.value.get("status", "invalid_shape"), error=scored.value["error"], seconds=scored.seconds)
    if not scored.ok:
        return SandboxResult(scored.status, error=f"scoring failed: {scored.error}", seconds=scored.seconds, output=scored.output)
    return scored


def score_breps(
    sandbox: Sandbox,
    requests: Sequence[dict[str, Any]],
    progress: bool | str = False,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Step 2: score candidate solids given as BREP, each in a clean child, in parallel.

    Args:
        sandbox: an open :class:`cadcoder.sandbox.Sandbox`.
        requests: keyword arguments of :func:`clean_score_job`, one dict per candidate (``candidate_brep``
            and the score settings).
        progress: show a tqdm bar; a string is its description.
        on_result: called as ``on_result(index, result)`` with each :func:`clean_result` as it finishes.

    Returns:
        One :func:`clean_result` per request, in input order.
    """
    jobs = [clean_score_job(**kwargs) for kwargs in requests]
    hook = None if on_result is None else (lambda i, res: on_result(i, clean_result(res)))
    return [clean_result(r) for r in sandbox.map(jobs, progress=progress, on_result=hook)]
