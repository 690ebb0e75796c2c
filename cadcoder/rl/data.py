"""What RL starts from: the policy checkpoint (through the project's one loader) and the training images.

Training images come from any source :func:`cadcoder.data.load_cad_dataset` reads (a ``save_to_disk`` folder
such as ``cadcoder synth`` output, parquet / jsonl, a Hub id), or from a plain folder of image files, which
has no programs and so suits the reference-free ``render`` reward only. Images stay encoded until their
step needs them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from cadcoder.rl.rewards import RLExample

__all__ = ["IMAGE_SUFFIXES", "load_policy", "load_rl_examples", "decoded"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_policy(name_or_path: str | os.PathLike, device: str | None = None) -> tuple[Any, Any]:
    """The model and processor RL starts from, loaded by :func:`cadcoder.inference.load_model`.

    Raises:
        FileNotFoundError / OSError: from the loader (a folder without weights or processor, an unknown Hub id),
            with the fix in the message.
        ValueError: what loaded as the processor is not a CadCoder processor (e.g. a bare tokenizer).
    """
    from cadcoder.inference import load_model

    model, processor = load_model(name_or_path, device=device)
    if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
        raise ValueError(
            f"{name_or_path} has no CadCoder processor (found {type(processor).__name__}); RL needs the processor that "
            f"turns images into prompts: save it next to the weights with processor.save_pretrained('{name_or_path}') "
            "(train.py does this), or start from a complete checkpoint folder"
        )
    return model, processor


def _image_folder(path: Path) -> list[RLExample] | None:
    """The images of a plain folder of image files (no programs), or None if ``path`` is not one."""
    if not path.is_dir() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    data_files = [p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".jsonl", ".json")]
    if not files or data_files:
        return None
    return [RLExample(image=str(p), program=None, key=p.name) for p in files]


def _no_programs(source: str, count: int | None) -> ValueError:
    """The error of an ``iou`` run on images without reference programs (``count=None``: no program column)."""
    what = "no 'cadquery' column" if count is None else f"{count} image(s) without a 'cadquery' program"
    return ValueError(
        f"the 'iou' reward needs a reference program per image, but {source} has {what}; use --reward render "
        "for unlabelled images, or a dataset with a 'cadquery' column (e.g. the output of `cadcoder synth`)"
    )


def _dataset_rows(source: str, split: str, need_programs: bool) -> list[RLExample]:
    """The split's rows through :func:`cadcoder.data.load_cad_dataset`, images left encoded."""
    from cadcoder.data import load_cad_dataset

    try:
        ds = load_cad_dataset(source, split=split)
    except ValueError as err:
        if "'cadquery'" in str(err):
            if need_programs:
                raise _no_programs(source, None) from err
            raise ValueError(f"{err}. For unlabelled images and --reward render, pass a folder of image files") from err
        raise
    keys, programs = ds["deepcad_id"], ds["cadquery"]
    images = ds["image"]
    return [RLExample(image=images[i], program=programs[i] or None, key=str(keys[i])) for i in range(len(ds))]


def load_rl_examples(source: str | os.PathLike, split: str = "train", max_samples: int | None = None,
                     need_programs: bool = True) -> list[RLExample]:
    """The training images (and reference programs, when there are) of ``source``'s ``split``.

    Args:
        source: a dataset :func:`cadcoder.data.load_cad_dataset` reads, or a folder of image files.
        split: the split to train on (ignored for a folder of images).
        max_samples: keep the first N examples.
        need_programs: the reward compares against reference programs (``iou``).

    Raises:
        ValueError: no examples, or ``need_programs`` and some image has no program; the message says what to pass.
        FileNotFoundError: the source does not exist.
    """
    text = os.fspath(source)
    examples = _image_folder(Path(text).expanduser())
    if examples is None:
        examples = _dataset_rows(text, split, need_programs)
    if max_samples is not None:
        examples = examples[: max(0, int(max_samples))]
    if not examples:
        raise ValueError(
            f"no training images in {text} (split {split!r}, max_train_samples={max_samples}); pass a dataset with "
            "rows in that split (`cadcoder synth --num N --out DIR` builds one) or a folder of image files"
        )
    missing = sum(ex.program is None for ex in examples)
    if need_programs and missing:
        raise _no_programs(text, missing)
    return examples


def decoded(example: RLExample) -> RLExample:
    """The example with its image decoded to an RGB PIL image (:func:`cadcoder.data.decode_image`)."""
    from cadcoder.data import decode_image

    return replace(example, image=decode_image(example.image, row=example.key or None))
