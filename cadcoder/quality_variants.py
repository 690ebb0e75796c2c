"""The quality benchmark's variants and presets (``benchmarks/quality.py``): what is compared, with which settings.

A :class:`Variant` is one model recipe (the three switches of the ablation plus the decoder family); a preset is
the train.py options every variant shares, plus benchmark-level settings whose names start with ``bench_``.
:func:`train_config` turns (settings, variant) into the JSON config ``python train.py`` reruns one variant from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "VARIANTS", "VARIANTS_BY_NAME", "Variant", "resolve_settings", "select_variants",
           "settings_key", "train_config"]


# --------------------------------------------------------------------------------------------------
# What is compared
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One model recipe: the three switches of the ablation plus the decoder family."""

    name: str
    label: str
    visual_tokens: str  # "pooled" | "grid"
    text_model_type: str  # "gpt2" | "codegen"
    joint: bool  # True: encoder + projector + LM train together; False: encoder frozen
    canonical_numbers: bool

    def train_options(self) -> dict[str, Any]:
        """The train.py options this variant sets (everything else is shared)."""
        return {
            "visual_tokens": self.visual_tokens,
            "text_model_type": self.text_model_type,
            "train_stages": "all" if self.joint else "projector+language",
            "canonical_numbers": self.canonical_numbers,
        }

    def describe(self) -> dict[str, str]:
        """Human-readable switches for the tables."""
        return {
            "visual tokens": self.visual_tokens,
            "decoder": "GPT-2" if self.text_model_type == "gpt2" else "CodeGen",
            "encoder": "joint" if self.joint else "frozen",
            "numbers": "canonical" if self.canonical_numbers else "raw",
        }


VARIANTS: tuple[Variant, ...] = (  # the headline comparison first: a run cut short still answers it
    Variant("baseline", "baseline (pooled + GPT-2, frozen encoder)", "pooled", "gpt2", False, False),
    Variant("enhanced", "enhanced (pooled + CodeGen, frozen encoder)", "pooled", "codegen", False, False),
    Variant("ours", "ours (grid + joint + canonical numbers)", "grid", "codegen", True, True),
    Variant("plus_grid", "enhanced + grid visual tokens", "grid", "codegen", False, False),
    Variant("plus_joint", "enhanced + joint training", "pooled", "codegen", True, False),
    Variant("plus_canonical", "enhanced + canonical numbers", "pooled", "codegen", False, True),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}

