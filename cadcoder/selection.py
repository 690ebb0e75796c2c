"""Model-free candidate selection: run candidate programs in the sandbox, score them, pick one per image.

:func:`select_programs` takes candidate programs (from any model, or written by hand), runs each in
:class:`cadcoder.sandbox.Sandbox`, and keeps one per image with a strategy:

* ``"greedy"``: candidate 0 only.
* ``"first_valid"``: the first candidate, in order, that executes to a valid solid.
* ``"render_compare"``: every candidate runs; the valid ones are rendered in the dataset style inside the
  worker and each render is scored against the input image with
  :func:`cadcoder.image_metrics.image_similarity`. The best score wins; ties go to the earlier candidate.
  An invalid candidate is never chosen while a valid one exists.

Solids cannot cross process boundaries, so a :class:`CadPrediction` carries the winner as STEP text and a
triangle mesh produced inside the worker (:func:`cadcoder.export.export_task`), plus a summary and a render.
:func:`cadcoder.inference.generate_cad` samples the candidates and then calls the pieces of this module.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cadcoder.tasks import CANDIDATE, EXPORT

__all__ = [
    "STRATEGIES",
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
]

STRATEGIES: tuple[str, ...] = ("greedy", "first_valid", "render_compare")
#: Statuses a candidate can have besides the sandbox's ``"ok"`` and :data:`cadcoder.sandbox.FAILURE_REASONS`.
NOT_RUN = "not_run"
EMPTY = "empty"
NO_VALID = "no_valid_candidate"


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One candidate program and what happened to it.

    Attributes:
        index: position in the image's candidate list (0 is the greedy program when it was included).
        program: cleaned CadQuery source.
        sampled: ``False`` for the greedy-decoded candidate.
        status: ``"ok"`` (executes to a valid solid), a sandbox failure reason (``"syntax_error"``,
            ``"runtime_error"``, ``"timeout"``, ``"invalid_shape"``, ``"forbidden"``...), ``"empty"``
            (nothing left after post-processing) or ``"not_run"`` (not executed; see ``reason``).
        error: the sandbox's short detail for a failure.
        score: render-and-compare similarity to the input image in [0, 1] (``render_compare`` only).
        summary: volume, bounding box and counts of the solid when ``status == "ok"``.
        selected: whether this candidate is the prediction.
        reason: why it was chosen or rejected, in words.
        seconds: sandbox wall-clock seconds spent on it.
        render: the dataset-style render used for scoring (kept only with ``keep_renders=True``).
    """

    index: int
    program: str
    sampled: bool = True
    status: str = NOT_RUN
    error: str = ""
    score: float | None = None
    summary: dict[str, Any] | None = None
    selected: bool = False
    reason: str = ""
    seconds: float = 0.0
    render: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the program executed to a valid solid."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (no render)."""
        return {
            "index": self.index, "sampled": self.sampled, "status": self.status, "error": self.error,
            "score": self.score, "selected": self.selected, "reason": self.reason,
            "seconds": round(self.seconds, 4), "summary": self.summary, "program": self.program,
        }  # fmt: skip


