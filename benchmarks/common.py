"""What the benchmark scripts share: the checkout's root, argument blocks and writing a report.

Import it as ``import common`` from a script in ``benchmarks/`` (``python benchmarks/x.py`` puts this folder
first on ``sys.path``). The code the scripts measure comes from the installed package (``pip install -e .``):
the real sample from :mod:`cadcoder.real_sample`, the machine and commit line from :mod:`cadcoder.provenance`,
transfer scoring and paired intervals from :mod:`cadcoder.transfer`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cadcoder.real_sample import DEFAULT_SAMPLE

#: The checkout: default data and output folders are below it.
REPO = Path(__file__).resolve().parents[1]


def add_sample_argument(parser: argparse.ArgumentParser | Any) -> None:
    """``--sample DIR``: the gencad_sample folder, default :data:`cadcoder.real_sample.DEFAULT_SAMPLE`."""
    parser.add_argument("--sample", default=str(DEFAULT_SAMPLE), help="gencad_sample folder (programs.jsonl + images/)")


def add_transfer_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """``--strategies``, ``--num-candidates`` and ``--input-style`` of a transfer run on the real sample."""
    from cadcoder.transfer import INPUT_STYLES  # torch loads with it; scripts without a transfer run skip it

    parser.add_argument("--num-candidates", type=int, default=8, help="candidates per image of first_valid / render_compare")
    parser.add_argument("--strategies", default=None, help="comma-separated subset of greedy,first_valid,render_compare (default: all)")
    parser.add_argument("--input-style", default="dataset", choices=INPUT_STYLES,
                        help="'random': feed the real programs rendered with randomised look and camera instead of the real images")


def write_report(out: Path | str, name: str, data: Any, markdown: str | None = None) -> Path:
    """Write ``<out>/<name>.json`` (and ``<out>/<name>.md`` when ``markdown`` is given); return the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    if markdown is not None:
        (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    return path
