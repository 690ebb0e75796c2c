"""Build CadCoder models and processors: small random ones (tests, quickstart, benchmarks; no downloads) and
ones assembled from a pretrained timm encoder and a pretrained causal LM."""

from __future__ import annotations

import json
import os
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CodeGenConfig,
    GenerationConfig,
    GPT2Config,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from configuration_cadcoder import CODEGEN_350M_MONO_ARCH, CadCoderConfig, timm_vision_config
from modeling_cadcoder import CadCoderForConditionalGeneration, CadCoderMultiModalProjector
from processing_cadcoder import IMAGE_TOKEN, CadCoderImageProcessor, CadCoderProcessor

__all__ = [
    "adapt_input_channels",
    "build_cadcoder",
    "build_from_pretrained_components",
    "build_tiny_cadcoder",
    "default_generation_config",
    "full_size_text_config",
    "load_timm_encoder",
    "text_config_for",
]

# timm.create_model arguments of a published checkpoint that the CadCoder encoder sets itself.
_IGNORED_TIMM_ARGS = ("num_classes", "global_pool", "in_chans", "pretrained_cfg", "pretrained_cfg_overlay")


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
        text_model_type: ``"codegen"`` (the enhanced model's family) or ``"gpt2"`` (the baseline's).
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
        vision_config=timm_vision_config(vision_architecture, num_channels, vision_model_args),
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
    model.generation_config = default_generation_config(tokenizer)
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


def default_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy decoding that stops at EOS and pads with the tokenizer's pad token (EOS for CodeGen)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        max_new_tokens=1024,
        do_sample=False,
    )


def build_from_pretrained_components(
    vision: str | os.PathLike = "timm/resnet18.a1_in1k",
    text: str | os.PathLike = "Salesforce/codegen-350M-mono",
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | None = None,
    **config_kwargs,
) -> CadCoderForConditionalGeneration:
    """Build a CadCoder model from a pretrained timm encoder and a pretrained causal LM.

    The RGB stem of the encoder is adapted to ``num_channels`` (default 1) by summing its filters (timm's
    ``adapt_input_conv``), so a grayscale image produces the activations the RGB network gave to a grey image.
    The projector is freshly initialised.

    Args:
        vision: timm checkpoint, as a Hub id (``"timm/resnet18.a1_in1k"``, needs network), an ``"hf-hub:..."``
            name, or a local folder holding ``config.json`` + weights as written by timm's
            ``save_for_hf`` / ``TimmWrapperModel.save_pretrained``.
        text: causal LM checkpoint (Hub id or local folder saved with ``save_pretrained``).
        tokenizer: optional tokenizer; if given, ``<image>`` is added to it when missing, the LM embeddings are
            resized to fit it, ``config.image_token_id`` is set and generation stops at its EOS.
        dtype: dtype of the returned model (default ``torch.float32``; e.g. ``torch.bfloat16``).
        **config_kwargs: other ``CadCoderConfig`` fields (``visual_tokens``, ``image_size``, ``num_channels`` ...).

    Returns:
        The assembled model, in eval mode (call ``.train()`` before fine-tuning). Offline use: pass local folders;
        a Hub id needs network access on first use (then the HF cache serves it).
    """
    dtype = dtype or torch.float32  # Hub checkpoints are often fp16: never mix dtypes silently
    num_channels = int(config_kwargs.get("num_channels", 1))
    rgb_timm, architecture, model_args = load_timm_encoder(vision, dtype)
    text_model = AutoModelForCausalLM.from_pretrained(str(text), dtype=dtype)
    config = CadCoderConfig(vision_config=timm_vision_config(architecture, num_channels, model_args),
                            text_config=text_model.config, **config_kwargs)  # fmt: skip
    with torch.device("meta"):  # skeleton only: the towers are replaced below, no random init of a big LM
        model = CadCoderForConditionalGeneration(config)
    vision_tower = AutoModel.from_config(config.vision_config, dtype=dtype)
    vision_tower.timm_model.load_state_dict(adapt_input_channels(rgb_timm, num_channels))
    model.vision_tower = vision_tower
    model.language_model = text_model
    model.config.text_config = text_model.config
    skeleton = model.multi_modal_projector  # on the meta device: its shapes are right, its weights are not
    model.multi_modal_projector = CadCoderMultiModalProjector(
        vision_dim=skeleton.linear_1.in_features,
        text_dim=skeleton.linear_2.out_features,
        hidden_dim=skeleton.linear_1.out_features,
        act=config.projector_hidden_act,
    ).to(dtype)
    model._init_weights(model.multi_modal_projector)
    del rgb_timm

    if tokenizer is not None:
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        if len(tokenizer) > model.config.text_config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        model.config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        model.generation_config = default_generation_config(tokenizer)
    elif getattr(text_model, "generation_config", None) is not None:
        model.generation_config = GenerationConfig.from_dict(text_model.generation_config.to_dict())
    return model.eval()


