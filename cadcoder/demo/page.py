"""The demo page, laid out with Gradio: upload a picture of a part, get its program, a 3D view and files.

Gradio is an optional dependency (``pip install -e ".[demo]"``). The work behind each button is done by
:class:`cadcoder.demo.service.DemoService`; this module only wires components to it. Elements the browser
test looks for carry ``elem_id`` values starting with ``cc-``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cadcoder.demo.examples import default_examples_dir, make_example_images
from cadcoder.demo.service import CANDIDATE_COLUMNS, MAX_CANDIDATES, DemoResult, DemoService
from cadcoder.selection import STRATEGIES

__all__ = ["require_gradio", "build_demo", "serve", "example_images", "demo_cli"]

logger = logging.getLogger(__name__)

INTRO = (
    "# CadCoder: picture of a part → CadQuery program\n"
    "Upload an isometric render of a mechanical part, or pick an example. The model writes candidate "
    "programs; each runs in an isolated sandbox, and the strategy picks one: `greedy` keeps the first, "
    "`first_valid` the first that builds a solid, `render_compare` the one whose render looks most like "
    "your image."
)

# Where each stage of a request sits on the progress bar: (start, end).
_STAGES = {"generating": (0.05, 0.5, "generating candidates"), "running": (0.5, 0.95, "running candidates"),
           "exporting": (0.95, 1.0, "exporting the solid")}  # fmt: skip


def require_gradio() -> Any:
    """Import Gradio, or raise ``ImportError`` naming the extra that installs it."""
    try:
        import gradio
    except ImportError as exc:
        raise ImportError('the demo needs Gradio: pip install -e ".[demo]" (or pip install "cadcoder[demo]")') from exc
    return gradio


def _progress_callback(progress: Any) -> Any:
    """Map ``generate_cad``'s ``(stage, done, total)`` reports onto a Gradio progress bar."""

    def report(stage: str, done: int, total: int) -> None:
        lo, hi, words = _STAGES.get(stage, (0.0, 1.0, stage))
        fraction = lo + (hi - lo) * (done / total if total else 0.0)
        progress(fraction, desc=f"{words} ({done}/{total})" if stage != "exporting" else words)

    return report


def _pick_example(examples: Sequence[str | os.PathLike]) -> Any:
    """A gallery ``select`` handler that puts the clicked example into the upload box."""
    import gradio as gr

    def pick(event: gr.SelectData) -> str:
        return str(examples[event.index])

    # Gradio finds the event argument by its annotation, which postponed evaluation leaves as a string.
    pick.__annotations__["event"] = gr.SelectData
    return pick


def _outputs(result: DemoResult) -> tuple[Any, ...]:
    import pandas as pd

    table = pd.DataFrame(result.candidates, columns=CANDIDATE_COLUMNS)
    files = [str(p) for p in result.downloads] or None
    comparison = str(result.comparison) if result.comparison else None
    view = str(result.view) if result.view else None
    return result.message, comparison, view, result.program, files, table


