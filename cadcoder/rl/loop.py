"""The RL loop: options, one GRPO step (sample, execute and score, advantages, update), and the run.

:func:`train_rl` takes a model, its processor, the training examples and a reward (a named
:class:`cadcoder.rl.rewards.ExecutionReward` or any callable), and steps the model in place. Every
``save_steps`` steps it saves a resumable state; a rerun with the same ``output_dir`` continues from it
(weights, optimizer, RNG, step and elapsed time), and samples exactly what the killed run would have,
because each step's sampling is seeded by the step and the data order is a function of the step.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from cadcoder.rl.data import decoded
from cadcoder.rl.policy import StepSettings, group_advantages, policy_step, sample_rollout
from cadcoder.rl.rewards import REWARDS, ExecutionReward, RewardResult, RLExample, as_results, make_reward
from cadcoder.rl.state import StepLogger, load_state, save_state

__all__ = ["RLArguments", "build_reward", "frozen_copy", "batch_indices", "rl_step", "train_rl"]


def _opt(default: Any, help: str, **extra: Any) -> Any:  # noqa: A002 - HfArgumentParser reads "help"
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RLArguments:
    """Every option of ``train_rl.py`` (a JSON config gives the values, the command line overrides them).

    Raises:
        ValueError: ``group_size < 2``, an unknown reward, or a non-positive count; the message names the fix.
    """

    model_name_or_path: str = _opt("outputs/quickstart", "CadCoder checkpoint to start from: folder or Hub id")
    output_dir: str = _opt("outputs/rl", "where the state, the log and the tuned model go")
    dataset: str = _opt("data/synth-quickstart", "training images: a dataset folder / file / Hub id, or a folder of images")
    train_split: str = _opt("train", "split to train on")
    max_train_samples: int | None = _opt(None, "use the first N training images")
    reward: str = _opt("iou", "iou: against the reference program; render: similarity to the input image", choices=list(REWARDS))
    failure_penalty: float = _opt(10.0, "a program that fails earns -failure_penalty")
    iou_weight: float = _opt(10.0, "a valid program earns iou_weight * IoU (reward iou)")
    render_weight: float = _opt(10.0, "a valid program earns render_weight * similarity (reward render)")
    protocol: str = _opt("aligned", "IoU protocol of cadcoder.geometry", choices=["aligned", "bbox", "mecagent"])
    fast_iou: bool = _opt(True, "mesh-boolean IoU (exact booleans when false)")
    group_size: int = _opt(8, "K: programs sampled per image (>= 2)")
    prompts_per_step: int = _opt(4, "images per step (the step trains on prompts_per_step * group_size programs)")
    max_steps: int = _opt(100, "RL steps")
    max_train_seconds: float | None = _opt(None, "stop (and save) once this much training time has passed")
    learning_rate: float = _opt(1e-5, "AdamW learning rate")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping")
    clip_epsilon: float = _opt(0.2, "PPO ratio clip")
    kl_coef: float = _opt(0.04, "weight of the KL term to the starting model (0: no reference model is kept)")
    scale_rewards: bool = _opt(True, "divide advantages by the group's reward std")
    updates_per_batch: int = _opt(1, "policy updates per sampled batch (the clip matters from the second)")
    temperature: float = _opt(1.0, "sampling temperature (log-probs use the same)")
    top_p: float | None = _opt(None, "nucleus sampling (None: full distribution, matching the log-probs)")
    max_new_tokens: int | None = _opt(None, "generation length (default: the model's generation_config)")
    micro_batch_size: int = _opt(16, "sequences per forward/backward pass")
    bf16: bool = _opt(False, "bfloat16 autocast for the policy and reference forwards")
    save_steps: int = _opt(10, "save the resumable state every N steps")
    resume: bool = _opt(True, "continue from output_dir's saved state when there is one")
    sandbox_workers: int | None = _opt(None, "sandbox worker processes (default: CPU count, at most 8)")
    sandbox_timeout: float = _opt(10.0, "seconds per program (execution and scoring)")
    report_to: str = _opt("none", "none / jsonl (rl_log.jsonl only) / tensorboard (also output_dir/runs)")
    device: str | None = _opt(None, "torch device (default: cuda when available)")
    seed: int = _opt(0, "RNG seed of data order and sampling")

    def __post_init__(self) -> None:
        if int(self.group_size) < 2:
            raise ValueError(
                f"group_size (K) is {self.group_size}: GRPO compares programs sampled for the same image, so it needs "
                "K >= 2; set group_size to 2 or more (8 is usual)"
            )
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; use one of {', '.join(REWARDS)}")
        for name in ("prompts_per_step", "max_steps", "micro_batch_size", "save_steps", "updates_per_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def step_settings(self) -> StepSettings:
        """The update settings of :func:`cadcoder.rl.policy.policy_step`."""
        return StepSettings(self.clip_epsilon, self.kl_coef, self.temperature, self.micro_batch_size,
                            self.max_grad_norm, self.updates_per_batch, self.bf16)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the saved one."""
        return {k: getattr(self, k) for k in ("model_name_or_path", "reward", "group_size", "prompts_per_step", "seed")}


