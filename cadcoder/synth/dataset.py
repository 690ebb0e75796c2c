"""The resumable synthetic dataset builder: programs -> sandbox -> validated, deduplicated, rendered rows.

:func:`build_synthetic_dataset` draws sample ``i`` from ``numpy.random.default_rng([seed, i])``
(:func:`sample_seed`, :func:`cadcoder.synth.programs.generate_program`), executes it in
:class:`cadcoder.sandbox.Sandbox` and renders it there (:func:`synth_sample_task`). A sample is kept when
the program yields one valid, non-degenerate solid with a non-blank image, and when neither its code key
(numbers rounded to 1e-4, :func:`code_key`) nor its geometry key (:func:`geometry_key`) was seen at a
lower index. Programs that share a *template* (same code with numbers stripped) are all kept: the
GenCAD-Code distribution itself is dominated by a few templates (plates, discs, tubes) with different
numbers, and dropping them would distort it. ``max_per_skeleton`` caps a template's count if wanted; the
share of distinct templates is reported by :func:`cadcoder.corpus_stats.corpus_stats`.

Work goes to ``out_dir/_synth_work``: one parquet shard per chunk of indices, written atomically, and a
manifest updated after it. An interrupted run resumes from the manifest with no lost work and no
duplicate, and produces exactly the dataset an uninterrupted run would.

:func:`build_synthetic_mix` spreads a set over several complexity levels; :func:`synth_cli` is
``cadcoder synth``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin  # noqa: F401  (PNG encoding inside the jailed worker)

from cadcoder import tasks
from cadcoder.sandbox import SandboxJob, borrow_or_open
from cadcoder.schema import GENCAD_PROMPT, SPLIT_NAMES, approx_token_count, gencad_features
from cadcoder.synth.programs import COMPLEXITY_LEVELS, FLOAT_LITERAL, GRID, generate_program
from cadcoder.synth.workdir import WORK_DIR, open_manifest, read_shards, store_chunk

# The sandbox's jailed workers cannot import lazily: the render task's modules load here, at import time.
try:
    from cadcoder import render as _render
except ImportError:  # no OpenCascade: programs can still be written (generate_program), not built or rendered
    _render = None



def code_skeleton(code: str) -> str:
    """The program with every number replaced by ``#``: its template, used for the diversity report."""
    return FLOAT_LITERAL.sub("#", code)


def code_key(code: str, decimals: int = 4) -> str:
    """Dedup key by code: whitespace-normalised source with numbers rounded to ``decimals``.

    Two programs that differ only below 1e-4 (far below the 1/128 grid) are the same sample.
    """
    text = FLOAT_LITERAL.sub(lambda m: f"{round(float(m.group()), decimals) + 0.0!r}", code)
    text = "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return hashlib.sha1(text.encode()).hexdigest()


def geometry_key(fingerprint: dict[str, Any], digits: int = 4) -> str:
    """Dedup key by geometry: volume, area, bounding box and centre of mass rounded to ``digits`` decimals.

    Different programs that build the same solid (a sketch repeated and unioned onto itself, a cut
    that removes nothing) share this key.
    """
    vals = [fingerprint["volume"], fingerprint["area"], *fingerprint["bbox"], *fingerprint["center"]]
    return hashlib.sha1(repr([round(float(v), digits) + 0.0 for v in vals]).encode()).hexdigest()


def ink_fraction(image: np.ndarray, background_rgb: Sequence[int] = (255, 255, 255)) -> float:
    """Fraction of the pixels of an (H, W, 3) render that differ from the background (sum of |RGB delta| > 30)."""
    bg = np.array(background_rgb, dtype=np.int16)
    return float((np.abs(np.asarray(image).astype(np.int16) - bg).sum(-1) > 30).mean())


def synth_sample_task(shape: Any, size: int = 448, style: dict[str, Any] | None = None,
                      min_ink: float = 0.002) -> dict[str, Any]:
    """Sandbox task run on each synthetic program's validated solid: render it and fingerprint it.

    Returns ``{"png": bytes, "volume", "area", "bbox", "center", "n_solids", "n_faces", "ink", "render_seconds"}`` where
    ``ink`` is the fraction of non-background pixels; rendering happens inside the isolated worker.
    """
    t0 = time.perf_counter()
    img = _render.render_task(shape, size=size, **(style or {}))
    render_seconds = time.perf_counter() - t0
    ink = ink_fraction(img, (style or {}).get("background_rgb", (255, 255, 255)))
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    bb = shape.BoundingBox()
    com = shape.Center()
    return {
        "png": buf.getvalue(),
        "volume": float(sum(s.Volume() for s in shape.Solids())),
        "area": float(shape.Area()),
        "bbox": (bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax),
        "center": (com.x, com.y, com.z),
        "n_solids": len(shape.Solids()),
        "n_faces": len(shape.Faces()),
        "ink": ink,
        "render_seconds": render_seconds,
    }