def load_timm_encoder(vision: str | os.PathLike, dtype: torch.dtype) -> tuple[nn.Module, str, dict]:
    """Load a pretrained timm encoder as published (RGB stem, no classifier).

    Accepts a Hub id (``"timm/resnet18.a1_in1k"``), ``"hf-hub:..."`` / ``"local-dir:..."`` names, a local folder in
    timm's format (``timm.models.save_for_hf``) or one written by ``TimmWrapperModel.save_pretrained``.

    Returns:
        ``(timm_model, architecture, extra_model_args)``.
    """
    import timm
    from transformers import TimmWrapperModel

    path = os.fspath(vision)
    config_file = os.path.join(path, "config.json")
    if os.path.isdir(path) and not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path} has no config.json; pass a timm checkpoint folder or a Hub id.")
    config: dict = {}
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("model_type") == "timm_wrapper":  # saved by transformers
            wrapper = TimmWrapperModel.from_pretrained(path, num_labels=0, dtype=dtype)
            return wrapper.timm_model, wrapper.config.architecture, _published_model_args(wrapper.config.model_args)
        name = f"local-dir:{path}"
    else:
        name = path if path.startswith(("hf-hub:", "local-dir:")) else f"hf-hub:{path}"
    timm_model = timm.create_model(name, pretrained=True, num_classes=0).to(dtype)
    architecture = config.get("architecture") or timm_model.default_cfg.get("architecture")
    return timm_model, architecture, _published_model_args(config.get("model_args"))


def _published_model_args(model_args: dict | None) -> dict:
    """A checkpoint's ``model_args`` without the ones CadCoder sets itself (classifier, pooling, input channels)."""
    return {k: v for k, v in (model_args or {}).items() if k not in _IGNORED_TIMM_ARGS}


def adapt_input_channels(timm_model: nn.Module, num_channels: int) -> dict[str, torch.Tensor]:
    """State dict of ``timm_model`` with its first conv adapted to ``num_channels`` (timm ``adapt_input_conv``)."""
    from timm.models import adapt_input_conv

    state = timm_model.state_dict()
    pretrained_cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    first_conv = pretrained_cfg.get("first_conv") or "conv1"
    for name in [first_conv] if isinstance(first_conv, str) else list(first_conv):
        key = f"{name}.weight"
        if key in state and state[key].shape[1] != num_channels:
            state[key] = adapt_input_conv(num_channels, state[key])
    return state


def extend_text_positions(model: "torch.nn.Module", num_positions: int) -> bool:  # noqa: F821
    """Let the language model attend over ``num_positions`` tokens; True if anything changed.

    Rotary models (CodeGen) have no learned position weights, so their sin/cos tables are simply rebuilt
    longer (fine-tuning then adapts to the unseen positions). Learned absolute positions (GPT-2's ``wpe``)
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
