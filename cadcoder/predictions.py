"""The results of inference: each candidate program with its outcome, and the prediction for one image.

:class:`CadPrediction` carries the chosen program, a summary of its solid, the STEP text, triangle mesh and
render made inside the sandbox worker (solids cannot cross process boundaries), and every
:class:`Candidate` with the reason it was chosen or rejected. :meth:`CadPrediction.save` writes the files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["NOT_RUN", "EMPTY", "NO_VALID", "Candidate", "CadPrediction"]

#: Statuses a candidate can have besides the sandbox's ``"ok"`` and :data:`cadcoder.sandbox.FAILURE_REASONS`.
NOT_RUN = "not_run"
EMPTY = "empty"
NO_VALID = "no_valid_candidate"


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
            paths.update(write_part_files(out, self.program, self.step, self.vertices, self.faces,
                                          self._preview(input_image)))  # fmt: skip
        paths["report"] = out / "report.json"
        paths["report"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return paths

    def _preview(self, input_image: Image.Image | None) -> Image.Image | None:
        """The render, beside the input image when there is one (``None`` without a render)."""
        if self.render is None:
            return None
        rendered = Image.fromarray(np.asarray(self.render, dtype=np.uint8), mode="RGB")
        if input_image is None:
            return rendered
        from cadcoder.render import side_by_side

        label = "prediction" if self.score is None else f"prediction (score {self.score:.2f})"
        return side_by_side(input_image, rendered, labels=("input", label))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
