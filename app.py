"""CadCoder's browser demo, in the Hugging Face Spaces layout (``sdk: gradio``, ``app_file: app.py``).

    python app.py                      # serves http://127.0.0.1:7860
    CADCODER_MODEL=org/cadcoder python app.py

The model is ``$CADCODER_MODEL`` (a folder or a Hub id), else ``outputs/quickstart`` when that folder
holds a trained model; with neither, the page says how to get one. ``cadcoder demo --model M --port P``
serves the same page. The page itself lives in :mod:`cadcoder.demo`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cadcoder.demo.examples import default_examples_dir
from cadcoder.demo.page import build_demo, example_images, serve
from cadcoder.demo.service import DemoService

QUICKSTART_MODEL = Path("outputs/quickstart")


def default_model() -> str | None:
    """``$CADCODER_MODEL``, else the quickstart output folder when it holds a model, else ``None``."""
    env = os.environ.get("CADCODER_MODEL", "").strip()
    if env:
        return env
    return str(QUICKSTART_MODEL) if (QUICKSTART_MODEL / "config.json").is_file() else None


service = DemoService(default_model())
demo = build_demo(service, example_images(default_examples_dir()))

if __name__ == "__main__":
    serve(demo, service, default_examples_dir())
