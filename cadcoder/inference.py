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

Generated code runs only in :class:`cadcoder.sandbox.Sandbox`. The model-free half (running, scoring and
choosing among given programs) lives in :mod:`cadcoder.selection`, the result types in
:mod:`cadcoder.predictions`; :func:`select_programs`, :class:`Candidate` and :class:`CadPrediction` are
importable from here as well.
Loading lives in :mod:`cadcoder.loading` (:func:`load_model` is importable from here as well).
This module holds the model side: the generation settings, sampling and the CLI verb.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cadcoder.loading import load_model
from cadcoder.selection import (
    STRATEGIES,
    CadPrediction,
    ProgressCallback,
    Candidate,
    check_strategy,
    default_num_workers,
    finish_predictions,
    run_candidates,
    select_programs,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "STRATEGIES",
    "Candidate",
    "CadPrediction",
    "GenerationOptions",
    "generate_cad",
    "generate_new_tokens",
    "select_programs",
    "load_image",
    "load_model",
    "generate_cli",
]


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationOptions:
    """How :func:`generate_cad` samples, runs and chooses candidate programs.

    Attributes:
        num_candidates: candidates per image for ``first_valid`` / ``render_compare`` (the greedy one
            included when ``include_greedy``); ignored by ``greedy``.
        strategy: ``"greedy"``, ``"first_valid"`` or ``"render_compare"`` (see :mod:`cadcoder.inference`).
        seed: the sampling RNG seed; the same seed, inputs and ``batch_size`` give the same result. The
            caller's global torch RNG state is left untouched.
        batch_size: images per ``model.generate`` call (each expands to its candidates).
        time_budget: seconds per image for generation and execution together (a batch gets ``time_budget``
            times its size). When it runs out, no new sampling round starts and queued candidates are
            skipped with status ``"not_run"``; each image still gets its first candidate generated and run,
            and the winner is still exported. ``None``: no limit.
        max_new_tokens: generation length (default: the model's ``generation_config``).
        temperature, top_p, top_k: sampling settings of the sampled candidates.
        include_greedy: make the greedy program candidate 0 of the sampling strategies.
        timeout, num_workers: settings of the sandbox started when :func:`generate_cad` gets none
            (``num_workers=None``: the CPU count, at most 4).
        export: produce STEP text, a mesh and a preview render of each chosen solid (see
            :meth:`CadPrediction.save`); switch off to save time when only the program is needed.
        preview_size: side of the exported render.
        render_style: :class:`cadcoder.render.RenderStyle` fields for all renders (``None``: dataset look).
        keep_renders: keep every candidate's scoring render (memory: S x S x 3 bytes each).
        progress: show a tqdm bar over batches.

    Raises:
        ValueError: an unknown strategy, ``num_candidates < 1``, ``batch_size < 1`` or ``time_budget <= 0``.
    """

    num_candidates: int = 8
    strategy: str = "render_compare"
    seed: int = 0
    batch_size: int = 8
    time_budget: float | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.8
    top_p: float | None = 0.95
    top_k: int | None = None
    include_greedy: bool = True
    timeout: float = 10.0
    num_workers: int | None = None
    export: bool = True
    preview_size: int = 448
    render_style: dict[str, Any] | None = None
    keep_renders: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if int(self.num_candidates) < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be > 0 seconds per image (or None), got {self.time_budget}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_overrides(self, **overrides: Any) -> GenerationOptions:
        """A copy with some options replaced.

        Raises:
            TypeError: a name that is not an option; the message lists the valid ones.
        """
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise TypeError(
                f"unknown generation option(s): {', '.join(unknown)}; valid options are: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **overrides) if overrides else self


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file fully (so the file is closed) as an 8-bit RGB image, transparency on white.

    Raises:
        FileNotFoundError: the path does not exist or is a folder.
        ValueError: the file is not an image PIL can read.
    """
    from processing_cadcoder import to_rgb_image

    return to_rgb_image(Path(path))


def _as_images(images: Sequence[Any] | Any) -> list[Image.Image]:
    """One image or a list of them (PIL, numpy, torch, paths) -> RGB PIL images."""
    from processing_cadcoder import to_rgb_image

    if isinstance(images, (Image.Image, str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    pil = [to_rgb_image(im) for im in images]
    if not pil:
        raise ValueError("no images given; pass at least one image of a part")
    return pil


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def _max_positions(model: Any) -> int | None:
    """Longest sequence the language model can position (``n_positions`` and friends), if it says."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def generate_new_tokens(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    max_new_tokens: int | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """Run ``model.generate`` on the processor's inputs for ``images`` and return only the new tokens.

    The inputs are moved to the model's device, and floating ``pixel_values`` to its dtype. Decoding never
    runs past the language model's position table (CodeGen indexes it and raises), whatever
    ``max_new_tokens`` asks for.

    Args:
        model: a model whose ``generate`` takes the processor's inputs (e.g. ``CadCoderForConditionalGeneration``).
        processor: the matching processor; called as ``processor(images=..., return_tensors="pt")``.
        images: the input images of one batch.
        max_new_tokens: generation length; ``None``: the model's ``generation_config.max_new_tokens``.
        **generate_kwargs: passed on to ``model.generate`` (``do_sample``, ``num_return_sequences``,
            ``synced_gpus``...).

    Returns:
        The generated token ids without the prompt, ``(len(images) * num_return_sequences, T_new)``,
        grouped per image.
    """
    import torch

    param = next(model.parameters())
    inputs = processor(images=list(images), return_tensors="pt")
    inputs = {k: v.to(param.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
    prompt_length = int(inputs["input_ids"].shape[1])
    wanted = max_new_tokens if max_new_tokens is not None else getattr(model.generation_config, "max_new_tokens", None)
    room = _max_positions(model)
    if room is not None:
        wanted = room - prompt_length if wanted is None else min(int(wanted), room - prompt_length)
    if wanted is not None:
        generate_kwargs["max_new_tokens"] = int(wanted)
    with torch.no_grad():
        out = model.generate(**inputs, **generate_kwargs)  # (B * num_return_sequences, prompt + new)
    return out[:, prompt_length:]


def _sample_programs(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    num_sequences: int,
    do_sample: bool,
    seed: int,
    options: GenerationOptions,
) -> list[list[str]]:
    """``num_sequences`` cleaned programs per image from one ``model.generate`` call, seeded by ``seed``."""
    import torch

    kwargs: dict[str, Any] = {"num_return_sequences": int(num_sequences), "do_sample": bool(do_sample)}
    if do_sample:
        sampling = {"temperature": float(options.temperature), "top_p": options.top_p, "top_k": options.top_k}
        kwargs.update({k: v for k, v in sampling.items() if v is not None})
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's RNG state alone
        torch.manual_seed(int(seed))
        new_tokens = generate_new_tokens(model, processor, images, options.max_new_tokens, **kwargs)
    texts = [str(t) for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return [texts[i * num_sequences : (i + 1) * num_sequences] for i in range(len(images))]


def _rounds(options: GenerationOptions) -> list[tuple[bool, int]]:
    """The generation plan as ``(do_sample, sequences per image)`` rounds."""
    if options.strategy == "greedy":
        return [(False, 1)]
    plan: list[tuple[bool, int]] = [(False, 1)] if options.include_greedy else []
    samples = int(options.num_candidates) - len(plan)
    # first_valid samples in small rounds so solved images stop early; render_compare needs them all at once,
    # unless a time budget asks for the chance to stop between rounds.
    size = samples if options.strategy == "render_compare" and options.time_budget is None else min(4, samples)
    while samples > 0:
        plan.append((True, min(size, samples)))
        samples -= size
    return plan


def _sample_pools(
    model: Any,
    processor: Any,
    sandbox: Any,
    images: Sequence[Image.Image],
    start: int,
    deadline: float | None,
    options: GenerationOptions,
    on_progress: ProgressCallback | None = None,
) -> list[list[Candidate]]:
    """Generate the candidates of one batch round by round; ``first_valid`` runs them after each round."""
    pools: list[list[Candidate]] = [[] for _ in images]
    first_valid = options.strategy == "first_valid"
    rounds = _rounds(options)
    planned = len(images) * sum(k for _, k in rounds)
    for r, (do_sample, k) in enumerate(rounds):
        if on_progress is not None:
            on_progress("generating", sum(map(len, pools)), planned)
        if r > 0 and deadline is not None and time.monotonic() > deadline:
            break
        active = [i for i in range(len(images)) if not (first_valid and any(c.ok for c in pools[i]))]
        if not active:
            break
        # Seeded per (batch, round) so an image's samples do not depend on earlier rounds' lengths.
        seed = options.seed * 1_000_003 + start * 1009 + r
        texts = _sample_programs(model, processor, [images[i] for i in active], k, do_sample, seed, options)
        for i, programs in zip(active, texts):
            for program in programs:
                pools[i].append(Candidate(len(pools[i]), program, sampled=do_sample))
        if first_valid:
            run_candidates(sandbox, [images[i] for i in active], [pools[i] for i in active], options.strategy,
                           deadline, options.render_style, options.keep_renders, on_progress=on_progress)  # fmt: skip
    return pools


def _generate_batch(
    model: Any,
    processor: Any,
    sandbox: Any,
    images: Sequence[Image.Image],
    start: int,
    options: GenerationOptions,
    on_progress: ProgressCallback | None = None,
) -> list[CadPrediction]:
    """Sample, run, choose and export for one batch of images (``start``: its offset in the input)."""
    t0 = time.monotonic()
    deadline = None if options.time_budget is None else t0 + float(options.time_budget) * len(images)
    pools = _sample_pools(model, processor, sandbox, images, start, deadline, options, on_progress)
    if options.strategy != "first_valid":
        run_candidates(sandbox, images, pools, options.strategy, deadline, options.render_style, options.keep_renders,
                       on_progress=on_progress)  # fmt: skip
    per_image = (time.monotonic() - t0) / len(images)
    if on_progress is not None and options.export:
        on_progress("exporting", 0, len(images))
    return finish_predictions(sandbox, pools, options.strategy, [per_image] * len(images), export=options.export,
                              preview_size=options.preview_size, render_style=options.render_style)  # fmt: skip


def generate_cad(
    model: Any,
    processor: Any,
    images: Sequence[Any] | Any,
    options: GenerationOptions | None = None,
    *,
    sandbox: Any = None,
    on_progress: ProgressCallback | None = None,
    **overrides: Any,
) -> list[CadPrediction]:
    """Image(s) of a part -> CadQuery program(s) that execute, chosen by executing and rendering candidates.

    Args:
        model: a ``CadCoderForConditionalGeneration`` (any model whose ``generate`` takes the processor's
            inputs); put it on its device and in eval mode first.
        processor: the matching ``CadCoderProcessor``.
        images: one image or a list (PIL, numpy arrays, or paths to image files).
        options: the settings (:class:`GenerationOptions`); ``None``: the defaults.
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse (its timeout applies); ``None`` starts one
            with the options' ``timeout`` and ``num_workers`` for this call.
        on_progress: called as ``on_progress(stage, done, total)`` while a batch is worked on: ``"generating"``
            before each sampling round (candidates generated so far of those planned), ``"running"`` after
            each program finishes in the sandbox, ``"exporting"`` before the winners are exported. A web
            page or a GUI shows progress with it; ``progress=True`` shows a bar over batches instead.
        **overrides: option fields replacing those of ``options``, e.g. ``strategy="greedy"``.

    Returns:
        One :class:`CadPrediction` per image, in input order.

    Raises:
        TypeError: a keyword that is not an option field (the message lists the valid ones).
        ValueError: unknown strategy, ``num_candidates < 1``, no images, an unreadable image.
        FileNotFoundError: an image path does not exist.
    """
    from cadcoder.sandbox import borrow_or_open

    if options is not None and not isinstance(options, GenerationOptions):
        raise TypeError(f"options must be a GenerationOptions or None, got {type(options).__name__}; pass settings "
                        "by keyword (num_candidates=4) or as GenerationOptions(num_candidates=4)")  # fmt: skip
    opts = (options or GenerationOptions()).with_overrides(**overrides)
    pil = _as_images(images)
    batch_size = int(opts.batch_size)
    batches: Any = range(0, len(pil), batch_size)
    if opts.progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"generate ({opts.strategy})", unit="batch")
    workers = opts.num_workers if opts.num_workers is not None else default_num_workers()
    predictions: list[CadPrediction] = []
    with borrow_or_open(sandbox, num_workers=workers, timeout=opts.timeout) as sb:
        for start in batches:
            batch = pil[start : start + batch_size]
            predictions.extend(_generate_batch(model, processor, sb, batch, start, opts, on_progress))
    return predictions


# ------------------------------------------------------------------------------------------------
# The `cadcoder generate` verb
# ------------------------------------------------------------------------------------------------
def _unique_dirs(paths: Sequence[Path], out: Path) -> list[Path]:
    used: Counter[str] = Counter()
    dirs = []
    for p in paths:
        stem = p.stem or "image"
        used[stem] += 1
        dirs.append(out / (stem if used[stem] == 1 else f"{stem}_{used[stem]}"))
    return dirs


def _report(path: Path, folder: Path, pred: CadPrediction, written: dict[str, Path]) -> bool:
    """Print one image's outcome; return whether it got a valid solid."""
    if not pred.ok:
        print(f"{path}: FAILED: {pred.error} (details in {written['report']})", file=sys.stderr)
        return False
    valid = sum(c.ok for c in pred.candidates)
    score = "" if pred.score is None else f", render score {pred.score:.2f}"
    files = ", ".join(p.name for k, p in written.items() if k != "report")
    print(f"{path}: {valid}/{len(pred.candidates)} candidate(s) valid{score} -> {folder}/ ({files})")
    for what, msg in pred.export_errors.items():
        print(f"{path}: warning: {what} export failed: {msg}", file=sys.stderr)
    return True


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
        options = GenerationOptions(
            num_candidates=int(args.num_candidates), strategy=args.strategy, seed=int(args.seed),
            time_budget=args.time_budget, max_new_tokens=args.max_new_tokens, timeout=float(args.timeout),
            progress=len(images) > 1,
        )  # fmt: skip
        model, processor = load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from cadcoder.sandbox import Sandbox

    t0 = time.monotonic()
    with Sandbox(num_workers=default_num_workers(), timeout=options.timeout) as sb:
        predictions = generate_cad(model, processor, images, options, sandbox=sb)
    ok = [
        _report(path, folder, pred, pred.save(folder, input_image=image))
        for path, image, folder, pred in zip(paths, images, _unique_dirs(paths, Path(args.out)), predictions)
    ]
    print(f"{len(images)} image(s), strategy {args.strategy}, {time.monotonic() - t0:.1f} s")
    return 0 if all(ok) else 1