@dataclass
class CadPrediction:
    """The answer for one image.

    Attributes:
        program: the chosen program; when no candidate was valid, the first candidate (for inspection).
        status: ``"ok"`` or ``"no_valid_candidate"``.
        error: why it failed (counts of the candidates' failure reasons); empty when ok.
        score: the chosen candidate's render-and-compare score (``render_compare`` only, else ``None``).
        strategy: the strategy used.
        solid: summary of the solid (``volume``, ``bbox``, ``n_solids``, ``n_faces``) when ok.
        step: the solid as STEP (AP214) text, when exported.
        vertices, faces: the solid's triangle mesh (vertices merged), when exported.
        render: a dataset-style (H, W, 3) uint8 render of the solid, when exported.
        export_errors: exports that failed (``{"step": message, ...}``); the others are still there.
        candidates: every candidate in order, with its status, score and the reason it was chosen or rejected.
        seconds: wall-clock seconds per image (its share of the batch's generation and execution time).
    """

    program: str
    status: str
    strategy: str
    error: str = ""
    score: float | None = None
    solid: dict[str, Any] | None = None
    step: str | None = field(default=None, repr=False)
    vertices: np.ndarray | None = field(default=None, repr=False)
    faces: np.ndarray | None = field(default=None, repr=False)
    render: np.ndarray | None = field(default=None, repr=False)
    export_errors: dict[str, str] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when ``program`` executes to a valid solid."""
        return self.status == "ok"

    @property
    def rejected(self) -> list[Candidate]:
        """The candidates that were not chosen, each with its ``status`` and ``reason``."""
        return [c for c in self.candidates if not c.selected]

    def rejection_counts(self) -> dict[str, int]:
        """How many candidates were rejected for each status (``"ok"`` = valid but scored lower or later)."""
        return dict(Counter(c.status for c in self.rejected))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly report (no STEP text, mesh or render)."""
        return {
            "status": self.status, "error": self.error, "strategy": self.strategy, "score": self.score,
            "solid": self.solid, "export_errors": self.export_errors, "seconds": round(self.seconds, 4),
            "program": self.program, "rejection_counts": self.rejection_counts(),
            "candidates": [c.to_dict() for c in self.candidates],
        }  # fmt: skip

    def save(self, out_dir: str | os.PathLike, input_image: Image.Image | None = None) -> dict[str, Path]:
        """Write ``part.py``, ``part.step``, ``part.stl``, ``part_preview.png`` and ``report.json`` into ``out_dir``.

        Only ``report.json`` is written when the prediction failed. The preview shows ``input_image`` and
        the render side by side (the render alone without an input image).

        Returns:
            The written paths keyed ``"program"``, ``"step"``, ``"stl"``, ``"preview"``, ``"report"``.
        """
        from cadcoder.export import write_part_files

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        if self.ok:
            paths.update(write_part_files(out, self.program, self.step, self.vertices, self.faces,
                                          self._preview(input_image)))  # fmt: skip
        paths["report"] = out / "report.json"
        paths["report"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return paths

    def _preview(self, input_image: Image.Image | None) -> Image.Image | None:
        """The render, beside the input image when there is one (``None`` without a render)."""
        if self.render is None:
            return None
        rendered = Image.fromarray(np.asarray(self.render, dtype=np.uint8), mode="RGB")
        if input_image is None:
            return rendered
        from cadcoder.render import side_by_side

        label = "prediction" if self.score is None else f"prediction (score {self.score:.2f})"
        return side_by_side(input_image, rendered, labels=("input", label))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


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


def _render_size(image: Image.Image, lo: int = 64, hi: int = 448) -> int:
    """Render candidates at the input's own scale, so line widths look alike (clipped to [lo, hi])."""
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


def _execute(sandbox: Any, jobs: list[_Job], deadline: float | None, always_run: set[int]) -> None:
    """Run the jobs' candidates in the sandbox in parallel, in order; fill status/error/summary; call hooks.

    Without a deadline every job runs in one :meth:`Sandbox.map`. With one, jobs go in waves as wide as the
    sandbox; a wave that starts after ``deadline`` skips its jobs (``not_run``), except candidates whose
    ``id()`` is in ``always_run``.
    """
    if not jobs:
        return
    width = len(jobs) if deadline is None else max(1, int(getattr(sandbox, "num_workers", 1)))
    from cadcoder.sandbox import SandboxJob

    for start in range(0, len(jobs), width):
        wave = jobs[start : start + width]
        if deadline is not None and time.monotonic() > deadline:
            for job in wave:
                if id(job.cand) not in always_run:
                    job.cand.status, job.cand.reason = NOT_RUN, "time budget exhausted before it could run"
            wave = [job for job in wave if id(job.cand) in always_run]
        items = [SandboxJob(job.cand.program, CANDIDATE, job.kwargs) for job in wave]
        sandbox.map(items, on_result=lambda i, res, _wave=wave: _record(_wave[i], res))


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
                kwargs = {"render_size": _render_size(image), "style": render_style}
                jobs.append(_Job(cand, kwargs, _scoring_hook(image, keep_renders)))
            else:
                jobs.append(_Job(cand, {"render_size": None}))
    _execute(sandbox, jobs, deadline, always_run)
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
