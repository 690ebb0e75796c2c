"""One demo request, without Gradio: upload in; program, files, candidate table and messages out.

:class:`DemoService` keeps the model and one warm :class:`cadcoder.sandbox.Sandbox` for the life of the
page. Every failure a visitor can cause (no model yet, a model that does not load, a bad upload, no valid
candidate) comes back as a :class:`DemoResult` with a message for the page; nothing is raised, so the
server keeps serving the next request.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcoder.demo.uploads import UploadError, read_upload
from cadcoder.selection import STRATEGIES, ProgressCallback

__all__ = ["HOW_TO_GET_A_MODEL", "MAX_CANDIDATES", "CANDIDATE_COLUMNS", "DemoResult", "DemoService"]

logger = logging.getLogger(__name__)

HOW_TO_GET_A_MODEL = (
    "**No model is loaded yet.** Train the CPU quickstart model on this machine (about 30 min on 2 cores):\n\n"
    "```\npython train.py configs/quickstart.json\n```\n\n"
    "then start the demo with `cadcoder demo --model outputs/quickstart`, or type a model folder or Hub id "
    "in the *Model* box and press *Load*."
)
MAX_CANDIDATES = 32
_VIEW_RGBA = (175, 175, 175, 255)  # the grey of the dataset's renders
_Z_UP_TO_Y_UP = ((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
CANDIDATE_COLUMNS = ["#", "kind", "status", "score", "chosen", "reason"]


@dataclass
class DemoResult:
    """What the page shows for one request.

    Attributes:
        ok: a valid solid was built.
        message: Markdown for the status line: the outcome, or what went wrong and what to do.
        program: the chosen program (the first candidate when none was valid; empty when none was made).
        comparison: PNG of the input beside the render of the result.
        view: GLB mesh of the solid for the 3D viewer.
        downloads: ``part.py``, ``part.step`` and ``part.stl``, those that were written.
        candidates: one row per candidate, in :data:`CANDIDATE_COLUMNS` order.
        seconds: wall-clock seconds of the request.
    """

    ok: bool
    message: str
    program: str = ""
    comparison: Path | None = None
    view: Path | None = None
    downloads: list[Path] = field(default_factory=list)
    candidates: list[list[Any]] = field(default_factory=list)
    seconds: float = 0.0


def _candidate_rows(prediction: Any) -> list[list[Any]]:
    rows = []
    for c in prediction.candidates:
        score = "" if c.score is None else round(float(c.score), 3)
        status = c.status if not c.error or c.ok else f"{c.status}: {c.error}"
        rows.append([c.index, "sampled" if c.sampled else "greedy", status, score, "yes" if c.selected else "", c.reason])
    return rows


def _outcome_message(prediction: Any, seconds: float) -> str:
    valid = sum(c.ok for c in prediction.candidates)
    total = len(prediction.candidates)
    if not prediction.ok:
        return (f"**No valid solid.** None of the {total} candidate(s) built a solid; the table says why each "
                "failed. Try more candidates, another seed, or a cleaner image of a single part.")  # fmt: skip
    score = "" if prediction.score is None else f", render-and-compare score {prediction.score:.2f}"
    return f"**Done** in {seconds:.1f} s: {valid} of {total} candidate(s) built a valid solid{score}."


class DemoService:
    """The model, a warm sandbox and a folder of request outputs, behind one :meth:`run` call.

    Args:
        model: a model folder or Hub id to load now; ``None``: start without one (the page says how to
            get one).
        device: torch device (default: CUDA when available, else CPU).
        num_workers: sandbox worker slots (default: the CPU count, at most 4).
        timeout: seconds per program in the sandbox.
        work_dir: where request outputs go (default: a new temporary folder).
        keep_requests: how many request folders to keep; older ones are deleted.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str | None = None,
        num_workers: int | None = None,
        timeout: float = 10.0,
        work_dir: str | os.PathLike | None = None,
        keep_requests: int = 20,
    ) -> None:
        self.device = device
        self.num_workers = num_workers
        self.timeout = float(timeout)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="cadcoder-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.keep_requests = max(1, int(keep_requests))
        self.model_name: str | None = None
        self.model_error: str = ""
        self._model: Any = None
        self._processor: Any = None
        self._sandbox: Any = None
        self._requests = 0
        self._lock = threading.Lock()
        if model is not None and str(model).strip():
            self.load(model)

    # -- the model ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether a model is loaded."""
        return self._model is not None

    def load(self, name: str | os.PathLike) -> str:
        """Load a model folder or Hub id; on failure keep the current model and say why.

        Returns:
            The Markdown status of the model (see :meth:`status`).
        """
        from cadcoder.loading import load_model

        name = str(name).strip()
        if not name:
            self.model_error = "Type a model folder (such as `outputs/quickstart`) or a Hub id, then press *Load*."
            return self.status()
        try:
            model, processor = load_model(name, device=self.device)
        except Exception as exc:  # any failure to load is reported on the page; the server keeps running
            logger.warning("could not load model %s: %s: %s", name, type(exc).__name__, exc)
            self.model_error = f"**Could not load model `{name}`:** {type(exc).__name__}: {exc}"
            return self.status()
        with self._lock:
            self._model, self._processor, self.model_name, self.model_error = model, processor, name, ""
        return self.status()

    def status(self) -> str:
        """Markdown: which model is loaded, the last loading error, or how to get a model."""
        parts = [self.model_error] if self.model_error else []
        if self.ready:
            parts.append(f"Model: `{self.model_name}`" + (" (still in use)" if self.model_error else ""))
        else:
            parts.append(HOW_TO_GET_A_MODEL)
        return "\n\n".join(parts)

    # -- one request -------------------------------------------------------------------------------
    def run(
        self,
        upload: str | os.PathLike | None,
        strategy: str = "render_compare",
        num_candidates: int = 8,
        seed: int = 0,
        on_progress: ProgressCallback | None = None,
    ) -> DemoResult:
        """Turn one uploaded image into a program, its files and the candidate table; never raises.

        Args:
            upload: path of the uploaded file.
            strategy: ``greedy``, ``first_valid`` or ``render_compare``.
            num_candidates: candidates for the sampling strategies, 1 to :data:`MAX_CANDIDATES`.
            seed: the sampling seed; the same seed and image give the same result.
            on_progress: forwarded to :func:`cadcoder.inference.generate_cad`.
        """
        t0 = time.monotonic()
        if not self.ready:
            return DemoResult(ok=False, message=self.status())
        try:
            image = read_upload(upload)
            options = self._options(strategy, num_candidates, seed)
        except (UploadError, ValueError) as exc:
            return DemoResult(ok=False, message=f"**Cannot use this input.** {exc}")
        try:
            with self._lock:
                prediction = self._generate(image.image, options, on_progress)
                folder = self._request_folder()
                written = prediction.save(folder, input_image=image.image)
        except Exception as exc:  # a broken request must not take the page down
            logger.exception("demo request failed")
            return DemoResult(ok=False, message=f"**The request failed:** {type(exc).__name__}: {exc}. "
                                                "The demo is still running; try again.")  # fmt: skip
        seconds = time.monotonic() - t0
        message = " ".join([_outcome_message(prediction, seconds), *image.notes])
        return DemoResult(
            ok=prediction.ok,
            message=message,
            program=prediction.program,
            comparison=written.get("preview"),
            view=self._write_view(prediction, folder),
            downloads=[written[k] for k in ("program", "step", "stl") if k in written],
            candidates=_candidate_rows(prediction),
            seconds=seconds,
        )

    def _options(self, strategy: str, num_candidates: Any, seed: Any) -> Any:
        from cadcoder.inference import GenerationOptions

        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        n = int(num_candidates)
        if not 1 <= n <= MAX_CANDIDATES:
            raise ValueError(f"the number of candidates must be between 1 and {MAX_CANDIDATES}, got {n}")
        return GenerationOptions(strategy=strategy, num_candidates=n, seed=int(seed), timeout=self.timeout,
                                 batch_size=1)  # fmt: skip

    def _generate(self, image: Any, options: Any, on_progress: ProgressCallback | None) -> Any:
        from cadcoder.inference import generate_cad

        return generate_cad(self._model, self._processor, [image], options, sandbox=self._warm_sandbox(),
                            on_progress=on_progress)[0]  # fmt: skip

    def _warm_sandbox(self) -> Any:
        from cadcoder.sandbox import Sandbox
        from cadcoder.selection import default_num_workers

        if self._sandbox is None:
            workers = self.num_workers if self.num_workers is not None else default_num_workers()
            self._sandbox = Sandbox(num_workers=workers, timeout=self.timeout)
        return self._sandbox

    def _request_folder(self) -> Path:
        """A new folder for this request's files; the oldest beyond ``keep_requests`` are removed."""
        self._requests += 1
        folder = self.work_dir / f"request-{self._requests:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        old = sorted(self.work_dir.glob("request-*"))[: -self.keep_requests]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    @staticmethod
    def _write_view(prediction: Any, folder: Path) -> Path | None:
        """The solid as GLB for the page's 3D viewer (``None`` without a mesh)."""
        if prediction.vertices is None or prediction.faces is None:
            return None
        from cadcoder.export import mesh_to_trimesh

        path = folder / "part.glb"
        mesh = mesh_to_trimesh(prediction.vertices, prediction.faces)
        mesh.apply_transform(_Z_UP_TO_Y_UP)  # CadQuery is Z-up, glTF viewers are Y-up
        mesh.visual.face_colors = _VIEW_RGBA
        mesh.export(path, file_type="glb")
        return path

    def close(self) -> None:
        """Stop the sandbox workers (the service can still be used: a new sandbox starts on demand)."""
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
