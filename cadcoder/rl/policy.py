"""The policy side of GRPO: sampling a group of programs per image, group advantages, the clipped step.

Shapes: ``B`` images per step, ``K`` programs per image (``N = B * K`` sequences, grouped per image),
``P`` prompt tokens (``<image>`` placeholders + bos), ``T`` generated tokens.

The loss per generated token is the clipped surrogate of PPO with the group-normalised advantage, plus
``kl_coef`` times the k3 estimate of KL(policy || reference) (``exp(r - p) - (r - p) - 1``, always >= 0),
summed over all unmasked tokens of the batch and divided by their count (token-level normalisation, so
long programs are not down-weighted). The model stays in eval mode throughout: dropout off and BatchNorm
statistics frozen, so the distribution that sampled a program is the one that scores it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cadcoder.inference import generate_new_tokens

__all__ = [
    "Rollout",
    "StepSettings",
    "completion_mask",
    "group_advantages",
    "sample_rollout",
    "token_log_probs",
    "grpo_loss",
    "policy_step",
]


@dataclass
class Rollout:
    """The sampled sequences of one step, ready for the policy update.

    Attributes:
        pixel_values: ``(N, C, H, W)``, each image repeated K times.
        prompt_ids: ``(N, P)``.
        completion_ids: ``(N, T)`` generated tokens (EOS padding after the end).
        mask: ``(N, T)`` float, 1 up to and including the first EOS.
        programs: the N decoded, cleaned programs.
        advantages: ``(N,)``, filled after scoring.
    """

    pixel_values: torch.Tensor
    prompt_ids: torch.Tensor
    completion_ids: torch.Tensor
    mask: torch.Tensor
    programs: list[str]
    advantages: torch.Tensor | None = None


@dataclass(frozen=True)
class StepSettings:
    """How :func:`policy_step` updates the policy (see :class:`cadcoder.rl.loop.RLArguments`)."""

    clip_epsilon: float = 0.2
    kl_coef: float = 0.04
    temperature: float = 1.0
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    updates_per_batch: int = 1
    bf16: bool = False


def completion_mask(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """``(N, T)`` float mask: 1 on generated tokens up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        return torch.ones_like(tokens, dtype=torch.float32)
    is_eos = (tokens == eos_token_id).long()
    after_first_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
    return (~after_first_eos).float()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std when ``scale``.

    Args:
        rewards: ``(N,)`` rewards, grouped per image (``N = B * group_size``).
        group_size: K, the programs sampled per image (>= 2).
        scale: divide by the group's standard deviation (+ ``eps``); a group of equal rewards gets 0.

    Raises:
        ValueError: ``group_size < 2`` or ``N`` not a multiple of it.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare programs of the same image, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (B, K)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def _image_token_id(model: Any) -> int | None:
    """The ``<image>`` placeholder id, never sampled (and so left out of the scored distribution too)."""
    value = getattr(getattr(model, "config", None), "image_token_id", None)
    return int(value) if value is not None else None


def sample_rollout(model: Any, processor: Any, images: Sequence[Any], group_size: int, seed: int,
                   max_new_tokens: int | None = None, temperature: float = 1.0, top_p: float | None = None) -> Rollout:
    """Sample ``group_size`` programs per image with the shared generation helper, seeded by ``seed``.

    The caller's torch RNG state is left untouched, so a resumed run samples what the first run would have.
    """
    # top_k=0: no top-k cut (transformers' default is 50), so the sampled distribution is the one scored.
    kwargs: dict[str, Any] = {"do_sample": True, "num_return_sequences": int(group_size), "temperature": float(temperature),
                              "top_k": 0}
    if _image_token_id(model) is not None:  # an <image> token in a completion would break the next forward
        kwargs["suppress_tokens"] = [_image_token_id(model)]
    if top_p is not None:
        kwargs["top_p"] = float(top_p)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        completion_ids = generate_new_tokens(model, processor, images, max_new_tokens, **kwargs)  # (N, T)
    inputs = processor(images=list(images), return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device, next(model.parameters()).dtype)
    eos = processor.tokenizer.eos_token_id
    return Rollout(
        pixel_values=pixel_values.repeat_interleave(group_size, dim=0),  # (N, C, H, W)
        prompt_ids=inputs["input_ids"].to(device).repeat_interleave(group_size, dim=0),  # (N, P)
        completion_ids=completion_ids,
        mask=completion_mask(completion_ids, eos),
        programs=[str(p) for p in processor.batch_decode(completion_ids, skip_special_tokens=True)],
    )


