"""Pieces of `train.py` that are not top-to-bottom script material.

`train.py` reads like a recipe; the machinery it leans on lives here:

* **configuration**: `parse_config` (a JSON file plus command-line overrides, unknown keys refused),
  `check_dataset_columns`, `check_max_length`;
* **per-part optimisation**: `part_of`, `build_param_groups` (one learning rate for the vision encoder,
  the projector and the language model), `parse_stages` + `StagedFreezingCallback` (e.g. a
  projector-only warm-up, then everything);
* **curriculum**: `CurriculumSampler` (simple programs first, the full distribution later);
* **evaluation by execution**: `generate_programs`, `execution_metrics`, `best_constant_program`
  and `CadCoderTrainer`, a `Trainer` whose evaluation also generates programs for a fixed validation
  subset, runs them in the sandbox and logs VSR / IoU beside the loss;
* **output**: `write_model_card` (README.md with Hub metadata, measured results and the training config).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import HfArgumentParser, Trainer, TrainerCallback

PARTS: tuple[str, ...] = ("vision", "projector", "language")
# Substrings of parameter names that identify each part (LLaVA naming: vision_tower ->
# multi_modal_projector -> language_model + lm_head). Anything not matched is language.
_PART_KEYS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_tower", "vision_model", "visual_encoder"),
    "projector": ("multi_modal_projector", "projector"),
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
def parse_config(parser: HfArgumentParser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse `[CONFIG.json] [--key value ...]` into the parser's dataclasses.

    The JSON file gives the defaults and the command line overrides them, so
    `python train.py configs/quickstart.json --max_steps 10` works. Keys starting with "_comment" are notes. Keys that no dataclass knows
    raise a ValueError that names the closest valid keys, before anything expensive happens.
    """
    argv = list(argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; pass a path such as configs/quickstart.json")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"config file {path} must hold a JSON object of option names to values")
        config = {k: v for k, v in config.items() if not k.startswith("_comment")}  # notes for humans
        known = {action.dest for action in parser._actions}
        unknown = sorted(key for key in config if key not in known or key == "help")
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise ValueError(
                f"unknown option(s) in {path}: {'; '.join(hints)}. "
                "Fix the spelling or remove them; `python train.py --help` lists every option."
            )
        for action in parser._actions:
            if action.dest in config:
                action.required = False
        parser.set_defaults(**config)
    return parser.parse_args_into_dataclasses(args=argv)


def check_dataset_columns(dataset: Any, required: Sequence[str], where: str) -> None:
    """Raise ValueError if `dataset` lacks one of the `required` columns."""
    columns = list(getattr(dataset, "column_names", None) or [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {missing}; it has {columns}. Use a GenCAD-Code style dataset "
            "(columns 'image' and 'cadquery'): rename your columns, e.g. dataset.rename_column('program', 'cadquery')."
        )


def check_max_length(max_length: int, num_image_tokens: int, prompt_tokens: int = 0) -> None:
    """Raise ValueError if `max_length` leaves no room for program tokens after the image and prompt."""
    needed = num_image_tokens + prompt_tokens
    if max_length <= needed:
        raise ValueError(
            f"max_length={max_length} is not longer than the {num_image_tokens} image tokens"
            f"{f' + {prompt_tokens} prompt tokens' if prompt_tokens else ''} the model puts in front of every "
            f"program; raise --max_length (programs need a few hundred tokens more), or lower --image_size "
            "or use --visual_tokens pooled."
        )


def build_synthetic_mix(
    num: int,
    out_dir: str | os.PathLike,
    complexities: Sequence[int] = (3,),
    seed: int = 0,
    **build_kwargs: Any,
) -> Path:
    """Build a synthetic set whose samples spread evenly over generator complexity levels; return its folder.

    One complexity gives `cadcoder.synth.build_synthetic_dataset` straight into `out_dir`. Several are built
    side by side in `out_dir.parts/complexity-<c>` (each resumable, seed `seed + 1000 * c`), then their
    splits are concatenated and saved to `out_dir` (`save_to_disk`), so the result loads like any dataset.
    A curriculum can then order the mix by program length, simple families first. `build_kwargs` (``workers``,
    ``image_size``, ``render_style``, ...) go to every level's `build_synthetic_dataset`; with
    ``render_style="random"`` the same programs get domain-randomised renders.
    """
    import datasets

    from cadcoder.synth import build_synthetic_dataset

    out = Path(out_dir)
    levels = sorted(set(int(c) for c in complexities))
    if not levels:
        raise ValueError("complexities must name at least one generator level, e.g. [0, 1, 2, 3]")
    if len(levels) == 1:
        build_synthetic_dataset(num, out, seed=seed, complexity=levels[0], **build_kwargs)
        return out
    parts = []
    for i, level in enumerate(levels):
        share = num // len(levels) + (1 if i < num % len(levels) else 0)
        part_dir = out.with_name(out.name + ".parts") / f"complexity-{level}"
        parts.append(build_synthetic_dataset(share, part_dir, seed=seed + 1000 * level, complexity=level,
                                             **build_kwargs))
    mixed = datasets.DatasetDict({
        split: datasets.concatenate_datasets([p[split] for p in parts]).shuffle(seed=seed) for split in parts[0]
    })
    tmp = out.with_name(out.name + ".tmp")
    mixed.save_to_disk(str(tmp))
    tmp.rename(out)  # atomic: a half-written folder never looks like a finished dataset
    return out


def extend_text_positions(model: torch.nn.Module, num_positions: int) -> bool:
    """Let the language model attend over `num_positions` tokens; True if anything changed.

    Rotary models (CodeGen) have no learned position weights, so their sin/cos tables are simply rebuilt
    longer (fine-tuning then adapts to the unseen positions). Learned absolute positions (GPT-2's `wpe`)
    cannot be extended without new untrained rows: that raises a ValueError naming the limit.
    """
    text_config = getattr(model.config, "text_config", model.config)
    limit = getattr(text_config, "n_positions", None) or getattr(text_config, "max_position_embeddings", None)
    if limit is None or num_positions <= limit:
        return False
    rotary = [m for m in model.modules() if hasattr(m, "embed_positions") and hasattr(m, "pos_embd_dim")]
    if not rotary:
        raise ValueError(
            f"max_length={num_positions} exceeds the language model's {limit} learned positions "
            f"({text_config.model_type}); use --max_length {limit} (longer programs are dropped) or a rotary LM such as CodeGen."
        )
    from transformers.models.codegen.modeling_codegen import create_sinusoidal_positions

    for module in rotary:
        table = create_sinusoidal_positions(num_positions, module.pos_embd_dim)
        module.embed_positions = table.to(module.embed_positions.device, module.embed_positions.dtype)
        module.max_positions = num_positions
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if hasattr(text_config, name):
            setattr(text_config, name, num_positions)
    return True


# --------------------------------------------------------------------------------------------
# Per-part learning rates and staged freezing
# --------------------------------------------------------------------------------------------
def part_of(parameter_name: str) -> str:
    """Return which part ("vision", "projector" or "language") a parameter belongs to, by its name."""
    for part, keys in _PART_KEYS.items():
        if any(key in parameter_name for key in keys):
            return part
    return "language"


def build_param_groups(
    model: torch.nn.Module,
    learning_rates: Mapping[str, float],
    weight_decay: float,
    decay_parameter_names: Sequence[str],
) -> list[dict[str, Any]]:
    """One optimizer group per (part, decay / no decay) with the part's learning rate.

    Every parameter is included whatever its `requires_grad`, so staged freezing can later unfreeze a
    part without rebuilding the optimizer (AdamW skips parameters whose grad is None).
    Groups carry a "part" key, used by `StagedFreezingCallback` and by logging.
    """
    decay = set(decay_parameter_names)
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        groups.setdefault((part_of(name), name in decay), []).append(param)
    missing = [p for p in PARTS if p not in learning_rates]
    if missing:
        raise ValueError(f"no learning rate for part(s) {missing}")
    return [
        {"params": params, "lr": learning_rates[part], "weight_decay": weight_decay if is_decay else 0.0, "part": part}
        for (part, is_decay), params in sorted(groups.items(), key=lambda kv: (PARTS.index(kv[0][0]), not kv[0][1]))
        if params
    ]


@dataclass(frozen=True)
class Stage:
    """Train `parts` until optimizer step `until_step` (None: until the end)."""

    parts: frozenset[str]
    until_step: int | None


def parse_stages(spec: str) -> list[Stage]:
    """Parse a staged-training spec such as "projector:200,all" or "projector+language:100,all".

    Comma-separated stages; each is `PARTS[:UNTIL_STEP]` where PARTS joins "vision", "projector",
    "language" with "+" (or is "all"). Only the last stage may omit its end step.
    """
    stages: list[Stage] = []
    for i, chunk in enumerate(c.strip() for c in spec.split(",")):
        name, _, until = chunk.partition(":")
        parts = frozenset(PARTS) if name.strip() == "all" else frozenset(p.strip() for p in name.split("+"))
        bad = sorted(parts - set(PARTS))
        if bad or not parts:
            raise ValueError(f"train_stages {spec!r}: unknown part(s) {bad}; use vision, projector, language or all")
        last = i == len(spec.split(",")) - 1
        if not until.strip():
            if not last:
                raise ValueError(f"train_stages {spec!r}: every stage but the last needs ':STEPS', e.g. projector:200,all")
            stages.append(Stage(parts, None))
            continue
        try:
            step = int(until)
        except ValueError as err:
            raise ValueError(f"train_stages {spec!r}: {until!r} is not a step count") from err
        if stages and stages[-1].until_step is not None and step <= stages[-1].until_step:
            raise ValueError(f"train_stages {spec!r}: stage end steps must increase")
        stages.append(Stage(parts, step))
    return stages


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage in force at optimizer step `step` (0-based)."""
    for stage in stages:
        if stage.until_step is None or step < stage.until_step:
            return stage
    return Stage(frozenset(PARTS), None)  # past the last bounded stage: everything trains


class StagedFreezingCallback(TrainerCallback):
    """Freeze and unfreeze model parts by optimizer step, e.g. a projector-only warm-up, then everything.

    Frozen parts get their gradients dropped right before the optimizer step, so AdamW neither moves
    them nor updates their moments; that is correct under DDP too, where toggling `requires_grad` after
    wrapping would desynchronise the gradient reducer. In a single process the callback also turns off
    `requires_grad`, which saves the backward pass through a frozen encoder.
    """

    def __init__(self, stages: Sequence[Stage], single_process: bool) -> None:
        self.stages = list(stages)
        self.single_process = single_process
        self._current: Stage | None = None

    def _apply(self, model: torch.nn.Module, step: int) -> None:
        stage = stage_at(self.stages, step)
        if stage == self._current:
            return
        self._current = stage
        if self.single_process:
            if hasattr(model, "set_trainable"):  # CadCoder's own switch also keeps a frozen encoder's BatchNorm fixed
                model.set_trainable(**{part: part in stage.parts for part in PARTS})
            else:
                for name, param in model.named_parameters():
                    param.requires_grad_(part_of(name) in stage.parts)
        print(f"[train] step {step}: training {'+'.join(p for p in PARTS if p in stage.parts)}", flush=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: D102
        if model is not None:
            self._apply(model, state.global_step)

    def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: D102
        if model is not None:
            self._apply(model, state.global_step)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: D102
        if model is None:
            return
        stage = stage_at(self.stages, state.global_step)
        for name, param in model.named_parameters():
            if part_of(name) not in stage.parts:
                param.grad = None


# --------------------------------------------------------------------------------------------
# Curriculum
# --------------------------------------------------------------------------------------------
class CurriculumSampler(Sampler[int]):
    """Competence-based curriculum: draw from the easiest share of the data, growing to all of it.

    At the k-th sample drawn since training began, the pool is the easiest
    `c(k) = min(1, sqrt(start**2 + (1 - start**2) * k / ramp_samples))` share of the examples
    (Platanios et al., 2019), ordered by `difficulties`. Deterministic given the seed and the epoch,
    so resumed and multi-process runs see the same order.

    With `lengths` and `batch_size`, consecutive windows of `batch_size * group` draws are sorted by
    length and cut into batches (shuffled within the window): batches then hold programs of similar
    length, so far less compute goes to padding, while the curriculum still advances window by window.
    """

    def __init__(
        self,
        difficulties: Sequence[float],
        start: float = 0.2,
        ramp_samples: int = 1,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        group: int = 16,
    ) -> None:
        if not 0 < start <= 1:
            raise ValueError(f"curriculum start share must be in (0, 1], got {start}")
        self.order = np.argsort(np.asarray(difficulties, dtype=np.float64), kind="stable")
        self.start = float(start)
        self.ramp_samples = max(1, int(ramp_samples))
        self.seed = int(seed)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.group = max(1, int(group))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at every epoch so each epoch's draw differs but is reproducible."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.order)
        k0 = self.epoch * n
        competence = np.minimum(1.0, np.sqrt(self.start**2 + (1 - self.start**2) * (k0 + np.arange(n)) / self.ramp_samples))
        if competence[0] >= 1.0:  # fully competent: a plain permutation, every example once per epoch
            return self.order[rng.permutation(n)]
        pool = np.maximum(1, np.ceil(competence * n).astype(np.int64))
        return self.order[(rng.random(n) * pool).astype(np.int64)]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = self._draw(rng)
        if self.lengths is None or not self.batch_size:
            return iter(indices.tolist())
        window = self.batch_size * self.group
        out: list[int] = []
        for w in range(0, len(indices), window):
            chunk = indices[w : w + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            for b in rng.permutation(len(batches)):
                out.extend(batches[b].tolist())
        return iter(out)


# --------------------------------------------------------------------------------------------
# Evaluation by execution
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_programs(
    model: torch.nn.Module,
    processor: Any,
    images: Sequence[Any],
    max_new_tokens: int,
    batch_size: int = 16,
    autocast: Any = None,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy-decode one program per image with the processor's shared prompt format.

    `autocast` is a callable returning a fresh context manager (e.g. `accelerator.autocast`), entered
    once per batch; None decodes in the model's dtype.
    """
    import contextlib

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    programs: list[str] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            inputs = processor(images=chunk, return_tensors="pt")
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
            if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
                inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
            with autocast() if autocast is not None else contextlib.nullcontext():  # a fresh context per batch
                out = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced_gpus
                )
            new_tokens = out[:, inputs["input_ids"].shape[1] :]  # (B, T_new): generate returns prompt + new
            programs.extend(decode_programs(processor, new_tokens))
    finally:
        model.train(was_training)
    return programs


def decode_programs(processor: Any, token_ids: torch.Tensor) -> list[str]:
    """Token ids of generated continuations -> clean program strings (via the processor)."""
    texts = processor.batch_decode(token_ids, skip_special_tokens=True)
    post = getattr(processor, "post_process_generation", None)
    if post is not None:
        cleaned = post(texts)
        if isinstance(cleaned, list):
            return [str(c) for c in cleaned]
    return [t.strip() for t in texts]


def distinct_share(programs: Sequence[str]) -> float:
    """Share of distinct programs after normalising whitespace (1.0: all differ)."""
    if not programs:
        return 0.0
    return len({" ".join(p.split()) for p in programs}) / len(programs)


EXECUTION_KEYS = ("valid_syntax_rate", "iou_mean", "iou_median", "iou_mean_all", "distinct_predictions")


def execution_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    with_chance: bool = False,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Score programs by execution with `cadcoder.evaluation.evaluate_programs`; a flat dict of floats.

    Keeps the scalar keys (VSR, IoU statistics, distinct share, chance level) and the non-zero failure
    counts as `failures_<reason>`.
    """
    from cadcoder.evaluation import evaluate_programs

    report = evaluate_programs(list(predictions), list(references), with_chance=with_chance, **evaluate_kwargs)
    metrics: dict[str, Any] = {}
    for key in (*EXECUTION_KEYS, "chamfer_median", "iou_chance"):
        value = report.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value) if value is not None and not math.isnan(float(value)) else None
    if "distinct_predictions" not in metrics:
        metrics["distinct_predictions"] = distinct_share(predictions)
    for reason, count in (report.get("failures") or {}).items():
        if count:
            metrics[f"failures_{reason}"] = int(count)
    return metrics


def best_constant_program(
    candidates: Sequence[str],
    select_references: Sequence[str],
    test_references: Sequence[str],
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """The best single program, chosen on `select_references` and scored on `test_references`.

    A model that ignores its input can at best write one fixed program; choosing that program on held-out
    validation references (not the test set) and predicting it for every test image gives the score a
    collapsed model would reach. All pairs are scored in one `evaluate_programs` call (one sandbox start).
    Returns {"program", "iou_mean_all", "valid_syntax_rate", "select_iou_mean_all"}.
    """
    from cadcoder.evaluation import evaluate_programs

    candidates = list(candidates)
    if not candidates:
        raise ValueError("best_constant_program needs at least one candidate program")
    sel, tst = list(select_references), list(test_references)
    block = len(sel) + len(tst)
    preds = [c for c in candidates for _ in range(block)]
    refs = (sel + tst) * len(candidates)
    report = evaluate_programs(preds, refs, **evaluate_kwargs)
    ious = np.nan_to_num(np.asarray([np.nan if v is None else v for v in report["ious"]], dtype=np.float64))
    ok = np.asarray([s == "ok" for s in report["statuses"]], dtype=np.float64)
    ious = ious.reshape(len(candidates), block)
    ok = ok.reshape(len(candidates), block)
    best = int(np.argmax(ious[:, : len(sel)].mean(axis=1))) if sel else 0
    return {
        "program": candidates[best],
        "select_iou_mean_all": float(ious[best, : len(sel)].mean()) if sel else None,
        "iou_mean_all": float(ious[best, len(sel) :].mean()),
        "valid_syntax_rate": float(ok[best, len(sel) :].mean()),
    }


@dataclass
class GenerationEvalConfig:
    """What `CadCoderTrainer` generates and scores at every evaluation."""

    images: list[Any]
    references: list[str]
    max_new_tokens: int
    batch_size: int = 16
    protocol: str = "aligned"
    timeout: float = 10.0
    num_workers: int | None = None
    fast: bool = False


class CadCoderTrainer(Trainer):
    """`Trainer` with per-part learning rates, an optional curriculum and evaluation by execution.

    Args:
        part_learning_rates: {"vision": lr, "projector": lr, "language": lr}; None uses `learning_rate` for all.
        generation_eval: fixed validation images + reference programs; at every evaluation the model
            greedily writes a program per image, the sandbox runs them and VSR / IoU / distinct share are
            logged as `eval_<key>` beside `eval_loss` (usable as `metric_for_best_model`, e.g. "eval_iou_mean_all").
        curriculum: keyword arguments of `CurriculumSampler` (difficulties, start, ramp_samples, lengths,
            batch_size), or None for the Trainer's own sampler.
    """

    def __init__(
        self,
        *args: Any,
        part_learning_rates: Mapping[str, float] | None = None,
        generation_eval: GenerationEvalConfig | None = None,
        curriculum: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.part_learning_rates = dict(part_learning_rates) if part_learning_rates else None
        self.generation_eval = generation_eval
        self.curriculum = curriculum

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the card `write_model_card` wrote (Trainer's generic card would replace it on push)."""
        if not Path(self.args.output_dir, "README.md").exists():
            super().create_model_card(*args, **kwargs)

    # --- optimisation ------------------------------------------------------------------------
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (or `--optim`) over per-part groups, each with its own learning rate."""
        if self.optimizer is not None or self.part_learning_rates is None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        opt_model = self.model if model is None else model
        groups = build_param_groups(
            opt_model, self.part_learning_rates, self.args.weight_decay, self.get_decay_parameter_names(opt_model)
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model", "lr")}
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):  # noqa: D102
        if self.curriculum is None:
            return super()._get_train_sampler(train_dataset)
        return CurriculumSampler(seed=self.args.seed, **self.curriculum)

    # --- evaluation by execution ---------------------------------------------------------------
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):  # noqa: D102
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if description != "Evaluation":
            return output
        reliance = self.image_reliance(dataloader)
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in reliance.items()})
        if self.generation_eval is not None:
            started = time.perf_counter()
            metrics = self.execution_eval()
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in metrics.items() if v is not None})
            output.metrics[f"{metric_key_prefix}_execution_seconds"] = round(time.perf_counter() - started, 2)
        return output

    @torch.no_grad()
    def image_reliance(self, dataloader: Any) -> dict[str, float]:
        """How much the model reads the image: validation loss with each image vs with another example's image.

        Every batch is scored twice, once as is and once with its images rolled by one place, so each
        program is paired with a different part. `loss_matched` and `loss_swapped` are token-weighted means;
        `image_gain` = swapped - matched. A model that ignores its input (the collapse that writes one
        template for every picture) has a gain near 0, long before generation and execution can show it.
        """
        model = self.model
        was_training = model.training
        model.eval()
        sums = {"matched": 0.0, "swapped": 0.0}
        tokens = 0
        for batch in dataloader:
            batch = self._prepare_inputs(batch)
            if batch["pixel_values"].shape[0] < 2:
                continue
            n = int((batch["labels"][:, 1:] != -100).sum())
            for key, pixels in (("matched", batch["pixel_values"]), ("swapped", batch["pixel_values"].roll(1, dims=0))):
                with self.accelerator.autocast():
                    loss = model(**{**batch, "pixel_values": pixels}).loss
                sums[key] += float(self.accelerator.gather((loss.detach().float() * n).reshape(1)).sum())
            tokens += int(self.accelerator.gather(torch.tensor([n], device=batch["labels"].device)).sum())
        model.train(was_training)
        if tokens == 0:
            return {}
        matched, swapped = sums["matched"] / tokens, sums["swapped"] / tokens
        return {"loss_matched": matched, "loss_swapped": swapped, "image_gain": swapped - matched}

    def generate_programs(self, images: Sequence[Any], max_new_tokens: int, batch_size: int = 16) -> list[str]:
        """Greedy programs for `images`, generated in shards on every process; every process gets all of them.

        Call it on all ranks: with FSDP / ZeRO-3 the shards are padded to equal length and decoded with
        `synced_gpus=True`, because every rank must take part in every forward pass.
        """
        from accelerate.utils import gather_object

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        n = len(images)
        per_rank = math.ceil(n / world)
        indices = [(rank + world * i) % n for i in range(per_rank)]  # padded: every rank runs the same batches
        programs = generate_programs(
            self.accelerator.unwrap_model(self.model),
            self.processing_class,
            [images[i] for i in indices],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            autocast=self.accelerator.autocast,
            synced_gpus=world > 1 and (self.is_fsdp_enabled or self.is_deepspeed_enabled),
        )
        pairs = list(zip(indices, programs))
        if world > 1:
            pairs = gather_object(pairs)
        by_index: dict[int, str] = {}
        for i, program in pairs:
            by_index.setdefault(i, program)
        return [by_index[i] for i in range(n)]

    def execution_eval(self) -> dict[str, Any]:
        """Generate for the fixed validation subset on every process, score on the main one, share the result."""
        from accelerate.utils import broadcast_object_list

        cfg = self.generation_eval
        assert cfg is not None
        predictions = self.generate_programs(cfg.images, cfg.max_new_tokens, cfg.batch_size)
        result: list[Any] = [None]
        if self.is_world_process_zero():
            result[0] = execution_metrics(
                predictions,
                cfg.references,
                protocol=cfg.protocol,
                timeout=cfg.timeout,
                num_workers=cfg.num_workers,
                fast=cfg.fast,
                progress=False,
            )
            print(f"[eval step {self.state.global_step}] first prediction:\n{predictions[0][:400]}", flush=True)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(result, from_process=0)
        return dict(result[0])


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    results: Mapping[str, Any] | None = None,
    model_description: str = "",
    dataset: str | None = None,
    base_models: Sequence[str] = (),
    hub_model_id: str | None = None,
) -> Path:
    """Write `output_dir/README.md`: Hub metadata, how to use, measured results and the training config.

    `results` holds the measured figures (e.g. test iou_mean_all, iou_chance, constant baseline,
    distinct share, VSR); None writes a card that says training is in progress.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "license: apache-2.0", "tags:"]
    front += [f"- {t}" for t in ("custom_code", "cadcoder", "cadquery", "cad", "image-to-code")]
    if dataset and not Path(dataset).exists():
        front += ["datasets:", f"- {dataset}"]
    if base_models:
        front += ["base_model:"] + [f"- {m}" for m in base_models]
    front.append("---")
    repo = hub_model_id or str(out)
    lines = [
        *front,
        "",
        f"# CadCoder: {Path(repo).name}",
        "",
        "Image of a mechanical part in, CadQuery program out. "
        + (model_description or "Trained with `train.py` of the CadCoder project."),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor",
        "from PIL import Image",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        'inputs = processor(images=[Image.open("part.png")], return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=512, do_sample=False)",
        'program = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]',
        "```",
        "",
        "Run generated programs only in a sandbox (`cadcoder.sandbox`): they are untrusted code.",
        "",
        "## Evaluation",
        "",
    ]
    if results:
        lines += [
            "Measured by executing the generated programs (greedy decoding) and comparing solids "
            f"(protocol `{results.get('protocol', 'aligned')}`, failures count as IoU 0 in `iou_mean_all`). "
            "`iou_chance` scores each reference against another reference; the constant baseline predicts "
            "one fixed program (the best of several training programs, chosen on validation) for every image.",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in results.items() if not isinstance(v, (dict, list))]
    else:
        lines.append("Training in progress; the final evaluation is written here when training ends.")
    lines += [
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(dict(config), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def config_snapshot(*dataclass_objs: Any) -> dict[str, Any]:
    """The non-default options of the parsed dataclasses (plus a few always-useful ones), JSON-ready."""
    keep_always = {"learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "bf16", "seed"}
    snap: dict[str, Any] = {}
    for obj in dataclass_objs:
        for f in dataclasses.fields(obj):
            if f.name.startswith("_") or "token" in f.name and "hub" in f.name:
                continue
            value = getattr(obj, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.name in keep_always or value != default:
                snap[f.name] = value if isinstance(value, (int, float, str, bool, list, dict, type(None))) else str(value)
    snap["command"] = " ".join(sys.argv)
    return snap
