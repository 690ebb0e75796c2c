"""The model card (README.md) of a trained CadCoder folder: Hub metadata, how to use, results, training config.

Metadata goes through `huggingface_hub.ModelCardData`, so the Hub reads the same YAML header it writes itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["card_data", "write_model_card"]

TAGS: tuple[str, ...] = ("custom_code", "cadcoder", "cadquery", "cad", "image-to-code")

_USE = """## Use

```python
from transformers import AutoModel, AutoProcessor
from PIL import Image

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
inputs = processor(images=[Image.open("part.png")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=512, do_sample=False)
program = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
```

Run generated programs only in a sandbox (`cadcoder.sandbox`): they are untrusted code.
"""

_RESULTS_INTRO = (
    "Measured by executing the generated programs (greedy decoding) and comparing solids "
    "(protocol `{protocol}`, failures count as IoU 0 in `iou_mean_all`). "
    "`iou_chance` scores each reference against another reference; the constant baseline predicts "
    "one fixed program (the best of several training programs, chosen on validation) for every image."
)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def card_data(dataset: str | None = None, base_models: Sequence[str] = ()) -> ModelCardData:
    """The card's Hub metadata; a local dataset folder is not listed (the Hub knows only Hub ids)."""
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license="apache-2.0",
        tags=list(TAGS),
        datasets=[dataset] if dataset and not Path(dataset).exists() else None,
        base_model=list(base_models) or None,
    )


def _evaluation_section(results: Mapping[str, Any] | None) -> list[str]:
    """The "Evaluation" section: a table of the measured figures, or a note that training is running."""
    lines = ["## Evaluation", ""]
    if not results:
        return lines + ["Training in progress; the final evaluation is written here when training ends."]
    lines += [_RESULTS_INTRO.format(protocol=results.get("protocol", "aligned")), "", "| metric | value |", "| --- | --- |"]
    return lines + [f"| {k} | {_fmt(v)} |" for k, v in results.items() if not isinstance(v, (dict, list))]


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    results: Mapping[str, Any] | None = None,
    model_description: str = "",
    dataset: str | None = None,
    base_models: Sequence[str] = (),
    hub_model_id: str | None = None,
) -> Path:
    """Write `output_dir/README.md`: Hub metadata, how to use, measured results and the training config.

    `results` holds the measured figures (e.g. test iou_mean_all, iou_chance, constant baseline,
    distinct share, VSR); None writes a card that says training is in progress.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    repo = hub_model_id or str(out)
    body = [
        f"# CadCoder: {Path(repo).name}",
        "",
        "Image of a mechanical part in, CadQuery program out. "
        + (model_description or "Trained with `train.py` of the CadCoder project."),
        "",
        _USE.format(repo=repo),
        *_evaluation_section(results),
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(dict(config), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    card = ModelCard(f"---\n{card_data(dataset, base_models).to_yaml()}\n---\n\n" + "\n".join(body))
    path = out / "README.md"
    card.save(path)
    return path