def sample_seed(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of chunking, so a resumed run redoes nothing differently."""
    return np.random.default_rng([int(seed), int(index)])


def _style_for(render_style: Any, seed: int, index: int) -> dict[str, Any] | None:
    """The render style of sample ``index`` as a dict (``"random"``: its own seeded draw), or None."""
    if render_style is None:
        return None
    if render_style == "random":
        return _render.RenderStyle.random(np.random.default_rng([int(seed), int(index), 1])).to_dict()
    if isinstance(render_style, _render.RenderStyle):
        return render_style.to_dict()
    if isinstance(render_style, dict):
        return dict(render_style)
    raise ValueError(f"render_style must be None, 'random', a RenderStyle or a dict, got {render_style!r}")


# ---------------------------------------------------------------------------------------------
# The run's settings and its manifest
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RunSettings:
    """What decides a run's rows: a resumed run must be given the same (see :func:`cadcoder.synth.workdir.open_manifest`)."""

    seed: int
    complexity: int
    image_size: int
    render_style: Any
    allow_multi_solid: bool
    max_per_skeleton: int | None
    min_ink: float
    tokenizer: Any

    def manifest_entry(self) -> dict[str, Any]:
        """The settings as the manifest records them (JSON)."""
        return {
            "seed": int(self.seed), "complexity": int(self.complexity), "image_size": int(self.image_size),
            "render_style": "random" if self.render_style == "random" else _style_for(self.render_style, self.seed, 0),
            "allow_multi_solid": bool(self.allow_multi_solid), "max_per_skeleton": self.max_per_skeleton,
            "min_ink": float(self.min_ink),
            "tokenizer": None if self.tokenizer is None else type(self.tokenizer).__name__,
            "format": 1,
        }

    def count_tokens(self, code: str) -> int:
        """``token_count`` of a kept program: the tokenizer's length, or :func:`approx_token_count`."""
        return approx_token_count(code) if self.tokenizer is None else len(self.tokenizer(code)["input_ids"])

    def job(self, index: int) -> SandboxJob:
        """The sandbox job of sample ``index``: its program, rendered in its own style."""
        code = generate_program(sample_seed(self.seed, index), complexity=self.complexity)
        style = _style_for(self.render_style, self.seed, index)
        return SandboxJob(code, tasks.SYNTH_SAMPLE, {"size": self.image_size, "style": style, "min_ink": self.min_ink})


# ---------------------------------------------------------------------------------------------
# Keeping or rejecting samples
# ---------------------------------------------------------------------------------------------
def _reject_reason(result: Any, allow_multi_solid: bool, min_ink: float) -> str | None:
    """Why a sandbox result is not a usable sample (None if it is)."""
    if not result.ok:
        return result.status
    v = result.value
    lo, hi = np.array(v["bbox"][:3]), np.array(v["bbox"][3:])
    if v["volume"] <= 1e-6 or (hi - lo).min() < 1.0 / GRID / 2:
        return "degenerate"
    if not allow_multi_solid and v["n_solids"] != 1:
        return "multi_solid"
    if v["ink"] < min_ink:
        return "blank_image"
    return None


class _Dedup:
    """The code keys, geometry keys and template counts of the rows kept so far."""

    def __init__(self, rows: list[dict[str, Any]], max_per_skeleton: int | None) -> None:
        self.max_per_skeleton = max_per_skeleton
        self.codes = {r["code_key"] for r in rows}
        self.geometries = {r["geom_key"] for r in rows}
        self.per_skeleton: dict[str, int] = {}
        for r in rows:
            self.per_skeleton[r["skeleton"]] = self.per_skeleton.get(r["skeleton"], 0) + 1

    def reason(self, keys: tuple[str, str, str]) -> str | None:
        """Why a sample with these (code, geometry, template) keys is not kept (None if it is new)."""
        ck, gk, sk = keys
        if ck in self.codes or gk in self.geometries:
            return "duplicate"
        if self.max_per_skeleton is not None and self.per_skeleton.get(sk, 0) >= self.max_per_skeleton:
            return "template_cap"
        return None

    def add(self, keys: tuple[str, str, str]) -> None:
        """Record a kept sample's keys."""
        ck, gk, sk = keys
        self.codes.add(ck)
        self.geometries.add(gk)
        self.per_skeleton[sk] = self.per_skeleton.get(sk, 0) + 1


def _run_chunk(box: Any, run: _RunSettings, indices: range, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """Execute and render samples ``indices`` in the sandbox -> (program, result) pairs, timed in the manifest.

    Raises:
        RuntimeError: the task failed on every program (a broken environment, not bad programs).
    """
    jobs = [run.job(i) for i in indices]
    timing = manifest.setdefault("timing", {"programs": 0, "sandbox_seconds": 0.0, "render_seconds": 0.0, "rendered": 0})

    def count(_: int, result: Any) -> None:
        timing["programs"] += 1
        timing["sandbox_seconds"] += result.seconds
        if result.ok:
            timing["rendered"] += 1
            timing["render_seconds"] += result.value["render_seconds"]

    results = box.map(jobs, on_result=count)
    task_errors = [r.error for r in results if not r.ok and r.error.startswith("task failed")]
    if len(task_errors) == len(results):
        raise RuntimeError(f"the render task failed on every program: {task_errors[0]}")
    return [(job.code, result) for job, result in zip(jobs, results)]


def _keep_rows(run: _RunSettings, indices: range, outcomes: list[tuple[str, Any]], dedup: _Dedup,
               rejected: dict[str, int]) -> list[dict[str, Any]]:
    """The rows of a chunk's valid, new samples; every rejection is counted in ``rejected`` by reason."""
    rows = []
    for i, (code, res) in zip(indices, outcomes):
        reason = _reject_reason(res, run.allow_multi_solid, run.min_ink)
        if reason is None:
            keys = (code_key(code), geometry_key(res.value), code_skeleton(code))
            reason = dedup.reason(keys)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        dedup.add(keys)
        rows.append({
            "index": i, "deepcad_id": f"synth{run.seed}_{i:08d}", "cadquery": code,
            "token_count": run.count_tokens(code), "png": res.value["png"],
            "code_key": keys[0], "geom_key": keys[1], "skeleton": keys[2],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Splits and the final DatasetDict
# ---------------------------------------------------------------------------------------------
def _split_counts(n: int, splits: tuple[float, float, float]) -> tuple[int, int, int]:
    """Rows of train / validation / test for ``n`` samples; raises when a requested split would be empty."""
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
    n_val = int(round(n * splits[1]))
    n_test = int(round(n * splits[2]))
    if n >= 3:  # every requested split gets at least one row
        n_val = max(n_val, 1 if splits[1] > 0 else 0)
        n_test = max(n_test, 1 if splits[2] > 0 else 0)
    counts = (n - n_val - n_test, n_val, n_test)
    for name, fraction, count in zip(SPLIT_NAMES, splits, counts):
        if fraction > 0 and count == 0:  # datasets cannot load an empty split back from save_to_disk
            raise ValueError(
                f"{n} samples leave the {name} split empty; ask for at least 3 samples (3 per complexity "
                f"level when levels are mixed), or give the {name} split a fraction of 0 to leave it out"
            )
    return counts


def _assemble(rows: list[dict[str, Any]], seed: int, splits: tuple[float, float, float]) -> Any:
    """Rows (in index order) -> DatasetDict with a seeded split assignment."""
    import datasets

    n_train, n_val, n_test = _split_counts(len(rows), splits)
    perm = np.random.default_rng([int(seed), 2**31 - 1]).permutation(len(rows))
    parts = dict(zip(SPLIT_NAMES, (sorted(perm[:n_train]), sorted(perm[n_train:n_train + n_val]),
                                   sorted(perm[n_train + n_val:]))))
    out = {}
    for split, ids in parts.items():
        if not ids:  # a split asked for with fraction 0: left out, as datasets cannot reload an empty one
            continue
        recs = {
            "image": [{"bytes": rows[i]["png"], "path": None} for i in ids],
            "deepcad_id": [rows[i]["deepcad_id"] for i in ids],
            "cadquery": [rows[i]["cadquery"] for i in ids],
            "token_count": [rows[i]["token_count"] for i in ids],
            "prompt": [GENCAD_PROMPT] * len(ids),
            "hundred_subset": [split == "test" and k < 100 for k in range(len(ids))],
        }
        out[split] = datasets.Dataset.from_dict(recs, features=gencad_features())
    return datasets.DatasetDict(out)


def _save(out: Path, rows: list[dict[str, Any]], num: int, seed: int, splits: tuple[float, float, float],
          manifest: dict[str, Any]) -> Any:
    """Save the first ``num`` rows as the final DatasetDict in ``out``, with ``synth_stats.json`` beside it."""
    dd = _assemble(rows[:num], seed, splits)
    dd.save_to_disk(str(out))
    stats = {"attempted": manifest["next_index"], "kept": len(rows), "rejected": manifest["rejected"],
             "timing": manifest.get("timing", {})}
    (out / "synth_stats.json").write_text(json.dumps(stats, indent=1))
    return dd


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------
def _build_chunks(box: Any, run: _RunSettings, work: Path, manifest: dict[str, Any], rows: list[dict[str, Any]],
                  num: int, chunk_size: int, max_attempts: int, stop_after_chunks: int | None, bar: Any) -> bool:
    """Run chunk after chunk, each stored before the next, until ``rows`` holds ``num`` samples.

    Returns:
        True when done; False when stopped by ``stop_after_chunks`` first.

    Raises:
        RuntimeError: ``max_attempts`` programs were generated without reaching ``num`` samples.
    """
    dedup = _Dedup(rows, run.max_per_skeleton)
    new_chunks = 0
    while len(rows) < num:
        start = manifest["next_index"]
        if start >= max_attempts:
            raise RuntimeError(
                f"only {len(rows)} of {num} programs were valid and distinct after {start} attempts "
                f"(rejections: {manifest['rejected']}); raise max_attempts or use another seed"
            )
        indices = range(start, start + chunk_size)
        outcomes = _run_chunk(box, run, indices, manifest)
        chunk_rows = _keep_rows(run, indices, outcomes, dedup, manifest["rejected"])
        store_chunk(work, manifest, indices.start, indices.stop, chunk_rows)
        rows.extend(chunk_rows)
        bar.update(min(len(rows), num) - bar.n)
        new_chunks += 1
        if stop_after_chunks is not None and new_chunks >= stop_after_chunks and len(rows) < num:
            return False
    return True


def build_synthetic_dataset(
    num: int,
    out_dir: str | os.PathLike,
    workers: int = 2,
    seed: int = 0,
    image_size: int = 448,
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
    complexity: int = 3,
    progress: bool = True,
    tokenizer: Any = None,
    render_style: Any = None,
    timeout: float = 10.0,
    chunk_size: int = 64,
    allow_multi_solid: bool = False,
    max_per_skeleton: int | None = None,
    min_ink: float = 0.002,
    max_attempts: int | None = None,
    stop_after_chunks: int | None = None,
    sandbox: Any = None,
) -> "datasets.DatasetDict":  # noqa: F821
    """Generate, validate, deduplicate and render ``num`` synthetic (image, program) pairs into ``out_dir``.

    How samples are drawn, kept and resumed is described in the module docstring. A finished run can be
    extended by calling again with a larger ``num``.

    Args:
        num: number of valid samples wanted.
        out_dir: output folder; the final ``DatasetDict`` is saved there with ``save_to_disk``.
        workers: sandbox worker processes.
        seed: base seed.
        image_size: rendered image side in pixels (GenCAD-Code: 448).
        splits: train/validation/test fractions.
        complexity: generator curriculum level, see :func:`generate_program`.
        progress: show a tqdm bar.
        tokenizer: a tokenizer for ``token_count``; None uses :func:`approx_token_count`.
        render_style: None (dataset look), ``"random"`` (per-sample :meth:`RenderStyle.random`, domain
            randomisation), a :class:`cadcoder.render.RenderStyle` or a dict of its fields.
        timeout: seconds per program in the sandbox.
        chunk_size: indices per shard (the unit of resumption).
        allow_multi_solid: keep programs whose result has several disconnected solids.
        max_per_skeleton: optional cap on samples sharing one number-stripped template.
        min_ink: minimum fraction of non-background pixels of a kept image.
        max_attempts: give up after this many generated programs (default ``20 * num + 200``).
        stop_after_chunks: stop (as if interrupted) after this many new chunks; for tests of resumption.
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse (its own worker count and timeout
            apply); None starts one with ``workers`` and ``timeout`` and closes it at the end.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``/``validation``/``test`` and the GenCAD-Code
        columns ``image, deepcad_id, cadquery, token_count, prompt, hundred_subset``; or ``None`` when
        stopped early by ``stop_after_chunks``.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds a run made with different settings.
        RuntimeError: fewer than ``num`` valid samples after ``max_attempts`` programs.
    """
    from tqdm.auto import tqdm

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if complexity not in COMPLEXITY_LEVELS:
        raise ValueError(f"complexity must be one of {COMPLEXITY_LEVELS}, got {complexity!r}")
    _split_counts(num, splits)
    run = _RunSettings(seed, complexity, image_size, render_style, allow_multi_solid, max_per_skeleton, min_ink, tokenizer)
    out = Path(out_dir)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    manifest = open_manifest(work, run.manifest_entry(), out)
    rows = read_shards(work, manifest["shards"])
    max_attempts = 20 * num + 200 if max_attempts is None else max_attempts
    with tqdm(total=num, initial=min(len(rows), num), desc="synth", unit="sample", disable=not progress) as bar, \
            borrow_or_open(sandbox, num_workers=workers, timeout=timeout) as box:
        done = _build_chunks(box, run, work, manifest, rows, num, chunk_size, max_attempts, stop_after_chunks, bar)
    return _save(out, rows, num, seed, splits, manifest) if done else None


def synth_cli(args: argparse.Namespace) -> int:
    """``cadcoder synth --num N --out DIR [--workers K --seed S --image-size P --push-to-hub REPO]``."""
    import sys

    try:
        dd = build_synthetic_dataset(
            num=args.num, out_dir=args.out, workers=args.workers, seed=args.seed, image_size=args.image_size,
            complexity=getattr(args, "complexity", 3), render_style=getattr(args, "render_style", None),
        )
    except (ValueError, RuntimeError) as err:
        print(f"cadcoder synth: error: {err}", file=sys.stderr)
        return 2
    stats = json.loads((Path(args.out) / "synth_stats.json").read_text())
    sizes = ", ".join(f"{k}={len(v)}" for k, v in dd.items())
    print(f"wrote {args.out}: {sizes}; {stats['attempted']} programs generated, rejected {stats['rejected']}")
    if getattr(args, "push_to_hub", None):
        # Needs network and a token (huggingface-cli login); it cannot run on offline machines.
        dd.push_to_hub(args.push_to_hub)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def build_synthetic_mix(
    num: int,
    out_dir: str | os.PathLike,
    complexities: Sequence[int] = (3,),
    seed: int = 0,
    **build_kwargs: Any,
) -> Path:
    """Build a synthetic set whose samples spread evenly over generator complexity levels; return its folder.

    One complexity gives `cadcoder.synth.build_synthetic_dataset` straight into `out_dir`. Several are built
    side by side in `out_dir.parts/complexity-<c>` (each resumable, seed `seed + 1000 * c`), then their
    splits are concatenated and saved to `out_dir` (`save_to_disk`), so the result loads like any dataset.
    A curriculum can then order the mix by program length, simple families first. `build_kwargs` (``workers``,
    ``image_size``, ``render_style``, ...) go to every level's `build_synthetic_dataset`; with
    ``render_style="random"`` the same programs get domain-randomised renders.
    """
    import datasets

    out = Path(out_dir)
    levels = sorted(set(int(c) for c in complexities))
    if not levels:
        raise ValueError("complexities must name at least one generator level, e.g. [0, 1, 2, 3]")
    if len(levels) == 1:
        build_synthetic_dataset(num, out, seed=seed, complexity=levels[0], **build_kwargs)
        return out
    parts = []
    for i, level in enumerate(levels):
        share = num // len(levels) + (1 if i < num % len(levels) else 0)
        part_dir = out.with_name(out.name + ".parts") / f"complexity-{level}"
        parts.append(build_synthetic_dataset(share, part_dir, seed=seed + 1000 * level, complexity=level,
                                             **build_kwargs))
    mixed = datasets.DatasetDict({
        split: datasets.concatenate_datasets([p[split] for p in parts]).shuffle(seed=seed) for split in parts[0]
    })
    tmp = out.with_name(out.name + ".tmp")
    mixed.save_to_disk(str(tmp))
    tmp.rename(out)  # atomic: a half-written folder never looks like a finished dataset
    return out
