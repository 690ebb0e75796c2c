"""The `cadcoder` command: one verb per job.

    cadcoder generate IMAGE... --model M --out DIR     image -> program, STEP, STL and preview
    cadcoder evaluate PREDS.jsonl                      score predictions against references
    cadcoder synth --num N --out DIR                   build a synthetic GenCAD-style dataset
    cadcoder render PROGRAM.py --out IMAGE.png         render a program the way the dataset does
    cadcoder demo --model M [--port P]                 serve the browser demo (needs the demo extra)

Each verb's arguments are declared here; the work is done by the library module named in its handler.
Heavy imports (torch, cadquery) happen inside the handlers so `cadcoder --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


# --- generate (cadcoder.inference) -------------------------------------------------------------
def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write a CadQuery program, STEP, STL and preview for each image")
    p.add_argument("images", nargs="+", help="input image files (PNG/JPEG)")
    p.add_argument("--model", required=True, help="a saved model folder or a Hub id")
    p.add_argument("--out", required=True, help="output folder; one sub-folder per image")
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--strategy", default="render_compare", choices=["greedy", "first_valid", "render_compare"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program in the sandbox")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per image, all candidates together")
    p.add_argument("--device", default=None, help="torch device; default cuda if available else cpu")
    p.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from cadcoder.inference import generate_cli

    return generate_cli(args)


# --- evaluate (cadcoder.evaluation) ------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a JSONL file of predictions against references")
    p.add_argument("predictions", help="JSONL with fields 'prediction' and 'reference' (CadQuery source)")
    p.add_argument("--out", default=None, help="where to write the JSON report (default: PREDS.report.json)")
    p.add_argument("--protocol", default="aligned", choices=["aligned", "bbox", "mecagent"])
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--with-chance", action="store_true", help="also score references against shuffled references")
    p.add_argument("--fast", action="store_true", help="use the fast IoU path instead of exact booleans")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cadcoder.evaluation import evaluate_cli

    return evaluate_cli(args)


# --- synth (cadcoder.synth) --------------------------------------------------------------------
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a synthetic GenCAD-style dataset (DatasetDict on disk)")
    p.add_argument("--num", type=int, required=True, help="number of valid samples to produce")
    p.add_argument("--out", required=True, help="output folder; an interrupted run resumes from it")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--complexity", type=int, default=3, choices=[0, 1, 2, 3],
                   help="0: one simple profile ... 3: the GenCAD-Code distribution (default)")
    p.add_argument("--render-style", default=None, choices=["random"],
                   help="'random': domain-randomised renders (grey level, line width, camera jitter)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the DatasetDict to this repo")
    p.set_defaults(handler=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from cadcoder.synth import synth_cli

    return synth_cli(args)


# --- render (cadcoder.render) ------------------------------------------------------------------
def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a CadQuery program in the GenCAD-Code image style")
    p.add_argument("program", help="a .py file holding CadQuery source")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(handler=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from cadcoder.render import render_cli

    return render_cli(args)


# --- demo (cadcoder.demo) ----------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="serve the browser demo: image in, program, 3D view and STEP/STL out")
    p.add_argument("--model", default=None,
                   help="a saved model folder or a Hub id; without one the page says how to get a model")
    p.add_argument("--port", type=int, default=None, help="port to serve on (default 7860, or $GRADIO_SERVER_PORT)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 serves the network)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program in the sandbox")
    p.add_argument("--device", default=None, help="torch device; default cuda if available else cpu")
    p.add_argument("--examples-dir", default=None, help="where the example images are made and cached")
    p.add_argument("--num-examples", type=int, default=4)
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from cadcoder.demo.page import demo_cli

    return demo_cli(args)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `cadcoder` command."""
    parser = argparse.ArgumentParser(prog="cadcoder", description="Image-to-CadQuery tools.")
    sub = parser.add_subparsers(dest="verb", required=True)
    for add in (_add_generate, _add_evaluate, _add_synth, _add_render, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cadcoder` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