def build_reward(args: RLArguments) -> ExecutionReward:
    """The named reward of ``args``."""
    return make_reward(args.reward, failure_penalty=args.failure_penalty, iou_weight=args.iou_weight,
                       render_weight=args.render_weight, protocol=args.protocol, fast=args.fast_iou)  # fmt: skip


def frozen_copy(model: Any) -> Any:
    """A frozen copy of the starting model for the KL term (eval mode, no gradients)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def batch_indices(num_examples: int, per_step: int, step: int, seed: int) -> list[int]:
    """The examples of ``step``: consecutive slices of a per-epoch permutation seeded by ``seed`` and the epoch."""
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, num_examples)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(num_examples)[offset]))
    return out


def _summarise(step: int, results: Sequence[RewardResult], stats: dict[str, float], times: dict[str, float],
               programs: Sequence[str]) -> dict[str, Any]:
    """The log record of one step: reward mean / std, VSR, IoU, KL, failures with a reason each, timings."""
    rewards = np.asarray([r.reward for r in results], dtype=np.float64)
    ious = [r.iou for r in results if r.ok and r.iou is not None]
    sims = [r.similarity for r in results if r.ok and r.similarity is not None]
    failures = Counter(r.status for r in results if not r.ok)
    reasons = {}
    for r in results:
        if not r.ok and r.status not in reasons:
            reasons[r.status] = r.error[:300]
    return {
        "step": step, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "vsr": float(np.mean([r.ok for r in results])),
        "iou_mean": float(np.mean(ious)) if ious else None,
        "iou_mean_all": float(sum(ious) / len(results)) if ious else (0.0 if results else None),
        "similarity_mean": float(np.mean(sims)) if sims else None,
        "distinct_programs": len(set(programs)) / max(len(programs), 1),
        **stats, **times, "failures": dict(failures), "failure_reasons": reasons,
    }  # fmt: skip


def rl_step(model: Any, processor: Any, optimizer: torch.optim.Optimizer, batch: Sequence[RLExample],
            reward: Callable[..., Any], sandbox: Any, args: RLArguments, step: int, ref_model: Any = None) -> dict[str, Any]:
    """One GRPO step on ``batch``: sample K programs per image, score them, update the policy; its log record."""
    t0 = time.perf_counter()
    rollout = sample_rollout(model, processor, [ex.image for ex in batch], args.group_size,
                             seed=args.seed * 1_000_003 + step, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p)  # fmt: skip
    t1 = time.perf_counter()
    expanded = [ex for ex in batch for _ in range(args.group_size)]
    results = as_results(reward(rollout.programs, expanded, sandbox), len(rollout.programs))
    t2 = time.perf_counter()
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
    rollout.advantages = group_advantages(rewards, args.group_size, scale=args.scale_rewards)
    stats = policy_step(model, optimizer, rollout, args.step_settings(), ref_model=ref_model)
    t3 = time.perf_counter()
    times = {"generate_seconds": t1 - t0, "reward_seconds": t2 - t1, "update_seconds": t3 - t2}
    return _summarise(step + 1, results, stats, times, rollout.programs)


def _check_examples(examples: Sequence[RLExample], reward: Any) -> None:
    """Raise on an empty training set or, for the ``iou`` reward, an image without a reference program."""
    if not examples:
        raise ValueError("no training examples; pass at least one image (see cadcoder.rl.data.load_rl_examples)")
    if getattr(reward, "kind", None) == "iou" and any(ex.program is None for ex in examples):
        missing = sum(ex.program is None for ex in examples)
        raise ValueError(f"the 'iou' reward needs a reference program per image, but {missing} image(s) have none; "
                         "use the 'render' reward for unlabelled images")  # fmt: skip


def train_rl(model: Any, processor: Any, examples: Sequence[RLExample], reward: Callable[..., Any] | None,
             args: RLArguments, ref_model: Any = None, sandbox: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run GRPO on ``model`` in place until ``max_steps`` (or ``max_train_seconds``); returns the run's summary.

    Args:
        model, processor: the policy (put it on its device first) and its processor.
        examples: the training images (encoded or decoded), with programs for the ``iou`` reward.
        reward: a :data:`cadcoder.rl.rewards.RewardFn`; ``None``: the named reward of ``args``.
        args: the options; ``output_dir`` receives the resumable state and ``rl_log.jsonl``.
        ref_model: the frozen starting model for the KL term; ``None`` with ``kl_coef > 0``: a frozen copy of
            ``model`` made before any update (before resuming, so it is the starting checkpoint).
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse; ``None`` opens one (its workers start
            only when a reward runs a program).

    Raises:
        ValueError: no examples, or the ``iou`` reward on images without programs.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from cadcoder.sandbox import borrow_or_open

    reward = reward if reward is not None else build_reward(args)
    _check_examples(examples, reward)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    model.eval()
    if ref_model is None and args.kl_coef > 0:
        ref_model = frozen_copy(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)  # fmt: skip
    start, elapsed = load_state(args.output_dir, model, optimizer, args.identity()) if args.resume else (0, 0.0)
    logger = StepLogger(args.output_dir, args.report_to, start)
    record: dict[str, Any] = {}
    step = start
    bar = tqdm(total=args.max_steps, initial=start, desc=f"RL ({getattr(reward, 'name', 'reward')})", disable=not progress)
    try:
        with borrow_or_open(sandbox, num_workers=args.sandbox_workers, timeout=args.sandbox_timeout) as sb:
            while step < args.max_steps and (args.max_train_seconds is None or elapsed < args.max_train_seconds):
                t0 = time.perf_counter()
                batch = [decoded(examples[i]) for i in batch_indices(len(examples), args.prompts_per_step, step, args.seed)]
                record = rl_step(model, processor, optimizer, batch, reward, sb, args, step, ref_model)
                step, elapsed = step + 1, elapsed + time.perf_counter() - t0
                logger.log({**record, "elapsed_seconds": elapsed})
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward_mean']:.2f}", vsr=f"{record['vsr']:.2f}", kl=f"{record['kl']:.3f}")
                if step % args.save_steps == 0:
                    save_state(args.output_dir, model, optimizer, step, elapsed, args.identity())
        if step > start and step % args.save_steps:
            save_state(args.output_dir, model, optimizer, step, elapsed, args.identity())
    finally:
        bar.close()
        logger.close()
    return {"steps": step, "resumed_from_step": start, "train_seconds": round(elapsed, 1),
            **{f"last_{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}}  # fmt: skip


def config_dict(args: RLArguments) -> dict[str, Any]:
    """The options as a plain dict (for the model card and the results JSON)."""
    return asdict(args)
