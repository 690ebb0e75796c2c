"""GenCAD-Code style datasets -> model inputs.

One loader, :func:`load_cad_dataset`, reads every supported source into the GenCAD-Code schema
(``image, deepcad_id, cadquery, token_count, prompt, hundred_subset``):

* a Hub dataset by name (default ``CADCODER/GenCAD-Code``; ``streaming=True`` supported);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (e.g. ``cadcoder synth``);
* a ``.parquet`` / ``.jsonl`` / ``.json`` file (or a folder of them, one file per split) whose ``image``
  column holds image bytes or paths relative to the file.

Images stay encoded in the dataset (``Image(decode=False)``): :class:`CadCoderCollator` decodes and
tokenises each batch on the fly through the processor, so no pre-tokenised copy of 147K images sits in
RAM. :func:`canonicalize_numbers` offers a shorter number format for programs.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from cadcoder.packing import pack_batch
from cadcoder.schema import (  # noqa: F401  (re-exported: the loader's names for the schema)
    DEFAULT_HUB_DATASET,
    GENCAD_COLUMNS,
    GENCAD_PROMPT,
    REQUIRED_COLUMNS,
    SPLIT_NAMES,
    approx_token_count,
    gencad_features,
)
from processing_cadcoder import to_rgb_image

_OPTIONAL_COLUMNS = tuple(c for c in GENCAD_COLUMNS if c not in REQUIRED_COLUMNS)
_FILE_TYPES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _check_columns(names: Sequence[str], source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{source} has no column {', '.join(repr(m) for m in missing)} (found: {', '.join(names) or 'none'}); "
            f"a CAD dataset needs at least the columns {', '.join(REQUIRED_COLUMNS)} "
            "(the image and its CadQuery program); rename yours with Dataset.rename_column"
        )


def _default_column(name: str, indices: Sequence[int], codes: Callable[[], Sequence[str]]) -> list[Any]:
    """Values of an optional GenCAD-Code column a source lacks, for rows ``indices`` (``codes()``: their programs)."""
    if name == "deepcad_id":
        return [f"row{i:08d}" for i in indices]
    if name == "token_count":
        return [approx_token_count(c) for c in codes()]
    if name == "prompt":
        return [GENCAD_PROMPT] * len(indices)
    return [False] * len(indices)  # hundred_subset: only the Hub's test split marks its first 100 rows


def _fill_defaults(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
    """A streamed batch with the optional GenCAD-Code columns it lacks added."""
    out = {"image": batch["image"], "cadquery": batch["cadquery"]}
    for name in _OPTIONAL_COLUMNS:
        out[name] = batch[name] if name in batch else _default_column(name, indices, lambda: batch["cadquery"])
    if "deepcad_id" in batch:
        out["deepcad_id"] = [str(v) for v in batch["deepcad_id"]]
    return out


def _normalise(ds: Any, source: str, base_dir: Path | None = None, verify_images: bool = True) -> Any:
    """One split -> exactly the GenCAD-Code columns, images left encoded."""
    import datasets

    _check_columns(ds.column_names, source)
    if isinstance(ds, datasets.IterableDataset):
        # Streaming: schema fixed lazily, images decoded by the collator.
        extra = [c for c in ds.column_names if c not in GENCAD_COLUMNS]
        ds = ds.map(_fill_defaults, batched=True, with_indices=True,
                    remove_columns=extra or None)
        return ds.cast(gencad_features(decode_images=False))
    feat = ds.features.get("image")
    if isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
        ds = _resolve_image_paths(ds, source, base_dir, verify_images)
    elif not isinstance(feat, datasets.Image):
        try:
            ds = ds.cast_column("image", datasets.Image(decode=False))
        except Exception as err:  # noqa: BLE001 - re-raised with the fix
            raise ValueError(
                f"{source}: column 'image' has type {feat}; it must hold image files (paths relative to the data "
                "file), encoded image bytes, or datasets.Image values"
            ) from err
    # Only in-memory schema operations below: no cache file, no copy of the image bytes.
    for name in _OPTIONAL_COLUMNS:
        if name not in ds.column_names:
            ds = ds.add_column(name, _default_column(name, range(len(ds)), lambda: ds["cadquery"]))
    ds = ds.select_columns(list(GENCAD_COLUMNS))
    for name, feat in gencad_features(decode_images=False).items():
        if ds.features[name] != feat:
            ds = ds.cast_column(name, feat)
    return ds


def _resolve_image_paths(ds: Any, source: str, base_dir: Path | None, verify: bool) -> Any:
    """Image paths relative to the data file -> absolute paths; missing or unreadable files raise here."""
    import datasets

    base = base_dir or Path(".")
    paths = [p if p is None or os.path.isabs(p) else str(base / p) for p in ds["image"]]
    if verify:
        for row, p in enumerate(paths):
            if p is None or not os.path.isfile(p):
                raise FileNotFoundError(
                    f"{source}: row {row} points to image {p!r}, which does not exist; image paths are "
                    f"resolved relative to the data file's folder ({base})"
                )
            try:
                with Image.open(p) as im:  # reads the header only
                    im.size  # noqa: B018
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"{source}: row {row}: image {p} is unreadable ({err}); replace it with a PNG or JPEG") from err
    ds = ds.remove_columns("image").add_column("image", paths)
    return ds.cast_column("image", datasets.Image(decode=False))


def _load_files(files: dict[str, list[str]], source: str, verify_images: bool) -> Any:
    import datasets

    out = {}
    for split, fs in files.items():
        kind = _FILE_TYPES[Path(fs[0]).suffix.lower()]
        try:
            ds = datasets.load_dataset(kind, data_files={split: fs}, split=split)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"could not read {', '.join(fs)} as {kind}: {err}") from err
        out[split] = _normalise(ds, source, Path(fs[0]).parent, verify_images)
    return datasets.DatasetDict(out)


def _split_files(folder: Path) -> dict[str, list[str]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _FILE_TYPES)
    by_split: dict[str, list[str]] = {}
    for f in files:
        split = next((s for s in SPLIT_NAMES if f.stem == s or f.stem.startswith(s + "-") or f.stem.startswith(s + "_")), "train")
        by_split.setdefault(split, []).append(str(f))
    return by_split


def load_cad_dataset(
    source: str | os.PathLike = DEFAULT_HUB_DATASET,
    split: str | None = None,
    streaming: bool = False,
    verify_images: bool = True,
    **hub_kwargs: Any,
) -> Any:
    """Load a CAD image/program dataset from any supported source into the GenCAD-Code schema.

    Args:
        source: a Hub dataset id (default ``CADCODER/GenCAD-Code``), a ``save_to_disk`` folder, a
            ``.parquet``/``.jsonl``/``.json`` file, or a folder of such files named by split
            (``train.jsonl``, ``validation-00000.parquet`` ...; other names count as ``train``).
        split: ``"train"``, ``"validation"``, ``"test"``, or None for all splits (a ``DatasetDict``).
        streaming: Hub only: return an ``IterableDataset(Dict)`` that downloads as it goes.
        verify_images: for files with image paths, check every path exists and has a readable header.
        **hub_kwargs: passed to ``datasets.load_dataset`` for Hub sources (``revision``, ``cache_dir`` ...).

    Returns:
        A ``Dataset`` (``split`` given) or ``DatasetDict`` with exactly the columns ``image`` (encoded,
        ``Image(decode=False)``: decode with :func:`decode_image` or let the collator do it),
        ``deepcad_id``, ``cadquery``, ``token_count``, ``prompt`` and ``hundred_subset``. Missing optional
        columns are filled (``token_count`` approximated as characters / 1.5).

    Raises:
        FileNotFoundError: a local path that does not exist, or an image file that does not.
        ValueError: a missing ``image``/``cadquery`` column, an unreadable image, an unknown split.
    """
    import datasets

    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        if streaming:
            warnings.warn("streaming=True applies to Hub datasets only; loading the local source normally", stacklevel=2)
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                dd = datasets.DatasetDict({k: _normalise(v, f"{path} [{k}]") for k, v in loaded.items()})
            else:
                dd = datasets.DatasetDict({"train": _normalise(loaded, str(path))})
        elif path.is_dir():
            files = _split_files(path)
            if not files:
                raise FileNotFoundError(
                    f"{path} is a folder without a saved dataset (dataset_dict.json / state.json) or "
                    f"{', '.join(_FILE_TYPES)} files; point to a save_to_disk folder or a data file"
                )
            dd = _load_files(files, str(path), verify_images)
        elif path.suffix.lower() in _FILE_TYPES:
            dd = _load_files({"train": [str(path)]}, str(path), verify_images)
        else:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .parquet, .jsonl or .json")
    elif _HUB_ID.match(text) and not Path(text).suffix.lower() in _FILE_TYPES:
        try:
            loaded = datasets.load_dataset(text, split=split, streaming=streaming, **hub_kwargs)
        except Exception as err:  # noqa: BLE001 - offline machines, typos, gated repos
            raise FileNotFoundError(
                f"could not load the Hub dataset {text!r} ({type(err).__name__}: {err}); check the name, your "
                "network and HF_HUB_OFFLINE, or pass a local save_to_disk folder / parquet / jsonl file"
            ) from err
        if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            return type(loaded)({k: _normalise(v, f"{text} [{k}]") for k, v in loaded.items()})
        return _normalise(loaded, text)
    else:
        raise FileNotFoundError(
            f"{text!r} does not exist; pass an existing save_to_disk folder, .parquet/.jsonl file, "
            f"or a Hub dataset id such as {DEFAULT_HUB_DATASET!r}"
        )
    if split is None:
        return dd
    if split not in dd:
        raise ValueError(f"split {split!r} not in {text} (available: {', '.join(dd)})")
    return dd[split]


def decode_image(value: Any, row: str | None = None) -> Image.Image:
    """Decode an encoded dataset image (``{"bytes", "path"}``, bytes, a path or a PIL image) to RGB.

    Transparent renders go on white, like the dataset (:func:`processing_cadcoder.to_rgb_image`).

    Raises:
        ValueError: the image cannot be decoded; the message names the row.
    """
    where = f" (row {row})" if row is not None else ""
    try:
        return to_rgb_image(value)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"unreadable image{where}: {err}; re-encode it as PNG or JPEG") from err


# ---------------------------------------------------------------------------------------------
# Canonical numbers
# ---------------------------------------------------------------------------------------------
def canonicalize_numbers(code: str, decimals: int = 4, significant: int | None = None) -> str:
    """Rewrite every number in a program in a short canonical form.

    Each literal is rounded to ``decimals`` decimals -- or, when ``significant`` is given, to that many
    significant digits (relative precision: thin plates 1/128 thick keep their thickness) -- and printed
    without trailing zeros: ``0.24753289473684212 -> 0.2475``, ``6.123233995736766e-17 -> 0``,
    ``1.0 -> 1``, ``-0.0 -> 0``. Values below 1e-9 in magnitude (trigonometric noise) become 0 and
    scientific notation is never produced. Identifiers such as ``loop12`` or ``wp_sketch0`` are left alone.
    ``benchmarks/canonical_numbers.py`` measures the token savings and the IoU cost of each setting.

    Raises:
        ValueError: ``decimals`` < 0 or ``significant`` < 1.
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    if significant is not None and significant < 1:
        raise ValueError(f"significant must be >= 1 or None, got {significant}")

    def fmt(m: re.Match) -> str:
        x = float(m.group())
        if abs(x) < 1e-9:
            return "0"
        if significant is not None:
            digits = max(0, significant - 1 - int(math.floor(math.log10(abs(x)))))
        else:
            digits = decimals
        x = round(x, digits)
        s = f"{x:.{digits}f}".rstrip("0").rstrip(".") if digits > 0 else f"{x:.0f}"
        return "0" if s in ("-0", "") else s

    return _NUMBER.sub(fmt, code)