# Shared train.py options per preset. Benchmark-level settings (not train.py options) start with "bench_".
_COMMON: dict[str, Any] = {
    "model_init": "tiny",
    "report_to": "none",
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "save_strategy": "no",
    "eval_strategy": "steps",
    "load_best_model_at_end": False,
    "disable_tqdm": True,
    "seed": 0,
    "synth_seed": 0,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "eval_protocol": "aligned",
}
PRESETS: dict[str, dict[str, Any]] = {
    # A test runs this: every code path, tiny everything; the numbers mean nothing.
    "smoke": {
        **_COMMON,
        "dataset": "data/synth-quality-smoke",
        "synth_num": 60,
        "synth_complexity": [0],
        "synth_image_size": 128,
        "synth_workers": 1,
        "image_size": 64,
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "tokenizer_vocab_size": 300,
        "max_length": 512,
        "packing": True,
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "warmup_steps": 1,
        "logging_steps": 1,
        "eval_steps": 3,
        "max_eval_samples": 4,
        "generate_eval_samples": 2,
        "generate_max_new_tokens": 24,
        "generate_batch_size": 4,
        "eval_timeout": 20.0,
        "eval_num_workers": 1,
        "bench_test_samples": 3,
        "bench_self_check_samples": 2,
        "use_cpu": True,
        "bench_constant_candidates": 2,
        "bench_select_references": 2,
        "bench_workers": 1,
    },
    # The README table. Same data, model shape and recipe as configs/quickstart.json (the recipe the H100 sweep in
    # benchmarks/quickstart_sweep.py chose: lr 1e-3 with warm-up, random batches packed into rows, no curriculum),
    # with a shorter max_length and 700 steps instead of 1500 so that the six variants fit a 2-core session:
    # about 8-10 min per variant on a quiet machine. Image reliance still grows at 700 steps: scale with
    # --set max_steps=N.
    "full": {
        **_COMMON,
        "dataset": "data/synth-quickstart",
        "synth_num": 4000,
        "synth_complexity": [0, 1, 2, 3],
        "synth_image_size": 448,
        "synth_workers": 2,
        "image_size": 128,
        "n_layer": 4,
        "n_embd": 256,
        "n_head": 4,
        "tokenizer_vocab_size": 1024,
        # 384 tokens keep ~80 % of the programs (longer ones are dropped from training, never truncated) and
        # bound generation, which a model that has not learned to stop runs to the end.
        "max_length": 384,
        "packing": True,
        "number_decimals": 3,
        "max_steps": 700,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 70,
        "bf16": True,
        "logging_steps": 25,
        "eval_steps": 175,
        "max_eval_samples": 32,
        "generate_eval_samples": 8,
        "generate_batch_size": 16,
        "eval_timeout": 10.0,
        "eval_num_workers": 2,
        "use_cpu": True,
        "bench_test_samples": 50,
        "bench_mecagent_samples": 25,  # the challenge's voxel IoU costs ~0.3-1 s a pair on 2 cores
        "bench_self_check_samples": 5,
        "bench_generate_batch_size": 25,
        "bench_constant_candidates": 2,
        "bench_select_references": 8,
        "bench_workers": 2,
    },
    # Real sizes: 448 px (196 grid tokens), the codegen-350M-mono shape (random init), 20K synthetic pairs.
    # Meant for one GPU; never run on the CPU machines this project was built on.
    "gpu": {
        **_COMMON,
        "dataset": "data/synth-20k",
        "synth_num": 20000,
        "synth_complexity": [0, 1, 2, 3],
        "synth_image_size": 448,
        "synth_workers": 8,
        "image_size": 448,
        "n_layer": 20,
        "n_embd": 1024,
        "n_head": 16,
        "tokenizer_vocab_size": 4096,
        "max_length": 1024,
        "max_steps": 5000,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 32,
        "learning_rate": 3e-4,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 250,
        "bf16": True,
        "logging_steps": 50,
        "eval_steps": 500,
        "max_eval_samples": 512,
        "generate_eval_samples": 128,
        "generate_batch_size": 64,
        "eval_timeout": 10.0,
        "eval_num_workers": 8,
        "bench_test_samples": 1000,
        "use_cpu": False,
        "bench_constant_candidates": 16,
        "bench_select_references": 128,
        "bench_workers": 8,
    },
}


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as cosine


def resolve_settings(preset: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The preset's options with ``KEY=VALUE`` overrides applied (values parsed as JSON when they can be)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    settings = dict(PRESETS[preset])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set max_steps=600")
        settings[key.strip()] = _parse_value(value.strip())
    return settings


def train_config(settings: dict[str, Any], variant: Variant, output_dir: Path) -> dict[str, Any]:
    """The full train.py config of one variant: shared settings + the variant's switches."""
    config = {k: v for k, v in settings.items() if not k.startswith("bench_")}
    config.update(variant.train_options())
    config["test_samples"] = 0  # the benchmark scores the test set itself, on one shared sandbox
    config["output_dir"] = str(output_dir)
    config["_comment"] = f"benchmarks/quality.py variant {variant.name}: {variant.label}"
    return config


def settings_key(config: dict[str, Any]) -> str:
    """A hash of everything that changes a variant's result (output_dir and comments excluded)."""
    relevant = {k: v for k, v in config.items() if k != "output_dir" and not k.startswith("_comment")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def select_variants(spec: str) -> list[str]:
    """The variant names of a comma list such as ``"baseline,ours"``; unknown names raise a ValueError."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS_BY_NAME]
    if unknown or not names:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS_BY_NAME)}")
    return names
