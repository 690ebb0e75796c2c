"""RL fine-tuning from execution: rewards through the sandbox, group advantages, the policy step, the loop.

For each training image the policy samples a group of K programs; each runs in :class:`cadcoder.sandbox.Sandbox`
and is scored (:mod:`cadcoder.rl.rewards`: ``iou`` against the reference program, or the reference-free
``render`` similarity to the input image); the scores become group-normalised advantages (GRPO), and a
clipped policy-gradient step with a KL term to the frozen starting model follows (:mod:`cadcoder.rl.policy`).
:mod:`cadcoder.rl.loop` holds the options, the loop, resumable state and the saved result; ``train_rl.py``
is the entry point.

**Our own loop, not TRL's GRPOTrainer** (TRL 1.16.0, checked against its source with a tiny CadCoder):

* ``grpo_trainer.py:2413-2420``: a dataset with images must hold *conversational* prompts, else
  ``ValueError("Multimodal training requires conversational prompts...")``;
* ``grpo_trainer.py:1737``: conversational prompts are tokenised only through
  ``processing_class.apply_chat_template(..., tokenize=True)``; our processor has no chat template (its prompt
  is N ``<image>`` tokens + bos, built by the processor), so transformers raises "this processor does not
  have a chat template";
* with a template set, ``ProcessorMixin.apply_chat_template`` (transformers ``processing_utils.py:2437``)
  calls ``processor(text=..., images=..., videos=..., audio=...)``: our processor refuses ``videos``/``audio``,
  and its ``text`` is the *target* program (an EOS-terminated training row with labels), not a prompt.

Driving GRPOTrainer would mean patching its prompt path or changing the processor's contract on the Hub, so
this package is a small loop on plain torch. The submodules import lazily, so importing the package loads no
torch. Rewards are scored the metric's way, in a clean sandbox child (:mod:`cadcoder.clean_scoring`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RLExample": "rewards",
    "RewardResult": "rewards",
    "ExecutionReward": "rewards",
    "make_reward": "rewards",
    "REWARDS": "rewards",
    "group_advantages": "policy",
    "grpo_loss": "policy",
    "completion_mask": "policy",
    "RLArguments": "loop",
    "train_rl": "loop",
    "load_rl_examples": "loop",
    "load_policy": "loop",
    "save_rl_model": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"cadcoder.rl.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cadcoder.rl' has no attribute {name!r}")
