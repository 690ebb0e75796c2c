"""What an RL run leaves on disk: the resumable state, the per-step log, and the Hub-ready result.

``OUTPUT_DIR/rl_state/`` holds the policy weights, the optimizer, the RNG states, the step and the elapsed
time; it is written to a temporary folder and swapped in, so a kill during a save loses nothing.
``OUTPUT_DIR/rl_log.jsonl`` holds one record per step (reward mean / std, VSR, IoU, KL, failures with a
reason each, timings); a resumed run drops records past the saved step and appends from there.
The result is saved with ``save_pretrained`` (model + processor + remote code) and a model card, so it loads
with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` like an SFT checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STATE_DIR", "LOG_FILE", "save_state", "load_state", "StepLogger", "save_rl_model", "write_rl_card"]

STATE_DIR = "rl_state"
LOG_FILE = "rl_log.jsonl"
_IDENTITY_KEYS = ("model_name_or_path", "reward", "group_size", "prompts_per_step", "seed")


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(output_dir: str | os.PathLike, model: Any, optimizer: torch.optim.Optimizer, step: int,
               elapsed: float, identity: Mapping[str, Any]) -> Path:
    """Write the resumable state atomically to ``output_dir/rl_state``; returns that folder."""
    out = Path(output_dir)
    tmp, final, old = out / f"{STATE_DIR}.tmp", out / STATE_DIR, out / f"{STATE_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_states(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": int(step), "elapsed": float(elapsed), **identity}, indent=2))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(output_dir: str | os.PathLike, model: Any, optimizer: torch.optim.Optimizer,
               identity: Mapping[str, Any]) -> tuple[int, float]:
    """Restore the state saved in ``output_dir`` (if any) into model and optimizer; returns (step, elapsed).

    Raises:
        ValueError: the saved run differs from this one in checkpoint, reward, group size, images per step or
            seed; the message says to pick another output_dir or switch resuming off.
    """
    out = Path(output_dir)
    folder = out / STATE_DIR if (out / STATE_DIR / "state.json").is_file() else out / f"{STATE_DIR}.old"
    if not (folder / "state.json").is_file():
        return 0, 0.0
    saved = json.loads((folder / "state.json").read_text())
    differ = [k for k in _IDENTITY_KEYS if k in identity and saved.get(k) != identity[k]]
    if differ:
        details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {identity[k]!r}" for k in differ)
        raise ValueError(
            f"{folder} holds another RL run ({details}); pass a new --output_dir, or --resume false to start over"
        )
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(folder / "model.pt", map_location=device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    _set_rng_states(torch.load(folder / "rng.pt", weights_only=False))
    return int(saved["step"]), float(saved.get("elapsed", 0.0))


class StepLogger:
    """One record per step to ``rl_log.jsonl``, and to TensorBoard when ``report_to`` asks for it.

    Args:
        output_dir: where the log goes.
        report_to: ``"none"`` / ``"jsonl"`` (the file only) or ``"tensorboard"`` (the file plus scalars under
            ``output_dir/runs``).
        start_step: records past this step (from a killed run) are dropped.
    """

    def __init__(self, output_dir: str | os.PathLike, report_to: str = "none", start_step: int = 0) -> None:
        if report_to not in ("none", "jsonl", "tensorboard"):
            raise ValueError(f"report_to must be 'none', 'jsonl' or 'tensorboard', got {report_to!r}")
        self.path = Path(output_dir) / LOG_FILE
        kept = []
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= start_step]
        self.path.write_text("".join(ln + "\n" for ln in kept))
        self.writer = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(output_dir) / "runs"), purge_step=start_step + 1)

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one step's record; its scalar fields also go to TensorBoard."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(dict(record), default=str) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and key != "step":
                    self.writer.add_scalar(f"rl/{key}", value, int(record["step"]))

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def write_rl_card(output_dir: str | os.PathLike, config: Mapping[str, Any], reward: str, summary: Mapping[str, Any]) -> Path:
    """The model card of an RL-tuned folder: RL-tuned, from which checkpoint, with which reward, and the run."""
    from huggingface_hub import ModelCard

    from cadcoder.model_card import card_data

    start = str(config["model_name_or_path"])
    data = card_data(str(config.get("dataset") or ""), base_models=[] if Path(start).exists() else [start])
    data.tags = list(data.tags or []) + ["reinforcement-learning", "grpo"]
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in summary.items()
            if not isinstance(v, (dict, list))]  # fmt: skip
    body = "\n".join([
        f"# CadCoder, RL-tuned: {Path(str(output_dir)).name}", "",
        f"Image of a mechanical part in, CadQuery program out. **RL-tuned** with `train_rl.py` (GRPO: groups of "
        f"{config.get('group_size')} sampled programs per image, executed in the CadCoder sandbox) **from the "
        f"checkpoint `{start}`**, with the **`{config.get('reward')}` reward**: {reward}.", "",
        "Load it like any CadCoder checkpoint: `AutoModel.from_pretrained(path, trust_remote_code=True)` and "
        "`AutoProcessor.from_pretrained(path, trust_remote_code=True)`. Run generated programs only in a sandbox "
        "(`cadcoder.sandbox`): they are untrusted code.", "",
        "## RL run (training rollouts, not a held-out evaluation)", "", "| figure | value |", "| --- | --- |", *rows, "",
        "## RL config", "", "```json", json.dumps(dict(config), indent=2, sort_keys=True, default=str), "```", "",
    ])  # fmt: skip
    path = Path(output_dir) / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(path)
    return path


def save_rl_model(output_dir: str | os.PathLike, model: Any, processor: Any, config: Mapping[str, Any], reward: str,
                  summary: Mapping[str, Any]) -> Path:
    """Save the tuned policy Hub-ready: weights, config, remote code, processor, model card, summary JSON."""
    out = Path(output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_rl_card(out, config, reward, summary)
    (out / "rl_results.json").write_text(json.dumps(dict(summary), indent=2, default=str) + "\n")
    return out
