"""Execution-guided inference: sample several programs, run them, render them, keep the one that fits the image.

A model that writes code can also run it. :func:`generate_cad` offers three strategies:

* ``"greedy"``: one greedy-decoded program per image.
* ``"first_valid"``: the greedy program first (``include_greedy=True``), then sampled ones, in rounds; the
  first candidate that executes to a valid solid wins. Images that are solved stop sampling.
* ``"render_compare"``: the greedy program plus samples, up to ``num_candidates``; every candidate runs in
  the sandbox, the valid ones are rendered in the dataset style inside the worker, and each render is scored
  against the input image with :func:`cadcoder.image_metrics.image_similarity` (silhouette IoU plus
  line-map F1 after cropping both images to the part, since dataset parts are not size-normalised). The best
  score wins; ties go to the earlier candidate, so the greedy program wins ties. An invalid candidate is
  never chosen while a valid one exists.

Papers that report best-of-N (CAD-Recode, cadrille) choose the winner by IoU against the ground truth: an
oracle no user has. ``benchmarks/inference_strategies.py`` measures how close render-and-compare gets to it.

Generated code runs only in :class:`cadcoder.sandbox.Sandbox`. Solids cannot cross process boundaries, so a
prediction carries the solid as STEP text and a triangle mesh produced inside the worker
(:func:`cadcoder.export.export_task`), plus a summary (volume, bounding box, counts) and a render.

The model-free half, :func:`select_programs`, runs, scores and picks among given candidate programs; it is
what :func:`generate_cad` calls after sampling, and it is usable on its own (e.g. with programs from another
model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "STRATEGIES",
    "Candidate",
    "CadPrediction",
    "generate_cad",
    "select_programs",
    "load_image",
    "load_model",
    "generate_cli",
]

STRATEGIES: tuple[str, ...] = ("greedy", "first_valid", "render_compare")
#: Statuses a candidate can have besides the sandbox's ``"ok"`` and :data:`cadcoder.sandbox.FAILURE_REASONS`.
NOT_RUN = "not_run"
EMPTY = "empty"
NO_VALID = "no_valid_candidate"
_EXPORT_TASK = "cadcoder.export:export_task"
_CANDIDATE_TASK = "cadcoder.export:candidate_task"


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
            preview = None
            if self.render is not None:
                rendered = Image.fromarray(np.asarray(self.render, dtype=np.uint8), mode="RGB")
                if input_image is not None:
                    from cadcoder.render import side_by_side

                    label = "prediction" if self.score is None else f"prediction (score {self.score:.2f})"
                    preview = side_by_side(input_image, rendered, labels=("input", label))
                else:
                    preview = rendered
            paths.update(write_part_files(out, self.program, self.step, self.vertices, self.faces, preview))
        paths["report"] = out / "report.json"
        paths["report"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so the file is closed) and return it.

    Raises:
        FileNotFoundError: the path does not exist or is a folder.
        ValueError: the file is not an image PIL can read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {p}; pass the path of a PNG or JPEG image of a part")
    if p.is_dir():
        raise FileNotFoundError(f"{p} is a folder, not an image file; pass the image files inside it (e.g. {p}/*.png)")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{p} is not a readable image ({type(exc).__name__}: {exc}); pass a PNG or JPEG file") from None


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if hasattr(image, "detach"):  # torch tensor, CHW
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    from cadcoder.image_metrics import to_rgb_array

    return Image.fromarray(to_rgb_array(arr), mode="RGB")


def _render_size(image: Image.Image, lo: int = 64, hi: int = 448) -> int:
    """Render candidates at the input's own scale, so line widths look alike (clipped to [lo, hi])."""
    return int(min(max(max(image.size), lo), hi))


