"""Score generated programs in a sandbox child where no generated code ran: the metric's and the RL rewards' way.

A program and its score never share a process. Scoring is two sandbox jobs:

1. :func:`run_to_brep`: the program runs with :data:`cadcoder.tasks.REFERENCE`, which returns its validated
   solid as BREP bytes (each distinct program once; a failing program keeps its status and reason here);
2. :func:`score_breps`: :data:`cadcoder.tasks.SCORE_BREP` (:func:`cadcoder.brep_scoring.score_brep_task`) runs
   in a fresh child forked from the warm worker, with the fixed :data:`CLEAN_PROGRAM` as its "program". It
   loads the BREP, validates it again and computes the IoU and Chamfer distance against a reference's BREP
   and / or a render of the candidate. Up to :data:`BATCH_SIZE` candidates share one such child
   (:data:`cadcoder.tasks.SCORE_BREP_BATCH`); no generated code runs there, so sharing it is safe, and a batch
   that fails is scored again one candidate per child.

A program that monkeypatches CadQuery, OpenCascade or numpy (``cq.Shape.importBrep``, ``Volume``,
``intersect``, ``np.argmax``...), prints a fake score, or fakes validity in step 1 changes at most the geometry
that crosses over as BREP: the score is then the honest score of that geometry, or a failure. Both steps go
through :meth:`cadcoder.sandbox.Sandbox.map` on the same warm workers.

This is the caller's side: it never imports CadQuery (the child side is :mod:`cadcoder.brep_scoring`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cadcoder.sandbox import Sandbox, SandboxJob, SandboxResult, progress_bar
from cadcoder.tasks import REFERENCE, SCORE_BREP, SCORE_BREP_BATCH

__all__ = ["BATCH_SIZE", "CLEAN_PROGRAM", "run_to_brep", "clean_score_job", "clean_result", "score_breps"]

CLEAN_PROGRAM = "solid = cq.Workplane('XY').box(1, 1, 1)"
"""The fixed program of every scoring job; its own solid is ignored by the scoring task."""
BATCH_SIZE = 8
"""Most candidates :func:`score_breps` scores in one clean child (one RL group: K programs for one image)."""


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


def _batches(count: int, num_workers: int) -> list[range]:
    """Consecutive request positions in batches of at most :data:`BATCH_SIZE`, at least 4 batches per worker."""
    size = max(1, min(BATCH_SIZE, math.ceil(count / (4 * max(1, num_workers)))))
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def score_breps(
    sandbox: Sandbox,
    requests: Sequence[dict[str, Any]],
    progress: bool | str = False,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Step 2: score candidate solids given as BREP in clean children, in parallel.

    Consecutive requests share one clean child, up to :data:`BATCH_SIZE` of them
    (:data:`cadcoder.tasks.SCORE_BREP_BATCH`: one fork, and a reference they share normalised once). A request
    its batch left undone (a raise, the batch's time budget of half the sandbox timeout spent) and every request
    of a batch that failed as a whole (a crash, a timeout) is scored again in a child of its own, whose outcome
    is then its result: batching changes no score and no failure status.

    Args:
        sandbox: an open :class:`cadcoder.sandbox.Sandbox`.
        requests: keyword arguments of :func:`clean_score_job`, one dict per candidate (``candidate_brep``
            and the score settings).
        progress: show a tqdm bar; a string is its description.
        on_result: called as ``on_result(index, result)`` with each :func:`clean_result` as it finishes.

    Returns:
        One :func:`clean_result` per request, in input order.
    """
    results: list[SandboxResult | None] = [None] * len(requests)
    bar = progress_bar(progress, len(requests))
    undone: list[int] = []

    def settle(index: int, scored: SandboxResult) -> None:
        results[index] = clean_result(scored)
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(index, results[index])

    def batch_done(k: int, res: SandboxResult) -> None:
        positions = batches[k]
        items = res.value if res.ok and isinstance(res.value, list) and len(res.value) == len(positions) else [None] * len(positions)
        for index, item in zip(positions, items):
            if item is None:
                undone.append(index)
            else:
                settle(index, SandboxResult("ok", value=item[1], seconds=item[0]))

    planned = _batches(len(requests), sandbox.num_workers)
    batches = [b for b in planned if len(b) > 1]
    undone.extend(b[0] for b in planned if len(b) == 1)
    try:
        budget = sandbox.timeout / 2
        jobs = [SandboxJob(CLEAN_PROGRAM, SCORE_BREP_BATCH, {"requests": [requests[i] for i in b], "budget_seconds": budget})
                for b in batches]  # fmt: skip
        sandbox.map(jobs, on_result=batch_done)
        alone = sorted(undone)
        sandbox.map([clean_score_job(**requests[i]) for i in alone], on_result=lambda j, res: settle(alone[j], res))
    finally:
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]
