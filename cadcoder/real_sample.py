"""The real GenCAD-Code sample: 34 test images with their ground-truth programs, for measurement only.

The sample lives in ``gencad_sample/`` (``programs.jsonl`` + ``images/``) beside the checkout, in
``shared/gencad_sample``, or wherever ``CADCODER_GENCAD_SAMPLE`` points. It is never used for training or for
tuning to single images; numbers measured on it must say they come from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from PIL import Image

from . import tasks
from .sandbox import Sandbox, SandboxJob

#: Where the sample is looked for: ``$CADCODER_GENCAD_SAMPLE``, else ``shared/gencad_sample`` beside the checkout.
DEFAULT_SAMPLE = Path(os.environ.get("CADCODER_GENCAD_SAMPLE", Path(__file__).resolve().parents[2] / "shared" / "gencad_sample"))


def load_sample(sample_dir: Path | str = DEFAULT_SAMPLE, with_images: bool = True) -> List[Dict[str, Any]]:
    """Read ``programs.jsonl`` of the real sample: records with ``deepcad_id``, ``cadquery``, ``image`` (PIL).

    With ``with_images=False`` the ``image`` field stays the file name relative to ``sample_dir`` (nothing is
    decoded), for measurements on the programs alone.

    Raises:
        FileNotFoundError: no ``programs.jsonl`` in ``sample_dir``; the message says where to point instead.
    """
    from processing_cadcoder import to_rgb_image  # torch loads with it; the programs alone do not need it

    sample_dir = Path(sample_dir)
    index = sample_dir / "programs.jsonl"
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} not found; pass --sample DIR pointing at the gencad_sample folder "
            "(programs.jsonl + images/) or set CADCODER_GENCAD_SAMPLE"
        )
    records = []
    with index.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                if with_images:
                    rec["image"] = to_rgb_image(sample_dir / rec["image"])
                records.append(rec)
    return records


def jittered_inputs(records: Sequence[Dict[str, Any]], sandbox: Sandbox, seed: int = 0) -> List[Image.Image]:
    """The real programs rendered with :meth:`cadcoder.render.RenderStyle.random` (image ``i`` from seed
    ``[seed, i]``): another grey level, line width, camera direction, zoom and shift than the dataset's, at the
    real images' size. A stand-in for renders that do not come from GenCAD-Code's own pipeline.

    Raises:
        RuntimeError: a program of the sample failed to render.
    """
    from .render import RenderStyle  # OpenCascade loads with it; load_sample alone does not need it

    size = records[0]["image"].width
    jobs = [
        SandboxJob(rec["cadquery"], tasks.RENDER, {"size": size, **RenderStyle.random(np.random.default_rng([seed, i])).to_dict()})
        for i, rec in enumerate(records)
    ]
    results = sandbox.map(jobs)
    failed = [(r["deepcad_id"], res.error) for r, res in zip(records, results) if not res.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} sample programs failed to render, e.g. {failed[0]}")
    return [Image.fromarray(np.asarray(res.value, dtype=np.uint8), mode="RGB") for res in results]


def write_sheet(pairs: Sequence[tuple], path: Path | str, columns: int = 3, cell: int = 224,
                labels: tuple[str, str] = ("real", "ours")) -> None:
    """Save a grid of ``(deepcad_id, real, other, row)`` pairs side by side, each labelled with its id.

    When ``row`` is a dict it must carry ``silhouette_iou`` and ``edge_f1``, which are printed on the tile;
    pass ``None`` for unscored pairs.
    """
    from .render import side_by_side

    tiles = []
    for deepcad_id, real, ours, row in pairs:
        scores = f" IoU {row['silhouette_iou']:.3f} F1 {row['edge_f1']:.2f}" if row else ""
        tile = side_by_side(
            real.resize((cell, cell), Image.BILINEAR),
            ours.resize((cell, cell), Image.BILINEAR),
            labels=(f"{labels[0]} {deepcad_id}", f"{labels[1]}{scores}"),
        )
        tiles.append(tile)
    tw, th = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tw + 12), rows * (th + 12)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (tw + 12), (i // columns) * (th + 12)))
    sheet.save(path)