def token_log_probs(model: Any, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, completion_ids: torch.Tensor,
                    mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(n, T)`` log-probabilities of the generated tokens under ``model`` (at the sampling temperature)."""
    length = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (n, P + T)
    attention = torch.cat([torch.ones_like(prompt_ids), mask.long()], dim=1)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention, use_cache=False,
                logits_to_keep=length + 1)  # fmt: skip
    logits = out.logits[:, :-1].float() / temperature  # (n, T, V): position P - 1 + t predicts token t
    image_token = _image_token_id(model)
    if image_token is not None and image_token < logits.shape[-1]:
        logits[..., image_token] = float("-inf")  # as in sampling (suppress_tokens)
    return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip_epsilon: float, kl_coef: float, num_tokens: float) -> tuple[torch.Tensor, dict]:
    """The clipped GRPO loss of some sequences, normalised by the batch's ``num_tokens``.

    Args:
        logp, old_logp, ref_logp: ``(n, T)`` log-probs under the policy, the sampling policy and the reference
            (``ref_logp=None``: no KL term).
        advantages: ``(n,)``; mask: ``(n, T)``.

    Returns:
        The loss and detached sums: ``kl`` (k3 estimate), ``clipped`` (tokens whose ratio was clipped).
    """
    ratio = torch.exp(logp - old_logp)  # (n, T)
    adv = advantages[:, None]
    clipped_ratio = ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        diff = ref_logp - logp
        kl = torch.exp(diff) - diff - 1.0
        if kl_coef:
            per_token = per_token + kl_coef * kl
    loss = (per_token * mask).sum() / max(float(num_tokens), 1.0)
    stats = {"kl": float((kl.detach() * mask).sum()), "clipped": float(((ratio != clipped_ratio).float() * mask).sum())}
    return loss, stats


def _autocast(model: Any, enabled: bool) -> contextlib.AbstractContextManager:
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _frozen_log_probs(model: Any, rollout: Rollout, settings: StepSettings) -> torch.Tensor:
    """Log-probs of the rollout's tokens under ``model``, without gradients, micro-batch by micro-batch."""
    parts = []
    with torch.no_grad(), _autocast(model, settings.bf16):
        for s in range(0, rollout.completion_ids.shape[0], settings.micro_batch_size):
            sl = slice(s, s + settings.micro_batch_size)
            parts.append(token_log_probs(model, rollout.pixel_values[sl], rollout.prompt_ids[sl],
                                         rollout.completion_ids[sl], rollout.mask[sl], settings.temperature))  # fmt: skip
    return torch.cat(parts)


def policy_step(model: Any, optimizer: torch.optim.Optimizer, rollout: Rollout, settings: StepSettings,
                ref_model: Any = None) -> dict[str, float]:
    """``updates_per_batch`` clipped policy-gradient updates on one rollout; returns loss, KL and clip share.

    With one update the sampling policy is the current one (ratio 1, old log-probs = detached log-probs);
    with more, old log-probs are computed once before the first update and the clip bounds the later ones.
    """
    assert rollout.advantages is not None, "fill rollout.advantages (group_advantages) before the update"
    num_tokens = float(rollout.mask.sum())
    ref_logp = _frozen_log_probs(ref_model, rollout, settings) if ref_model is not None else None
    old_logp = _frozen_log_probs(model, rollout, settings) if settings.updates_per_batch > 1 else None
    totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "grad_norm": 0.0}
    n = rollout.completion_ids.shape[0]
    for _ in range(settings.updates_per_batch):
        optimizer.zero_grad(set_to_none=True)
        for s in range(0, n, settings.micro_batch_size):
            sl = slice(s, s + settings.micro_batch_size)
            with _autocast(model, settings.bf16):
                logp = token_log_probs(model, rollout.pixel_values[sl], rollout.prompt_ids[sl],
                                       rollout.completion_ids[sl], rollout.mask[sl], settings.temperature)  # fmt: skip
            old = old_logp[sl] if old_logp is not None else logp.detach()
            ref = ref_logp[sl] if ref_logp is not None else None
            loss, stats = grpo_loss(logp, old, ref, rollout.advantages[sl].to(logp.device), rollout.mask[sl],
                                    settings.clip_epsilon, settings.kl_coef, num_tokens)  # fmt: skip
            loss.backward()
            totals["loss"] += float(loss.detach())
            totals["kl"] += stats["kl"]
            totals["clipped"] += stats["clipped"]
        params = [p for p in model.parameters() if p.grad is not None]
        totals["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)) if params else 0.0
        optimizer.step()
    updates = float(settings.updates_per_batch)
    tokens = max(num_tokens, 1.0) * updates
    return {"loss": totals["loss"] / updates, "kl": totals["kl"] / tokens, "clip_fraction": totals["clipped"] / tokens,
            "grad_norm": totals["grad_norm"] / updates, "completion_tokens": num_tokens / max(n, 1)}  # fmt: skip