def _normalise_program(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


# ------------------------------------------------------------------------------------------------
# Execution and selection (model-free)
# ------------------------------------------------------------------------------------------------
def _execute(
    sandbox: Any,
    jobs: list[tuple[Candidate, str, dict[str, Any], Callable[[Candidate, Any], None] | None]],
    deadline: float | None,
    always_run: set[int],
) -> None:
    """Run candidates in the sandbox in parallel, in order; fill status/error/summary; call each job's hook.

    Jobs whose turn comes after ``deadline`` are skipped (``not_run``), except those whose ``id()`` is in
    ``always_run``. Identical programs of the same list are run once.
    """
    if not jobs:
        return

    def one(job: tuple[Candidate, str, dict[str, Any], Any]) -> None:
        cand, task, kwargs, hook = job
        if deadline is not None and time.monotonic() > deadline and id(cand) not in always_run:
            cand.status, cand.reason = NOT_RUN, "time budget exhausted before it could run"
            return
        res = sandbox.run(cand.program, task=task, **kwargs)
        cand.status, cand.error, cand.seconds = res.status, res.error, res.seconds
        if res.ok:
            cand.summary = res.value.get("summary") if isinstance(res.value, dict) else None
            if hook is not None:
                hook(cand, res.value)

    workers = max(1, min(int(getattr(sandbox, "num_workers", 1)), len(jobs)))
    if workers == 1:
        for job in jobs:
            one(job)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, jobs))


def _copy_outcome(dst: Candidate, src: Candidate) -> None:
    dst.status, dst.error, dst.summary, dst.score, dst.render = src.status, src.error, src.summary, src.score, src.render
    if dst.status == NOT_RUN:
        dst.reason = src.reason


def _run_candidates(
    sandbox: Any,
    images: Sequence[Image.Image],
    pools: Sequence[Sequence[Candidate]],
    strategy: str,
    deadline: float | None,
    style: dict[str, Any] | None,
    keep_renders: bool,
    upto: int | None = None,
) -> None:
    """Execute (and for render_compare render and score) the not-yet-run candidates of each pool.

    Only candidates with ``index < upto`` run (all when ``None``); a program identical to one already run
    in the same pool is not run again but copies its outcome.
    """
    from cadcoder.image_metrics import image_similarity

    jobs: list[tuple[Candidate, str, dict[str, Any], Any]] = []
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

                def hook(c: Candidate, value: Any, _image: Image.Image = image) -> None:
                    render = value.get("render")
                    if render is None:  # valid solid, but the render failed: kept, ranked last
                        c.error = value.get("render_error", "render failed")
                        return
                    c.score = float(image_similarity(_image, render))
                    if keep_renders:
                        c.render = render

                jobs.append((cand, _CANDIDATE_TASK, {"render_size": _render_size(image), "style": style}, hook))
            else:
                jobs.append((cand, _CANDIDATE_TASK, {"render_size": None}, None))
    _execute(sandbox, jobs, deadline, always_run)
    for dup, orig in duplicates:
        _copy_outcome(dup, orig)
        if dup.status != NOT_RUN:
            dup.reason = f"duplicate of candidate {orig.index}"


def _choose(pool: Sequence[Candidate], strategy: str) -> Candidate | None:
    """Pick the winner of a pool and write every candidate's reason."""
    valid = [c for c in pool if c.ok]
    if not valid:
        for c in pool:
            if not c.reason:
                c.reason = f"{c.status}: {c.error}" if c.error else c.status
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
            c.reason = f"{c.status}: {c.error}" if c.error else c.status
    return best


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _failure_message(pool: Sequence[Candidate]) -> str:
    counts = Counter(c.status for c in pool)
    detail = ", ".join(f"{k} x{v}" for k, v in counts.most_common())
    return f"none of {len(pool)} candidate(s) executed to a valid solid ({detail}); see .candidates for each error"