# ---------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------
class CadCoderCollator:
    """Turn raw dataset rows into a training batch through the processor, lazily (one batch at a time).

    Rows need ``image`` (encoded or PIL) and ``cadquery``. The processor builds the right-padded batch;
    the collator then masks every label where ``attention_mask == 0`` (CodeGen's pad token is its EOS, so
    masking by id would hide the supervised final EOS too).

    Args:
        processor: a ``CadCoderProcessor`` (``processor(images=..., text=...)`` -> training batch).
        max_length: longest allowed sequence (image tokens + prompt + program + EOS); None = no limit.
        canonical_numbers: rewrite programs with :func:`canonicalize_numbers` first.
        decimals: decimals kept by the canonical format.
        significant: significant digits instead of fixed decimals (see :func:`canonicalize_numbers`).
        on_too_long: ``"error"`` (default: a truncated program is invalid code and would teach the model
            to stop mid-statement), ``"drop"`` (skip such rows with a warning) or ``"truncate"`` (keep the
            first ``max_length`` tokens, with a warning).
        packing: put several examples per row of ``max_length`` tokens (:mod:`cadcoder.packing`): same loss,
            none of the padding compute. The batch then has ``position_ids`` and no ``attention_mask``.

    Use as ``Trainer(data_collator=CadCoderCollator(processor, max_length=2048), ...)`` with
    ``remove_unused_columns=False``.
    """

    def __init__(self, processor: Any, max_length: int | None = None, canonical_numbers: bool = False,
                 decimals: int = 4, significant: int | None = None, on_too_long: str = "error",
                 packing: bool = False) -> None:
        if on_too_long not in ("error", "drop", "truncate"):
            raise ValueError(f"on_too_long must be 'error', 'drop' or 'truncate', got {on_too_long!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {max_length}")
        self.processor = processor
        self.max_length = max_length
        self.canonical_numbers = canonical_numbers
        self.decimals = decimals
        self.significant = significant
        self.on_too_long = on_too_long
        self.packing = packing

    def _program(self, row: dict[str, Any]) -> str:
        code = row["cadquery"]
        return canonicalize_numbers(code, self.decimals, self.significant) if self.canonical_numbers else code

    def __call__(self, examples: Sequence[dict[str, Any]]) -> Any:
        if not examples:
            raise ValueError("CadCoderCollator got an empty batch")
        for row in examples:
            if "image" not in row or "cadquery" not in row:
                raise ValueError(
                    f"a row has columns {sorted(row)}; the collator needs 'image' and 'cadquery' "
                    "(set TrainingArguments(remove_unused_columns=False))"
                )
        images = [decode_image(r["image"], r.get("deepcad_id")) for r in examples]
        texts = [self._program(r) for r in examples]
        batch = self.processor(images=images, text=texts, return_tensors="pt")
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            lengths = batch["attention_mask"].sum(1).tolist()
            long_rows = [i for i, n in enumerate(lengths) if n > self.max_length]
            names = ", ".join(f"{examples[i].get('deepcad_id', i)} ({lengths[i]} tokens)" for i in long_rows[:5])
            if self.on_too_long == "error":
                raise ValueError(
                    f"{len(long_rows)} program(s) exceed max_length={self.max_length}: {names}; raise max_length, "
                    "filter the dataset by token_count, or pass on_too_long='drop' / 'truncate'"
                )
            warnings.warn(f"{self.on_too_long} {len(long_rows)} over-long program(s): {names}", stacklevel=2)
            if self.on_too_long == "truncate":
                batch = self.processor(images=images, text=texts, return_tensors="pt", max_length=self.max_length)
            else:
                keep = [i for i in range(len(examples)) if i not in long_rows]
                if not keep:
                    raise ValueError(f"every program in the batch exceeds max_length={self.max_length}: {names}")
                batch = self.processor(images=[images[i] for i in keep], text=[texts[i] for i in keep],
                                       return_tensors="pt")
        return self.finalize(batch)

    def finalize(self, batch: Any) -> Any:
        """Mask padding labels of a processor training batch and, with ``packing``, pack it into rows."""
        if "labels" not in batch:
            return batch
        batch["labels"] = batch["labels"].masked_fill(batch["attention_mask"] == 0, -100)
        if not self.packing:
            return batch
        tokenizer = self.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return pack_batch(batch, self.max_length, pad_id)
