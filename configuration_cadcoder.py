"""CadCoder configuration: a timm image encoder + a projector + a causal code LM (CodeGen or GPT-2).

This file is part of the Hub face: it imports only torch/transformers/timm and ships as remote code.
"""

from __future__ import annotations

import math
from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["CadCoderConfig", "CODEGEN_350M_MONO_ARCH", "DEFAULT_IMAGE_SIZE", "VISUAL_TOKEN_MODES", "timm_vision_config"]

VISUAL_TOKEN_MODES = ("grid", "pooled")

# Side of the square encoder input; the GenCAD-Code renders (448 px) are resized to it. docs/REPORT.md
# ("Image size") says why 224 and not 448.
DEFAULT_IMAGE_SIZE = 224

# Architecture of Salesforce/codegen-350M-mono (its config.json), so the default config needs no download.
CODEGEN_350M_MONO_ARCH: dict = {
    "model_type": "codegen",
    "vocab_size": 51200,
    "n_positions": 2048,
    "n_ctx": 2048,
    "n_embd": 1024,
    "n_layer": 20,
    "n_head": 16,
    "rotary_dim": 32,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "layer_norm_epsilon": 1e-05,
    "initializer_range": 0.02,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "tie_word_embeddings": False,
}


def timm_vision_config(
    architecture: str = "resnet18", num_channels: int = 1, model_args: dict | None = None
) -> dict:
    """The ``vision_config`` dict of a timm encoder without classifier (``TimmWrapperConfig`` fields).

    Args:
        architecture: timm architecture name (``"resnet18"``, ``"resnet10t"`` ...).
        num_channels: input channels of the encoder's stem (1 = grayscale).
        model_args: other ``timm.create_model`` arguments; ``in_chans`` is always ``num_channels``.
    """
    return {
        "model_type": "timm_wrapper",
        "architecture": architecture,
        "model_args": {**(model_args or {}), "in_chans": num_channels},
        "num_labels": 0,  # no dummy ImageNet labels in config.json
        "do_pooling": False,
    }


class CadCoderConfig(PreTrainedConfig):
    r"""Configuration of [`CadCoderForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            The image encoder, normally a `TimmWrapperConfig` (a dict with ``"model_type": "timm_wrapper"`` works too).
            Defaults to ResNet18 with a 1-channel input and no classifier.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The causal language model. Defaults to the architecture of ``Salesforce/codegen-350M-mono``;
            ``{"model_type": "gpt2", ...}`` reproduces the GPT-2 baseline.
        visual_tokens (`"grid"` or `"pooled"`, defaults to `"grid"`):
            ``"grid"``: every cell of the encoder's last feature map becomes one image token
            (``ceil(image_size / 32) ** 2`` tokens for ResNets). ``"pooled"``: a single globally pooled vector,
            the baseline.s design, kept so the baseline stays reproducible.
        image_size (`int`, defaults to 224): side of the square image fed to the encoder (see ``DEFAULT_IMAGE_SIZE``).
        num_channels (`int`, defaults to 1): image channels the encoder expects (1 = grayscale).
        projector_hidden_act (`str`, defaults to `"gelu"`): activation between the two projector layers.
        projector_hidden_size (`int`, *optional*): width of the projector's hidden layer (defaults to the LM width).
        vision_feature_stride (`int`, defaults to 32): total downsampling of the encoder's last feature map.
        image_token_id (`int`, *optional*): id of the ``<image>`` placeholder token (set by the processor/factory).

    Example:
        >>> config = CadCoderConfig(text_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2})
        >>> config.num_image_tokens
        49
    """

    model_type = "cadcoder"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="timm_wrapper", init_kwargs=timm_vision_config()),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="codegen", init_kwargs=CODEGEN_350M_MONO_ARCH),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    visual_tokens: Literal["grid", "pooled"] = "grid"
    image_size: int = DEFAULT_IMAGE_SIZE
    num_channels: int = 1
    projector_hidden_act: str = "gelu"
    projector_hidden_size: int | None = None
    vision_feature_stride: int = 32
    image_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for key in ("vision_config", "text_config"):
            value = getattr(self, key)
            if isinstance(value, dict):
                value = dict(value)
                if key == "vision_config":
                    value.setdefault("model_type", "timm_wrapper")
                    value.setdefault("num_labels", 0)
                setattr(self, key, value)
        super().__post_init__(**kwargs)
        if self.visual_tokens not in VISUAL_TOKEN_MODES:
            raise ValueError(f"visual_tokens={self.visual_tokens!r} is not supported; use one of {VISUAL_TOKEN_MODES}.")
        if int(self.image_size) < self.vision_feature_stride:
            raise ValueError(
                f"image_size={self.image_size} is smaller than the encoder stride {self.vision_feature_stride}; "
                f"use image_size >= {self.vision_feature_stride} (224 or 448 for GenCAD-Code)."
            )
        if self.vision_config.model_type == "timm_wrapper":
            model_args = dict(self.vision_config.model_args or {})
            in_chans = model_args.get("in_chans", 3)
            if in_chans != self.num_channels:
                # Keep the encoder's input channels and the processor's output channels in one place.
                model_args["in_chans"] = self.num_channels
                self.vision_config.model_args = model_args
        # Our model uses the LM's own head; tying follows the text config (GPT-2 ties, CodeGen does not).
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def grid_size(self) -> int:
        """Side of the encoder's last feature map for ``image_size`` (ResNet: ``ceil(image_size / 32)``)."""
        return math.ceil(int(self.image_size) / self.vision_feature_stride)

    @property
    def num_image_tokens(self) -> int:
        """Number of ``<image>`` placeholder tokens per image: ``grid_size ** 2`` for "grid", 1 for "pooled"."""
        return 1 if self.visual_tokens == "pooled" else self.grid_size**2


CadCoderConfig.register_for_auto_class()  # save_pretrained writes auto_map["AutoConfig"] and copies this file
if not __package__:  # imported as an installed module (not as Hub remote code): make the Auto classes see it
    AutoConfig.register(CadCoderConfig.model_type, CadCoderConfig, exist_ok=True)
