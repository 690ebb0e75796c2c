"""What the benchmark scripts share: the checkout's root, argument blocks and writing a report.

Import it as ``import common`` from a script in ``benchmarks/`` (``python benchmarks/x.py`` puts this folder
first on ``sys.path``). The code the scripts measure comes from the installed package (``pip install -e .``):
the real sample from :mod:`cadcoder.real_sample`, the machine and commit line from :mod:`cadcoder.provenance`,
transfer scoring and paired intervals from :mod:`cadcoder.transfer`.

Two comparison tools live here too: :func:`perturb_numbers` (model-like near misses of a program) and the
naive in-process challenge metric, :func:`naive_metric`, which ``exec``\\ s programs in its own process and
so runs only in a child process started by :func:`naive_metric_isolated`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
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


# A whole literal, exponent included: scaling "17" in "6.1e-17" on its own gives "6.1e-17.55", a syntax error.
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])")


def perturb_numbers(code: str, rng: Any, spread: float) -> str:
    """``code`` with every non-zero numeric literal after the first line scaled by its own factor in [1 - spread, 1 + spread].

    ``rng`` is a ``numpy.random.Generator`` or ``random.Random`` (anything with ``uniform``); the import line is kept.
    """

    def repl(m: re.Match) -> str:
        value = float(m.group(0))
        return m.group(0) if value == 0 else f"{value * rng.uniform(1 - spread, 1 + spread):.4g}"

    head, sep, body = code.partition("\n")
    return head + sep + _NUMBER.sub(repl, body)


def naive_metric(preds: Sequence[str], refs: Sequence[str], cache_references: bool = False) -> dict[str, Any]:
    """The challenge's naive metric, UNSAFE: ``exec`` each program in THIS process, then the surface-voxel IoU.

    Per pair, as the challenge script does: run the prediction and the reference (each reference once when
    ``cache_references``), take ``solid.val()`` and compute :func:`cadcoder.geometry.mecagent_iou` (pitch 0.05).
    A pair whose prediction or reference raises scores ``None`` and counts under the exception's type.
    Call it only in a throwaway child (:func:`naive_metric_isolated`): a program can patch this interpreter,
    hang it or crash it.

    Returns:
        ``{"seconds", "ious", "failures"}``: the loop's wall time (imports excluded), one IoU or None per
        pair, and failure counts by exception type.
    """
    import cadquery as cq

    from cadcoder.geometry import mecagent_iou

    def run(code: str) -> Any:
        ns: dict[str, Any] = {"cq": cq, "cadquery": cq}
        exec(code, ns)  # noqa: S102 - the naive baseline itself; callers run this in a child process
        return ns["solid"].val()

    reference_shapes: dict[str, Any] = {}
    ious: list[float | None] = []
    failures: Counter[str] = Counter()
    t0 = time.perf_counter()
    for pred, ref in zip(preds, refs, strict=True):
        try:
            if not cache_references:
                ref_shape = run(ref)
            elif ref in reference_shapes:
                ref_shape = reference_shapes[ref]
            else:
                ref_shape = reference_shapes[ref] = run(ref)
            ious.append(float(mecagent_iou(run(pred), ref_shape)))
        except Exception as err:  # noqa: BLE001 - any failure of a program is a failed pair, as in the challenge script
            ious.append(None)
            failures[type(err).__name__] += 1
    return {"seconds": time.perf_counter() - t0, "ious": ious, "failures": dict(failures)}


def naive_metric_isolated(preds: Sequence[str], refs: Sequence[str], cache_references: bool = False,
                          timeout: float = 1800.0) -> dict[str, Any]:
    """:func:`naive_metric` in a fresh child Python, so the programs it ``exec``\\ s never run in the caller.

    Raises:
        RuntimeError: the child crashed, hung past ``timeout`` seconds or wrote no result (its stderr tail
            is in the message); rerun with fewer or other programs.
    """
    with tempfile.TemporaryDirectory(prefix="naive_metric_") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"preds": list(preds), "refs": list(refs), "cache_references": cache_references}))
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import common; "
                f"common._naive_child({str(job)!r}, {str(out)!r})")  # fmt: skip
        try:
            proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, timeout=timeout, check=False, env={**os.environ, "PYTHONHASHSEED": "0"})  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"the naive metric ran past {timeout:.0f} s on {len(preds)} pairs (a program hung in "
                               "process?); rerun with a larger timeout or fewer programs") from err  # fmt: skip
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the naive metric's child exited with {proc.returncode} (a program crashed the "
                               f"interpreter?): {proc.stderr[-2000:]}")  # fmt: skip
        return json.loads(out.read_text())


def _naive_child(job_path: str, out_path: str) -> None:
    """Child side of :func:`naive_metric_isolated`: read the job, run the metric, write the result."""
    job = json.loads(Path(job_path).read_text())
    result = naive_metric(job["preds"], job["refs"], cache_references=job["cache_references"])
    Path(out_path).write_text(json.dumps(result))
