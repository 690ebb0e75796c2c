"""Variants of the quickstart recipe: ``python train.py configs/quickstart.json`` plus overrides, and the levers.

A variant is ``(max_steps, eval_every, overrides)``; :func:`train_command` turns it into a train.py command line
with checkpoints, in-training generation and the synthetic test pass off, and :func:`run_variants` trains several
as parallel processes. :data:`LEVERS` are the variants that each change one thing against ``base``, to find what
moves synthetic-to-real transfer. Training needs a source checkout (``train.py`` and ``configs/`` beside the
package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

#: The checkout that holds train.py and configs/.
REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/quickstart.json"
#: name -> (max_steps, eval_every, overrides of configs/quickstart.json)
Variants = Mapping[str, Tuple[int, int, List[str]]]

#: lever -> (what changes against base, train.py overrides beyond the dataset)
LEVERS: Dict[str, tuple[str, List[str]]] = {
    "base": ("quickstart recipe, smaller synthetic set, dataset look", []),
    "random_render": ("same programs, domain-randomised renders", ["--synth_render_style", "random"]),
    "more_data": ("more synthetic pairs (base's are the first ones)", []),
    "larger_model": ("6 x 384 CodeGen decoder instead of 4 x 256", ["--n_layer", "6", "--n_embd", "384", "--n_head", "6"]),
}


def train_command(name: str, out_dir: Path, workers: int, variants: Variants) -> list[str]:
    """The train.py command line of one variant of ``variants`` (name -> (max_steps, eval_every, overrides))."""
    steps, every, overrides = variants[name]
    return [sys.executable, "train.py", CONFIG, "--output_dir", str(out_dir / name), "--max_steps", str(steps),
            "--eval_steps", str(every), "--logging_steps", str(every), "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--metric_for_best_model", "loss", "--generate_eval_samples", "0",
            "--test_samples", "0", "--report_to", "none", "--dataloader_num_workers", str(workers), *overrides]


def run_variants(names: Sequence[str], out_dir: Path, parallel: int, workers: int, variants: Variants) -> None:
    """Train the variants, ``parallel`` at a time; each one's log goes to ``<out_dir>/<name>.log``.

    Raises:
        FileNotFoundError: no train.py beside the package; run from a source checkout.
    """
    if not (REPO / "train.py").is_file():
        raise FileNotFoundError(f"{REPO / 'train.py'} not found; training variants needs a source checkout "
                                "(pip install -e . from a clone)")
    pending = list(names)
    running: dict[str, subprocess.Popen] = {}
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            log = open(out_dir / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
            running[name] = subprocess.Popen(train_command(name, out_dir, workers, variants), cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"[sweep] {name}: exit {proc.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
                del running[name]
        time.sleep(2)


def trained(folder: Path) -> bool:
    """Whether ``folder`` holds a finished train.py run (its trainer state is written after training)."""
    return (folder / "trainer_state.json").is_file() and (folder / "config.json").is_file()


def last_eval(folder: Path) -> Dict[str, Any]:
    """Steps trained, last validation loss and image gain, and training seconds of a variant, from its trainer state."""
    state = json.loads((folder / "trainer_state.json").read_text())
    history = state["log_history"]
    evals = [h for h in history if "eval_image_gain" in h]
    train = next((h for h in reversed(history) if "train_runtime" in h), {})
    last = evals[-1] if evals else {}
    return {"steps": state.get("global_step"), "eval_loss": last.get("eval_loss"),
            "eval_image_gain": last.get("eval_image_gain"), "train_seconds": train.get("train_runtime")}


def lever_dataset(lever: str, data_dir: Path, base_num: int, data_factor: int) -> tuple[Path, int]:
    """The synthetic set a lever trains on: its folder and its number of pairs."""
    if lever == "random_render":
        return data_dir / f"random-{base_num}", base_num
    if lever == "more_data":
        return data_dir / f"base-{base_num * data_factor}", base_num * data_factor
    return data_dir / f"base-{base_num}", base_num


def start_from_smaller_set(small: Path, big: Path) -> None:
    """Start a larger set's per-level work folders from a smaller finished set with the same settings.

    :func:`cadcoder.synth.build_synthetic_dataset` draws sample i from a seed of its own and resumes a work
    folder whose settings match, so the larger set built from the copy is the one a fresh build would make.
    """
    src, dst = small.with_name(small.name + ".parts"), big.with_name(big.name + ".parts")
    if src.is_dir() and not dst.exists() and not (big / "dataset_dict.json").exists():
        shutil.copytree(src, dst)


def lever_variants(levers: Sequence[str], data_dir: Path, base_num: int, data_factor: int, max_steps: int,
                   larger_model_steps: int | None = None) -> Dict[str, tuple[int, int, List[str]]]:
    """Variants (max_steps, eval_every, overrides) of the chosen levers, for :func:`run_variants`.

    ``larger_model_steps`` (default ``max_steps``) lets the larger decoder train for about base's CPU time
    instead of base's steps: the comparison at a fixed budget.
    """
    variants = {}
    for lever in levers:
        folder, num = lever_dataset(lever, data_dir, base_num, data_factor)
        steps = larger_model_steps if lever == "larger_model" and larger_model_steps else max_steps
        variants[lever] = (steps, max(1, steps // 2),
                           ["--dataset", str(folder), "--synth_num", str(num), *LEVERS[lever][1]])
    return variants