def _finish(
    sandbox: Any,
    images: Sequence[Image.Image],
    pools: Sequence[list[Candidate]],
    strategy: str,
    export: bool,
    preview_size: int,
    style: dict[str, Any] | None,
    seconds_per_image: Sequence[float],
) -> list[CadPrediction]:
    """Choose per pool, export the winners in the sandbox and assemble predictions."""
    predictions: list[CadPrediction] = []
    for pool, secs in zip(pools, seconds_per_image):
        best = _choose(pool, strategy)
        if best is None:
            program = next((c.program for c in pool if c.program.strip()), pool[0].program if pool else "")
            predictions.append(CadPrediction(program=program, status=NO_VALID, strategy=strategy,
                                             error=_failure_message(pool), candidates=list(pool), seconds=secs))  # fmt: skip
        else:
            predictions.append(CadPrediction(program=best.program, status="ok", strategy=strategy, score=best.score,
                                             solid=best.summary, candidates=list(pool), seconds=secs))  # fmt: skip
    if export:
        todo = [(i, p) for i, p in enumerate(predictions) if p.ok]
        kwargs = {"render_size": int(preview_size), "style": style}
        with ThreadPoolExecutor(max_workers=max(1, min(int(getattr(sandbox, "num_workers", 1)), len(todo) or 1))) as ex:
            results = list(ex.map(lambda ip: sandbox.run(ip[1].program, task=_EXPORT_TASK, **kwargs), todo))
        for (_, pred), res in zip(todo, results):
            if not res.ok:  # ran fine moments ago: a flaky worker; report, keep the program
                pred.export_errors["run"] = f"{res.status}: {res.error}"
                continue
            value = res.value
            pred.step, pred.vertices, pred.faces, pred.render = value["step"], value["vertices"], value["faces"], value["render"]
            pred.export_errors.update(value.get("errors") or {})
    return predictions


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

    This is the model-free half of :func:`generate_cad`.

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
    _check_strategy(strategy)
    pil = [_as_pil(im) for im in images]
    if len(pil) != len(candidates):
        raise ValueError(f"got {len(pil)} image(s) but {len(candidates)} candidate list(s); pass one list per image")
    pools: list[list[Candidate]] = []
    for progs in candidates:
        progs = list(progs)[:1] if strategy == "greedy" else list(progs)
        if not progs:
            raise ValueError("every image needs at least one candidate program")
        pools.append([Candidate(i, p, sampled=not (greedy_first and i == 0)) for i, p in enumerate(progs)])
    with _maybe_sandbox(sandbox, timeout, num_workers) as sb:
        t0 = time.monotonic()
        if strategy == "first_valid":
            width = max(1, int(getattr(sb, "num_workers", 1)))
            longest = max(len(p) for p in pools)
            for start in range(0, longest, width):  # waves; later waves only for images still unsolved
                active = [k for k, p in enumerate(pools) if not any(c.ok for c in p)]
                if not active:
                    break
                _run_candidates(sb, [pil[k] for k in active], [pools[k] for k in active], strategy, None,
                                render_style, keep_renders, upto=start + width)  # fmt: skip
        else:
            _run_candidates(sb, pil, pools, strategy, None, render_style, keep_renders)
        per_image = (time.monotonic() - t0) / max(1, len(pil))
        return _finish(sb, pil, pools, strategy, export, preview_size, render_style, [per_image] * len(pil))


@contextlib.contextmanager
def _maybe_sandbox(sandbox: Any, timeout: float, num_workers: int | None):
    if sandbox is not None:
        yield sandbox
        return
    from cadcoder.sandbox import Sandbox

    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    with Sandbox(num_workers=workers, timeout=timeout) as sb:
        yield sb


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def _generate(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    num_sequences: int,
    do_sample: bool,
    seed: int,
    max_new_tokens: int | None,
    sampling: dict[str, Any],
) -> list[list[str]]:
    """``num_sequences`` cleaned programs per image from one ``model.generate`` call."""
    import torch

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = processor(images=list(images), return_tensors="pt")
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    kwargs: dict[str, Any] = {"num_return_sequences": int(num_sequences), "do_sample": bool(do_sample)}
    wanted = max_new_tokens if max_new_tokens is not None else getattr(model.generation_config, "max_new_tokens", None)
    room = _max_positions(model)
    if room is not None:  # never decode past the LM's position table (CodeGen indexes it and raises)
        room -= int(inputs["input_ids"].shape[1])
        wanted = room if wanted is None else min(int(wanted), room)
    if wanted is not None:
        kwargs["max_new_tokens"] = int(wanted)
    if do_sample:
        kwargs.update({k: v for k, v in sampling.items() if v is not None})
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # leave the caller's RNG state alone
        torch.manual_seed(int(seed))
        out = model.generate(**inputs, **kwargs)  # (B * num_sequences, prompt + new), grouped per image
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
    texts = [str(t) for t in texts]
    return [texts[i * num_sequences : (i + 1) * num_sequences] for i in range(len(images))]


