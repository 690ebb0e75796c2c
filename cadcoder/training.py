"""The training machinery `train.py` leans on (its named steps are in :mod:`cadcoder.recipe`).

* **configuration**: `parse_config` (a JSON file plus command-line overrides, unknown keys refused),
  `check_dataset_columns`, `check_max_length`, `config_snapshot`;
* **per-part optimisation**: `part_of`, `build_param_groups` (one learning rate for the vision encoder,
  the projector and the language model), `parse_stages` + `StagedFreezingCallback` (e.g. a
  projector-only warm-up, then everything);
* **curriculum**: `CurriculumSampler` (in `cadcoder.curriculum`: simple programs first, the full distribution later);
* **evaluation by execution**: `generate_programs` and `CadCoderTrainer`, a `Trainer` whose evaluation also
  generates programs for a fixed validation subset, runs them in the sandbox and logs VSR / IoU beside the
  loss (scored by `cadcoder.evaluation.execution_metrics`).

"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback

from cadcoder.curriculum import CurriculumSampler
from cadcoder.evaluation import execution_metrics

__all__ = [
    "CadCoderTrainer",
    "GenerationEvalConfig",
    "Stage",
    "StagedFreezingCallback",
    "build_param_groups",
    "check_dataset_columns",
    "check_max_length",
    "config_snapshot",
    "decode_programs",
    "generate_programs",
    "parse_config",
    "parse_stages",
    "part_of",
    "stage_at",
]

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

    from cadcoder.inference import generate_new_tokens

    was_training = model.training
    model.eval()
    programs: list[str] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            with autocast() if autocast is not None else contextlib.nullcontext():  # a fresh context per batch
                new_tokens = generate_new_tokens(
                    model, processor, chunk, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced_gpus
                )  # (B, T_new)
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