def build_demo(service: DemoService, examples: Sequence[str | os.PathLike] = ()) -> Any:
    """Lay out the page for ``service`` and return the ``gr.Blocks`` (not launched; see :func:`serve`).

    Args:
        service: the model, sandbox and request logic.
        examples: image files offered as examples (see :func:`cadcoder.demo.examples.make_example_images`).
    """
    gr = require_gradio()
    with gr.Blocks(title="CadCoder: image to CadQuery", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Accordion("Model", open=not service.ready):
            with gr.Row():
                model_box = gr.Textbox(value=service.model_name or "", label="Model folder or Hub id",
                                       placeholder="outputs/quickstart", scale=4, elem_id="cc-model")  # fmt: skip
                load_button = gr.Button("Load", scale=1, elem_id="cc-load")
            model_status = gr.Markdown(service.status(), elem_id="cc-model-status")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image of a part (PNG or JPEG)", type="filepath", elem_id="cc-upload")
                if examples:
                    gallery = gr.Gallery([str(p) for p in examples], label="Examples: synthetic parts (click one)",
                                         columns=4, height=130, allow_preview=False, interactive=False,
                                         elem_id="cc-examples")  # fmt: skip
                    gallery.select(_pick_example(examples), outputs=[upload])
                strategy = gr.Dropdown(list(STRATEGIES), value="render_compare", label="Strategy", elem_id="cc-strategy")
                candidates = gr.Slider(1, MAX_CANDIDATES, value=8, step=1, label="Candidates", elem_id="cc-candidates-n")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="cc-seed")
                run_button = gr.Button("Generate CAD", variant="primary", elem_id="cc-run")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload an image and press *Generate CAD*.", elem_id="cc-status")
                comparison = gr.Image(label="Input | render of the result", type="filepath", interactive=False,
                                      elem_id="cc-compare")  # fmt: skip
                view = gr.Model3D(label="3D view (drag to rotate, scroll to zoom)", interactive=False,
                                  camera_position=(-45, 60, None), clear_color=(1.0, 1.0, 1.0, 1.0),
                                  elem_id="cc-view")  # fmt: skip
                code = gr.Code(language="python", label="CadQuery program", interactive=False, buttons=["copy"],
                               elem_id="cc-code")  # fmt: skip
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="cc-downloads")
        table = gr.Dataframe(headers=CANDIDATE_COLUMNS, label="Candidates", interactive=False, wrap=True,
                             elem_id="cc-table")  # fmt: skip

        def generate(path: str | None, strategy_name: str, n: float, seed_value: float,
                     progress: Any = gr.Progress()) -> tuple[Any, ...]:  # fmt: skip
            result = service.run(path, strategy_name, int(n), int(seed_value or 0), _progress_callback(progress))
            return _outputs(result)

        run_button.click(generate, inputs=[upload, strategy, candidates, seed],
                         outputs=[status, comparison, view, code, downloads, table])  # fmt: skip
        load_button.click(service.load, inputs=[model_box], outputs=[model_status])
    return demo


def serve(
    demo: Any,
    service: DemoService,
    examples_dir: str | os.PathLike | None = None,
    port: int | None = None,
    host: str | None = None,
    block: bool = True,
) -> Any:
    """Launch the page on ``host:port`` (Gradio's defaults: 127.0.0.1 and 7860, or ``$GRADIO_SERVER_*``).

    Uploads are capped by :data:`cadcoder.demo.uploads.MAX_UPLOAD_BYTES`; one request runs at a time, so
    the model and the sandbox are never shared by two requests. With ``block=False`` the server runs in a
    background thread and the call returns (tests, notebooks); stop it with ``demo.close()``.
    """
    from cadcoder.demo.uploads import MAX_UPLOAD_BYTES

    allowed = [str(service.work_dir)] + ([str(examples_dir)] if examples_dir is not None else [])
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, allowed_paths=allowed, max_file_size=MAX_UPLOAD_BYTES,
                       prevent_thread_lock=not block, ssr_mode=False, show_error=True, quiet=not block)  # fmt: skip


def example_images(examples_dir: str | os.PathLike | None, count: int = 4) -> list[Path]:
    """The page's example images, made on first use; an empty list (and a log line) when they cannot be made."""
    try:
        return make_example_images(examples_dir, count=count)
    except Exception:  # examples are a convenience: the page works without them
        logger.exception("could not make the example images; the page has none")
        return []


def demo_cli(args: argparse.Namespace) -> int:
    """``cadcoder demo [--model M] [--port P]``: serve the page until interrupted.

    Returns 2 when Gradio is missing (the message names the extra). A model that fails to load is reported
    on the page, which keeps serving.
    """
    try:
        require_gradio()
    except ImportError as exc:
        print(f"cadcoder demo: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    examples_dir = Path(args.examples_dir) if args.examples_dir else default_examples_dir()
    service = DemoService(args.model, device=args.device, timeout=args.timeout)
    if service.model_error:
        print(f"cadcoder demo: warning: {service.model_error}", file=sys.stderr)
    demo = build_demo(service, example_images(examples_dir, args.num_examples))
    try:
        serve(demo, service, examples_dir, port=args.port, host=args.host)
    finally:
        service.close()
    return 0