def _max_positions(model: Any) -> int | None:
    """Longest sequence the language model can position (``n_positions`` and friends), if it says."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _rounds(strategy: str, num_candidates: int, include_greedy: bool, time_budget: float | None) -> list[tuple[bool, int]]:
    """The generation plan as ``(do_sample, sequences per image)`` rounds."""
    if strategy == "greedy":
        return [(False, 1)]
    plan: list[tuple[bool, int]] = [(False, 1)] if include_greedy else []
    samples = num_candidates - len(plan)
    # first_valid samples in small rounds so solved images stop early; render_compare needs them all at once,
    # unless a time budget asks for the chance to stop between rounds.
    size = samples if strategy == "render_compare" and time_budget is None else min(4, samples)
    while samples > 0:
        plan.append((True, min(size, samples)))
        samples -= size
    return plan


def generate_cad(
    model: Any,
    processor: Any,
    images: Sequence[Any] | Any,
    num_candidates: int = 8,
    strategy: str = "render_compare",
    seed: int = 0,
    batch_size: int = 8,
    time_budget: float | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.8,
    top_p: float | None = 0.95,
    top_k: int | None = None,
    include_greedy: bool = True,
    sandbox: Any = None,
    timeout: float = 10.0,
    num_workers: int | None = None,
    export: bool = True,
    preview_size: int = 448,
    render_style: dict[str, Any] | None = None,
    keep_renders: bool = False,
    progress: bool = False,
) -> list[CadPrediction]:
    """Image(s) of a part -> CadQuery program(s) that execute, chosen by executing and rendering candidates.

    Args:
        model: a ``CadCoderForConditionalGeneration`` (any model whose ``generate`` takes the processor's
            inputs); put it on its device and in eval mode first.
        processor: the matching ``CadCoderProcessor``.
        images: one image or a list (PIL, numpy arrays, or paths to image files).
        num_candidates: candidates per image for ``first_valid`` / ``render_compare`` (the greedy one included
            when ``include_greedy``); ignored by ``greedy``.
        strategy: ``"greedy"``, ``"first_valid"`` or ``"render_compare"`` (see the module docstring).
        seed: sampling seed; the same seed, inputs and ``batch_size`` give the same result. The caller's
            global torch RNG state is left untouched.
        batch_size: images per ``model.generate`` call (each expands to its candidates).
        time_budget: seconds per image for generation and execution together (a batch gets ``time_budget``
            times its size). When it runs out, no new sampling round starts and queued candidates are
            skipped with status ``"not_run"``; each image still gets its first candidate generated and run,
            and the winner is still exported. ``None``: no limit.
        max_new_tokens: generation length (default: the model's ``generation_config``).
        temperature, top_p, top_k: sampling settings of the sampled candidates.
        include_greedy: make the greedy program candidate 0 of the sampling strategies.
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse (its timeout applies); ``None`` starts one
            with ``timeout`` and ``num_workers`` for this call.
        export: produce STEP text, a mesh and a preview render of each chosen solid (see
            :meth:`CadPrediction.save`); switch off to save time when only the program is needed.
        preview_size: side of the exported render.
        render_style: :class:`cadcoder.render.RenderStyle` fields for all renders (``None``: dataset look).
        keep_renders: keep every candidate's scoring render (memory: S x S x 3 bytes each).
        progress: show a tqdm bar over batches.

    Returns:
        One :class:`CadPrediction` per image, in input order.

    Raises:
        ValueError: unknown strategy, ``num_candidates < 1``, no images, an unreadable image.
        FileNotFoundError: an image path does not exist.
    """
    _check_strategy(strategy)
    if int(num_candidates) < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be > 0 seconds per image (or None), got {time_budget}")
    if isinstance(images, (Image.Image, str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    pil = [_as_pil(im) for im in images]
    if not pil:
        raise ValueError("no images given; pass at least one image of a part")
    sampling = {"temperature": float(temperature), "top_p": top_p, "top_k": top_k}
    plan = _rounds(strategy, int(num_candidates), include_greedy, time_budget)
    predictions: list[CadPrediction] = []
    batches = range(0, len(pil), int(batch_size))
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"generate ({strategy})", unit="batch")
    with _maybe_sandbox(sandbox, timeout, num_workers) as sb:
        for start in batches:
            chunk = pil[start : start + int(batch_size)]
            t0 = time.monotonic()
            deadline = None if time_budget is None else t0 + float(time_budget) * len(chunk)
            pools: list[list[Candidate]] = [[] for _ in chunk]
            for r, (do_sample, k) in enumerate(plan):
                if r > 0 and deadline is not None and time.monotonic() > deadline:
                    break
                active = list(range(len(chunk)))
                if strategy == "first_valid":
                    active = [i for i in active if not any(c.ok for c in pools[i])]
                    if not active:
                        break
                # Seeded per (batch, round) so an image's samples do not depend on earlier rounds' lengths.
                texts = _generate(model, processor, [chunk[i] for i in active], k, do_sample,
                                  seed * 1_000_003 + start * 1009 + r, max_new_tokens, sampling)  # fmt: skip
                for i, progs in zip(active, texts):
                    for p in progs:
                        pools[i].append(Candidate(len(pools[i]), p, sampled=do_sample))
                if strategy == "first_valid":
                    _run_candidates(sb, [chunk[i] for i in active], [pools[i] for i in active], strategy,
                                    deadline, render_style, keep_renders)  # fmt: skip
            if strategy != "first_valid":
                _run_candidates(sb, chunk, pools, strategy, deadline, render_style, keep_renders)
            per_image = (time.monotonic() - t0) / len(chunk)
            predictions.extend(_finish(sb, chunk, pools, strategy, export, preview_size, render_style, [per_image] * len(chunk)))
    return predictions


# ------------------------------------------------------------------------------------------------
# Model loading and the CLI
# ------------------------------------------------------------------------------------------------
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _hub_error(name: str, why: str) -> OSError:
    return OSError(
        f"could not load model {name!r}: it is not a local folder, and as a Hugging Face Hub id: {why}. "
        "Pass a local model folder (e.g. outputs/quickstart from `python train.py configs/quickstart.json`), "
        "or check the id and your connection."
    )


def _check_hub_id(name: str) -> None:
    """Fail fast, with one clear message, on a Hub id that cannot load (instead of retrying every file)."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.utils.validate_repo_id(name)
    except Exception as exc:  # noqa: BLE001 - HFValidationError
        raise FileNotFoundError(
            f"model {name!r} is neither an existing folder nor a valid Hub id ({exc}); pass the folder written by "
            "train.py (e.g. outputs/quickstart) or an id like 'owner/name'"
        ) from None
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        if not isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            raise _hub_error(name, "the Hub is switched off here (HF_HUB_OFFLINE=1) and the id is not in the local cache")
        return
    try:
        huggingface_hub.model_info(name, timeout=15)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise _hub_error(name, "no such repository (or it is private / gated: log in with `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - connection errors of requests/httpx and friends
        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
            return  # offline but cached: from_pretrained will use the cache
        raise _hub_error(name, f"the Hub is unreachable ({type(exc).__name__})") from None


def load_model(name_or_path: str | os.PathLike, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """Load a CadCoder model and its processor from a saved folder or a Hub id, ready for generation.

    The package's own model classes are used (no remote code is executed for a CadCoder checkpoint).

    Args:
        name_or_path: a folder written by ``save_pretrained`` (``train.py`` output) or a Hub repo id.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        dtype: optional torch dtype for the weights.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder has no ``config.json`` or no processor / tokenizer files.
        OSError: a Hub id could not be loaded (offline, unknown, or private); the message says what to do.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_cadcoder  # noqa: F401  (registers the Auto classes of the installed modules)
    import processing_cadcoder  # noqa: F401

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a model folder: it has no config.json. Pass the output_dir of train.py "
                "(or a folder written by model.save_pretrained)."
            )
        has_proc = any((path / f).is_file() for f in _PROCESSOR_FILES)
        has_tok = any((path / f).is_file() for f in _TOKENIZER_FILES)
        if not (has_proc and has_tok):
            missing = "processor_config.json" if not has_proc else "tokenizer files (tokenizer.json)"
            raise FileNotFoundError(
                f"the model folder {path} has no processor ({missing} missing). Save it next to the weights with "
                f"processor.save_pretrained('{path}') (train.py does this at the end of training)."
            )
        source = str(path)
    elif path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the model FOLDER that holds config.json and the weights")
    else:
        _check_hub_id(name)
        source = name
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError) as exc:
        if path.is_dir():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        hint = (
            "the Hub is switched off here (HF_HUB_OFFLINE=1), and the id is not in the local cache"
            if offline
            else "the id does not exist, is private, or the Hub is unreachable"
        )
        raise OSError(
            f"could not load model {name!r}: it is not a local folder, and as a Hugging Face Hub id it failed: {hint}. "
            "Pass a local model folder (e.g. outputs/quickstart from `python train.py configs/quickstart.json`), "
            f"or check the id and your connection. ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    return model, processor


def _unique_dirs(paths: Sequence[Path], out: Path) -> list[Path]:
    used: Counter[str] = Counter()
    dirs = []
    for p in paths:
        stem = p.stem or "image"
        used[stem] += 1
        dirs.append(out / (stem if used[stem] == 1 else f"{stem}_{used[stem]}"))
    return dirs


def generate_cli(args: argparse.Namespace) -> int:
    """``cadcoder generate IMAGE... --model M --out DIR``: program, STEP, STL and preview per image.

    Writes ``DIR/<image stem>/part.py``, ``part.step``, ``part.stl``, ``part_preview.png`` and ``report.json``
    (every candidate with its status and the reason it was rejected). Returns 0 when every image got a valid
    solid, 1 when some did not, 2 on bad input (missing or unreadable image, unusable model).
    """
    prog = "cadcoder generate"
    try:
        paths = [Path(p) for p in args.images]
        images = [load_image(p) for p in paths]  # fail on a bad image before loading the model
        if int(args.num_candidates) < 1:
            raise ValueError(f"--num-candidates must be >= 1, got {args.num_candidates}")
        model, processor = load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    from cadcoder.sandbox import Sandbox

    t0 = time.monotonic()
    with Sandbox(num_workers=min(4, os.cpu_count() or 1), timeout=float(args.timeout)) as sb:
        predictions = generate_cad(
            model, processor, images,
            num_candidates=int(args.num_candidates), strategy=args.strategy, seed=int(args.seed),
            time_budget=args.time_budget, max_new_tokens=args.max_new_tokens, sandbox=sb,
            progress=len(images) > 1,
        )  # fmt: skip
    failures = 0
    for path, image, folder, pred in zip(paths, images, _unique_dirs(paths, out), predictions):
        written = pred.save(folder, input_image=image)
        n = len(pred.candidates)
        valid = sum(c.ok for c in pred.candidates)
        if pred.ok:
            score = "" if pred.score is None else f", render score {pred.score:.2f}"
            files = ", ".join(p.name for k, p in written.items() if k != "report")
            print(f"{path}: {valid}/{n} candidate(s) valid{score} -> {folder}/ ({files})")
            for what, msg in pred.export_errors.items():
                print(f"{path}: warning: {what} export failed: {msg}", file=sys.stderr)
        else:
            failures += 1
            print(f"{path}: FAILED: {pred.error} (details in {written['report']})", file=sys.stderr)
    print(f"{len(images)} image(s), strategy {args.strategy}, {time.monotonic() - t0:.1f} s")
    return 1 if failures else 0
