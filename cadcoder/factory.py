"""Build small, randomly initialised CadCoder models (tests, quickstart training, benchmarks) without downloads."""

from __future__ import annotations

from typing import Literal

from transformers import CodeGenConfig, GPT2Config, PreTrainedConfig, PreTrainedTokenizerBase

from configuration_cadcoder import CODEGEN_350M_MONO_ARCH, CadCoderConfig
from modeling_cadcoder import CadCoderForConditionalGeneration, _default_generation_config
from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

__all__ = ["build_cadcoder", "build_tiny_cadcoder", "text_config_for"]


def text_config_for(
    tokenizer: PreTrainedTokenizerBase,
    text_model_type: Literal["codegen", "gpt2"] = "codegen",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 1024,
    rotary_dim: int | None = None,
) -> PreTrainedConfig:
    """A CodeGen or GPT-2 config sized for ``tokenizer`` (its ``<image>`` token included).

    Args:
        tokenizer: the tokenizer the model will use; ``len(tokenizer)`` sets the vocabulary size.
        text_model_type: ``"codegen"`` (the enhanced model's family) or ``"gpt2"`` (the seed baseline's).
        n_layer, n_embd, n_head, n_positions: LM shape.
        rotary_dim: CodeGen rotary dimensions (default: the head dimension, at most 32 like codegen-350M).
    """
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}.")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    common = dict(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                  bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    if text_model_type == "codegen":
        head_dim = n_embd // n_head
        return CodeGenConfig(n_ctx=n_positions, rotary_dim=rotary_dim or min(head_dim, 32), **common)
    if text_model_type == "gpt2":
        return GPT2Config(**common)
    raise ValueError(f"text_model_type={text_model_type!r} is not supported; use 'codegen' or 'gpt2'.")


def build_cadcoder(
    tokenizer: PreTrainedTokenizerBase,
    text_config: PreTrainedConfig | dict,
    image_size: int = 224,
    visual_tokens: Literal["grid", "pooled"] = "grid",
    vision_architecture: str = "resnet18",
    num_channels: int = 1,
    vision_model_args: dict | None = None,
    max_new_tokens: int = 1024,
    **config_kwargs,
) -> tuple[CadCoderForConditionalGeneration, CadCoderProcessor]:
    """Randomly initialised CadCoder model and its matching processor (no download).

    The processor is built first so ``<image>`` is in the tokenizer; the text config's vocabulary must hold it.

    Returns:
        ``(model, processor)`` with ``model.config.image_token_id == processor.image_token_id`` and
        ``processor.num_image_tokens == model.config.num_image_tokens``.
    """
    config = CadCoderConfig(
        vision_config={
            "model_type": "timm_wrapper",
            "architecture": vision_architecture,
            "model_args": {"in_chans": num_channels, **(vision_model_args or {})},
            "num_labels": 0,
            "do_pooling": False,
        },
        text_config=text_config,
        visual_tokens=visual_tokens,
        image_size=image_size,
        num_channels=num_channels,
        **config_kwargs,
    )
    processor = CadCoderProcessor(
        image_processor=CadCoderImageProcessor(size=image_size, num_channels=num_channels),
        tokenizer=tokenizer,
        num_image_tokens=config.num_image_tokens,
    )
    if processor.image_token_id >= config.text_config.vocab_size:
        raise ValueError(
            f"the text config's vocab_size={config.text_config.vocab_size} does not hold the tokenizer's "
            f"{len(tokenizer)} tokens (with <image>); size the LM with len(tokenizer)."
        )
    config.image_token_id = processor.image_token_id
    model = CadCoderForConditionalGeneration(config)
    model.generation_config = _default_generation_config(tokenizer)
    model.generation_config.max_new_tokens = max_new_tokens
    return model, processor


def build_tiny_cadcoder(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int = 128,
    visual_tokens: Literal["grid", "pooled"] = "grid",
    text_model_type: Literal["codegen", "gpt2"] = "codegen",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 1024,
    vision_architecture: str = "resnet18",
    num_channels: int = 1,
    vision_model_args: dict | None = None,
    max_new_tokens: int = 1024,
    seed: int | None = 0,
    **config_kwargs,
) -> tuple[CadCoderForConditionalGeneration, CadCoderProcessor]:
    """A small random CadCoder (default: ResNet18 at 128 px -> 16 grid tokens, 2x64 CodeGen) and its processor.

    Args:
        tokenizer: e.g. from ``cadcoder.tokenizer.train_code_tokenizer``; ``<image>`` is added to it.
        image_size: input side (grid tokens = ``ceil(image_size / 32) ** 2``).
        visual_tokens: ``"grid"`` or ``"pooled"``.
        text_model_type: ``"codegen"`` or ``"gpt2"``.
        n_layer, n_embd, n_head, n_positions: LM shape.
        vision_architecture: any timm architecture name (``"resnet18"``, ``"resnet10t"`` ...).
        num_channels: 1 (grayscale) or 3.
        vision_model_args: extra ``timm.create_model`` kwargs.
        max_new_tokens: default generation length stored in ``model.generation_config``.
        seed: ``torch.manual_seed`` before init, for reproducible weights (``None``: leave the RNG alone).
        **config_kwargs: other ``CadCoderConfig`` fields (``projector_hidden_size``, ...).
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    # Add <image> first so the LM vocabulary is sized for it.
    CadCoderProcessor(CadCoderImageProcessor(size=image_size, num_channels=num_channels), tokenizer, 1)
    text_config = text_config_for(tokenizer, text_model_type, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                  n_positions=n_positions)  # fmt: skip
    return build_cadcoder(
        tokenizer,
        text_config,
        image_size=image_size,
        visual_tokens=visual_tokens,
        vision_architecture=vision_architecture,
        num_channels=num_channels,
        vision_model_args=vision_model_args,
        max_new_tokens=max_new_tokens,
        **config_kwargs,
    )


def full_size_text_config(tokenizer: PreTrainedTokenizerBase | None = None) -> CodeGenConfig:
    """The codegen-350M-mono architecture (random weights); vocabulary enlarged to fit ``tokenizer`` if given."""
    arch = {k: v for k, v in CODEGEN_350M_MONO_ARCH.items() if k != "model_type"}
    if tokenizer is not None:
        arch["vocab_size"] = max(arch["vocab_size"], len(tokenizer))
        arch["bos_token_id"] = tokenizer.bos_token_id
        arch["eos_token_id"] = tokenizer.eos_token_id
    return CodeGenConfig(**arch)
