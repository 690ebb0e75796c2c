"""Model-free candidate selection: run candidate programs in the sandbox, score them, pick one per image.

:func:`select_programs` takes candidate programs (from any model, or written by hand), runs each in
:class:`cadcoder.sandbox.Sandbox`, and keeps one per image with a strategy:

* ``"greedy"``: candidate 0 only.
* ``"first_valid"``: the first candidate, in order, that executes to a valid solid.
* ``"render_compare"``: every candidate runs; the valid ones are rendered in the dataset style inside the
  worker and each render is scored against the input image with
  :func:`cadcoder.image_metrics.image_similarity`. The best score wins; ties go to the earlier candidate.
  An invalid candidate is never chosen while a valid one exists.

The winners are exported inside the worker (:func:`cadcoder.export.export_task`) into the result types of
:mod:`cadcoder.predictions`. :func:`cadcoder.inference.generate_cad` samples the candidates and then calls
:func:`run_candidates` and :func:`finish_predictions`.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from cadcoder.predictions import EMPTY, NO_VALID, NOT_RUN, CadPrediction, Candidate
from cadcoder.tasks import CANDIDATE, EXPORT

__all__ = [
    "STRATEGIES",
    "ProgressCallback",
    "NOT_RUN",
    "EMPTY",
    "NO_VALID",
    "Candidate",
    "CadPrediction",
    "check_strategy",
    "run_candidates",
    "finish_predictions",
    "select_programs",
    "default_num_workers",
    "scoring_render_size",
]

STRATEGIES: tuple[str, ...] = ("greedy", "first_valid", "render_compare")

#: ``on_progress(stage, done, total)``: ``stage`` is ``"generating"``, ``"running"`` or ``"exporting"``.
ProgressCallback = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------------
# Running candidates
# ------------------------------------------------------------------------------------------------
def check_strategy(strategy: str) -> None:
    """Raise ``ValueError`` naming the valid strategies when ``strategy`` is not one of :data:`STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def default_num_workers() -> int:
    """Worker slots of a sandbox opened for one inference call: the CPU count, at most 4."""
    return min(4, os.cpu_count() or 1)


def scoring_render_size(image: Image.Image, lo: int = 64, hi: int = 448) -> int:
    """Side of the render compared with ``image``: the input's own scale, so line widths look alike.

    Clipped to ``[lo, hi]`` pixels.
    """
    return int(min(max(max(image.size), lo), hi))




def _normalise_program(code: str) -> str:
    """The program as executed: outer blank lines and trailing spaces carry no meaning for Python."""
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


@dataclass
class _Job:
    """One candidate to run, the keyword arguments of its task, and what to do with a valid result."""

    cand: Candidate
    kwargs: dict[str, Any]
    hook: Callable[[Candidate, Any], None] | None = None


def _record(job: _Job, res: Any) -> None:
    cand = job.cand
    cand.status, cand.error, cand.seconds = res.status, res.error, res.seconds
    if res.ok:
        cand.summary = res.value.get("summary") if isinstance(res.value, dict) else None
        if job.hook is not None:
            job.hook(cand, res.value)


def _execute(
    sandbox: Any, jobs: list[_Job], deadline: float | None, always_run: set[int], on_progress: ProgressCallback | None
) -> None:
    """Run the jobs' candidates in the sandbox in parallel, in order; fill status/error/summary; call hooks.

    Without a deadline every job runs in one :meth:`Sandbox.map`. With one, jobs go in waves as wide as the
    sandbox; a wave that starts after ``deadline`` skips its jobs (``not_run``), except candidates whose
    ``id()`` is in ``always_run``. ``on_progress("running", done, total)`` follows each finished job.
    """
    if not jobs:
        return
    width = len(jobs) if deadline is None else max(1, int(getattr(sandbox, "num_workers", 1)))
    from cadcoder.sandbox import SandboxJob

    done = [0]

    def record(job: _Job, res: Any) -> None:
        _record(job, res)
        done[0] += 1
        if on_progress is not None:
            on_progress("running", done[0], len(jobs))

    for start in range(0, len(jobs), width):
        wave = jobs[start : start + width]
        if deadline is not None and time.monotonic() > deadline:
            for job in wave:
                if id(job.cand) not in always_run:
                    job.cand.status, job.cand.reason = NOT_RUN, "time budget exhausted before it could run"
            wave = [job for job in wave if id(job.cand) in always_run]
        items = [SandboxJob(job.cand.program, CANDIDATE, job.kwargs) for job in wave]
        sandbox.map(items, on_result=lambda i, res, _wave=wave: record(_wave[i], res))


def _copy_outcome(dst: Candidate, src: Candidate) -> None:
    dst.status, dst.error, dst.summary, dst.score, dst.render = src.status, src.error, src.summary, src.score, src.render
    if dst.status == NOT_RUN:
        dst.reason = src.reason


def _scoring_hook(image: Image.Image, keep_renders: bool) -> Callable[[Candidate, Any], None]:
    """Score a valid candidate's render against ``image`` (a valid solid whose render failed ranks last)."""
    from cadcoder.image_metrics import image_similarity

    def hook(cand: Candidate, value: Any) -> None:
        render = value.get("render")
        if render is None:
            cand.error = value.get("render_error", "render failed")
            return
        cand.score = float(image_similarity(image, render))
        if keep_renders:
            cand.render = render

    return hook


def run_candidates(
    sandbox: Any,
    images: Sequence[Image.Image],
    pools: Sequence[Sequence[Candidate]],
    strategy: str,
    deadline: float | None = None,
    render_style: dict[str, Any] | None = None,
    keep_renders: bool = False,
    upto: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> None:
    """Execute (and for ``render_compare`` render and score) the not-yet-run candidates of each pool.

    Args:
        sandbox: an open :class:`cadcoder.sandbox.Sandbox`.
        images: the input image of each pool.
        pools: per image, its candidates; they are updated in place.
        strategy: one of :data:`STRATEGIES`; ``render_compare`` renders and scores valid candidates.
        deadline: ``time.monotonic()`` after which queued candidates are skipped (each image still gets its
            first candidate run); ``None``: no limit.
        render_style: :class:`cadcoder.render.RenderStyle` fields of the scoring renders.
        keep_renders: keep each candidate's scoring render in ``Candidate.render``.
        upto: only candidates with ``index < upto`` run (all when ``None``).
        on_progress: called as ``on_progress("running", done, total)`` after each program finishes.

    A program identical to one already run in the same pool is not run again but copies its outcome.
    """
    jobs: list[_Job] = []
    duplicates: list[tuple[Candidate, Candidate]] = []
    always_run: set[int] = set()
    for image, pool in zip(images, pools):
        seen: dict[str, Candidate] = {}
        for cand in pool:
            key = _normalise_program(cand.program)
            if cand.status != NOT_RUN or cand.reason:
                seen.setdefault(key, cand)
                continue
            if upto is not None and cand.index >= upto:
                continue
            if not key:
                cand.status, cand.error = EMPTY, "nothing left after post-processing the generated text"
                continue
            if key in seen:
                duplicates.append((cand, seen[key]))
                continue
            seen[key] = cand
            if not any(c.status not in (NOT_RUN, EMPTY) or id(c) in always_run for c in pool):
                always_run.add(id(cand))  # every image gets at least one candidate executed
            if strategy == "render_compare":
                kwargs = {"render_size": scoring_render_size(image), "style": render_style}
                jobs.append(_Job(cand, kwargs, _scoring_hook(image, keep_renders)))
            else:
                jobs.append(_Job(cand, {"render_size": None}))
    _execute(sandbox, jobs, deadline, always_run, on_progress)
    for dup, orig in duplicates:
        _copy_outcome(dup, orig)
        if dup.status != NOT_RUN:
            dup.reason = f"duplicate of candidate {orig.index}"


# ------------------------------------------------------------------------------------------------
# Choosing and finishing
# ------------------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _failure_reason(c: Candidate) -> str:
    return f"{c.status}: {c.error}" if c.error else c.status


def _choose(pool: Sequence[Candidate], strategy: str) -> Candidate | None:
    """Pick the winner of a pool and write every candidate's reason."""
    valid = [c for c in pool if c.ok]
    if not valid:
        for c in pool:
            if not c.reason:
                c.reason = _failure_reason(c)
        return None
    if strategy == "render_compare":
        best = max(valid, key=lambda c: (-math.inf if c.score is None else c.score, -c.index))
    else:  # greedy and first_valid: the first valid candidate in order
        best = valid[0]
    best.selected = True
    best.reason = {
        "greedy": "greedy decoding",
        "first_valid": "first candidate that executes to a valid solid",
        "render_compare": f"highest render-and-compare score ({_fmt(best.score)}) of {len(valid)} valid candidates",
    }[strategy]
    for c in pool:
        if c is best:
            continue
        if c.ok and not c.reason.startswith("duplicate"):
            c.reason = (
                f"valid, but scored lower ({_fmt(c.score)} <= {_fmt(best.score)})"
                if strategy == "render_compare"
                else f"valid, but candidate {best.index} came first"
            )
        elif c.status == NOT_RUN and not c.reason:
            c.reason = f"not needed: candidate {best.index} was already valid"
        elif not c.reason:
            c.reason = _failure_reason(c)
    return best


def _failure_message(pool: Sequence[Candidate]) -> str:
    counts = Counter(c.status for c in pool)
    detail = ", ".join(f"{k} x{v}" for k, v in counts.most_common())
    return f"none of {len(pool)} candidate(s) executed to a valid solid ({detail}); see .candidates for each error"


def _prediction(pool: Sequence[Candidate], strategy: str, seconds: float) -> CadPrediction:
    """The pool's winner as a prediction, or a failure that keeps the first program for inspection."""
    best = _choose(pool, strategy)
    if best is None:
        program = next((c.program for c in pool if c.program.strip()), pool[0].program if pool else "")
        return CadPrediction(program=program, status=NO_VALID, strategy=strategy, error=_failure_message(pool),
                             candidates=list(pool), seconds=seconds)  # fmt: skip
    return CadPrediction(program=best.program, status="ok", strategy=strategy, score=best.score,
                         solid=best.summary, candidates=list(pool), seconds=seconds)  # fmt: skip


def _export(sandbox: Any, predictions: Sequence[CadPrediction], preview_size: int, style: dict[str, Any] | None) -> None:
    """STEP text, mesh and preview render of each valid prediction, made in the sandbox."""
    todo = [p for p in predictions if p.ok]
    results = sandbox.map([p.program for p in todo], task=EXPORT, render_size=int(preview_size), style=style)
    for pred, res in zip(todo, results):
        if not res.ok:  # ran fine moments ago: a flaky worker; report, keep the program
            pred.export_errors["run"] = f"{res.status}: {res.error}"
            continue
        value = res.value
        pred.step, pred.vertices, pred.faces, pred.render = value["step"], value["vertices"], value["faces"], value["render"]
        pred.export_errors.update(value.get("errors") or {})


def finish_predictions(
    sandbox: Any,
    pools: Sequence[list[Candidate]],
    strategy: str,
    seconds_per_image: Sequence[float],
    export: bool = True,
    preview_size: int = 448,
    render_style: dict[str, Any] | None = None,
) -> list[CadPrediction]:
    """Choose per pool, export the winners in the sandbox, and return one prediction per pool.

    Args:
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` (used only with ``export``).
        pools: per image, its candidates after :func:`run_candidates`.
        strategy: one of :data:`STRATEGIES`.
        seconds_per_image: wall-clock seconds to report for each pool.
        export: produce STEP text, a mesh and a preview render of each chosen solid.
        preview_size: side of the exported render in pixels.
        render_style: :class:`cadcoder.render.RenderStyle` fields of the preview render.
    """
    predictions = [_prediction(pool, strategy, secs) for pool, secs in zip(pools, seconds_per_image)]
    if export:
        _export(sandbox, predictions, preview_size, render_style)
    return predictions


def _run_first_valid(sandbox: Any, images: Sequence[Image.Image], pools: list[list[Candidate]], **kw: Any) -> None:
    """Run candidates in waves as wide as the sandbox; later waves only for images still unsolved."""
    width = max(1, int(getattr(sandbox, "num_workers", 1)))
    longest = max(len(p) for p in pools)
    for start in range(0, longest, width):
        active = [k for k, p in enumerate(pools) if not any(c.ok for c in p)]
        if not active:
            break
        run_candidates(sandbox, [images[k] for k in active], [pools[k] for k in active], "first_valid",
                       upto=start + width, **kw)  # fmt: skip


def select_programs(
    images: Sequence[Any],
    candidates: Sequence[Sequence[str]],
    strategy: str = "render_compare",
    sandbox: Any = None,
    export: bool = True,
    timeout: float = 10.0,
    num_workers: int | None = None,
    preview_size: int = 448,
    render_style: dict[str, Any] | None = None,
    keep_renders: bool = False,
    greedy_first: bool = False,
) -> list[CadPrediction]:
    """Run given candidate programs, pick one per image with ``strategy``, and export the winners.

    This is the model-free half of :func:`cadcoder.inference.generate_cad`.

    Args:
        images: one input image per entry of ``candidates`` (PIL, numpy, or a path).
        candidates: per image, the candidate programs in order of preference for ties and ``first_valid``.
        strategy: ``"greedy"`` (candidate 0 only), ``"first_valid"`` or ``"render_compare"``.
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse; ``None`` starts one for this call.
        export: also produce STEP text, a mesh and a preview render of each chosen solid.
        timeout, num_workers: settings of the sandbox started when ``sandbox`` is None.
        preview_size: side of the exported render in pixels.
        render_style: :class:`cadcoder.render.RenderStyle` fields for the renders (``None``: dataset look).
        keep_renders: keep each candidate's scoring render in ``Candidate.render``.
        greedy_first: mark candidate 0 as greedy-decoded (``sampled=False``) in the report.

    Returns:
        One :class:`CadPrediction` per image.
    """
    from processing_cadcoder import to_rgb_image

    from cadcoder.sandbox import borrow_or_open

    check_strategy(strategy)
    pil = [to_rgb_image(im) for im in images]
    if len(pil) != len(candidates):
        raise ValueError(f"got {len(pil)} image(s) but {len(candidates)} candidate list(s); pass one list per image")
    pools: list[list[Candidate]] = []
    for progs in candidates:
        progs = list(progs)[:1] if strategy == "greedy" else list(progs)
        if not progs:
            raise ValueError("every image needs at least one candidate program")
        pools.append([Candidate(i, p, sampled=not (greedy_first and i == 0)) for i, p in enumerate(progs)])
    workers = num_workers if num_workers is not None else default_num_workers()
    with borrow_or_open(sandbox, num_workers=workers, timeout=timeout) as sb:
        t0 = time.monotonic()
        if strategy == "first_valid":
            _run_first_valid(sb, pil, pools, render_style=render_style, keep_renders=keep_renders)
        else:
            run_candidates(sb, pil, pools, strategy, render_style=render_style, keep_renders=keep_renders)
        per_image = (time.monotonic() - t0) / max(1, len(pil))
        return finish_predictions(sb, pools, strategy, [per_image] * len(pil), export=export,
                                  preview_size=preview_size, render_style=render_style)  # fmt: skip
