"""CadCoder: image of a mechanical part -> CadQuery program.

A timm image encoder (``vision_tower``) feeds a 2-layer MLP (``multi_modal_projector``) whose outputs are scattered into
the ``<image>`` placeholder tokens of a causal code LM (``language_model``, CodeGen or GPT-2), the way LLaVA does it in
transformers 5.x. Because the image lives in placeholder positions of ``input_ids``, the attention mask, position ids
and KV cache all stay in token space, so batched left-padded generation behaves exactly like one-by-one generation,
and ``generate()`` encodes the image only at the prefill step (``pixel_values`` is dropped afterwards).

This file is part of the Hub face: it imports only torch/transformers/timm and ships as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # loaded as remote code (a package built by transformers) or as part of an installed package
    from .configuration_cadcoder import CadCoderConfig
except ImportError:  # installed as a top-level module (pip install cadcoder)
    from configuration_cadcoder import CadCoderConfig

__all__ = [
    "CadCoderCausalLMOutputWithPast",
    "CadCoderForConditionalGeneration",
    "CadCoderMultiModalProjector",
    "CadCoderPreTrainedModel",
]

# Auto classes besides AutoModelForImageTextToText (registered below) that load this model with trust_remote_code.
_EXTRA_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM")

# Keyword arguments consumed by the loss; they must not reach the language model's attention layers.
_LOSS_KWARGS = ("num_items_in_batch", "ignore_index")


@dataclass
class CadCoderCausalLMOutputWithPast(CausalLMOutputWithPast):
    """Causal LM output (``loss``, ``logits``, ``cache``, ...) plus the projected image features.

    Attributes:
        image_hidden_states: ``(batch, num_image_tokens, hidden)`` projected image features, when ``pixel_values``
            were given to this call (only the prefill step during ``generate``).
    """

    image_hidden_states: torch.FloatTensor | None = None


class CadCoderMultiModalProjector(nn.Module):
    """Two-layer MLP mapping encoder features (``vision_dim``) to the language model width (``text_dim``)."""

    def __init__(self, vision_dim: int, text_dim: int, hidden_dim: int | None = None, act: str = "gelu"):
        super().__init__()
        hidden_dim = hidden_dim or text_dim
        self.linear_1 = nn.Linear(vision_dim, hidden_dim)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_dim, text_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class CadCoderPreTrainedModel(PreTrainedModel):
    """Holds the class-level settings shared by CadCoder models (weights init, supported attention backends)."""

    config_class = CadCoderConfig
    config: CadCoderConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["TimmWrapperModel"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        # Only our own layers (the projector); the towers are PreTrainedModels and initialise themselves.
        if isinstance(module, CadCoderMultiModalProjector):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for linear in (module.linear_1, module.linear_2):
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)


class CadCoderForConditionalGeneration(CadCoderPreTrainedModel, GenerationMixin):
    """Image-to-CadQuery model: ``vision_tower`` -> ``multi_modal_projector`` -> ``language_model``.

    Build inputs with ``CadCoderProcessor``: it inserts ``config.num_image_tokens`` ``<image>`` tokens per image in
    front of the program and prepares ``pixel_values``.

    Example:
        >>> inputs = processor(images=[image], return_tensors="pt")          # prompt only, left padded
        >>> ids = model.generate(**inputs, max_new_tokens=512)
        >>> programs = processor.batch_decode(ids)                           # clean CadQuery source
    """

    def __init__(self, config: CadCoderConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = CadCoderMultiModalProjector(
            vision_dim=_vision_feature_dim(self.vision_tower),
            text_dim=config.text_config.hidden_size,
            hidden_dim=config.projector_hidden_size,
            act=config.projector_hidden_act,
        )
        # The whole causal LM (its own head included: CodeGen's lm_head has a bias, GPT-2's is tied).
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        # One class records one auto class when saving; list the others so `save_pretrained` writes them all.
        auto_map = dict(getattr(config, "auto_map", None) or {})
        for auto_class in _EXTRA_AUTO_CLASSES:
            auto_map.setdefault(auto_class, f"{__name__.rsplit('.', 1)[-1]}.{type(self).__name__}")
        config.auto_map = auto_map

    # ----------------------------------------------------------------------------------------------- embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, **kw):
        """Resize the language model's token embeddings (and head) and keep ``config.text_config`` in sync."""
        embeddings = self.language_model.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, **kw)
        self.config.text_config.vocab_size = embeddings.num_embeddings
        return embeddings

    # ------------------------------------------------------------------------------------------------ training
    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs) -> None:
        # transformers only finds modules with a `gradient_checkpointing` flag (the LM blocks); timm's encoder has
        # its own switch.
        if gradient_checkpointing_func is not None:  # else transformers' default (torch checkpoint)
            kwargs["gradient_checkpointing_func"] = gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable=enable, **kwargs)
        timm_model = getattr(self.vision_tower, "timm_model", None)
        if timm_model is not None and hasattr(timm_model, "set_grad_checkpointing"):
            try:
                timm_model.set_grad_checkpointing(enable)
            except (AssertionError, NotImplementedError):
                pass  # that timm architecture has no checkpointing; the LM still checkpoints

    def set_trainable(self, vision: bool = True, projector: bool = True, language: bool = True) -> dict[str, int]:
        """Freeze or unfreeze the three parts for staged training (e.g. projector only, then everything).

        A frozen vision tower is also put in eval mode on every ``train()`` call, so its BatchNorm statistics stay
        fixed (small per-device batches would otherwise corrupt them).

        Returns:
            Number of trainable parameters per part, e.g. ``{"vision": 0, "projector": 1024, "language": 0}``.
        """
        parts = {"vision": (self.vision_tower, vision), "projector": (self.multi_modal_projector, projector),
                 "language": (self.language_model, language)}  # fmt: skip
        for module, trainable in parts.values():
            module.requires_grad_(trainable)
        self._frozen_vision = not vision
        self.train(self.training)
        return {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, (m, _) in parts.items()}

    def freeze(self, vision: bool = False, projector: bool = False, language: bool = False) -> dict[str, int]:
        """Freeze the named parts (``True`` = frozen) and unfreeze the others; see ``set_trainable``."""
        return self.set_trainable(vision=not vision, projector=not projector, language=not language)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and getattr(self, "_frozen_vision", False):
            self.vision_tower.eval()
        return self

    # -------------------------------------------------------------------------------------------------- vision
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images into LM-width tokens.

        Args:
            pixel_values: ``(batch, num_channels, image_size, image_size)`` from ``CadCoderImageProcessor``.

        Returns:
            ``(batch, config.num_image_tokens, text_hidden)``: one token per feature-map cell ("grid") or one pooled
            token ("pooled").
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, H, W), got "
                f"{tuple(pixel_values.shape)}; prepare images with CadCoderImageProcessor / CadCoderProcessor."
            )
        features = self.vision_tower(pixel_values, do_pooling=False).last_hidden_state
        if features.ndim == 4:  # CNN: (B, C, h, w)
            if self.config.visual_tokens == "pooled":
                features = features.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C), the baseline.s global average pool
            else:
                features = features.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major cells
        elif self.config.visual_tokens == "pooled":  # ViT-like: (B, T, C)
            features = features.mean(dim=1, keepdim=True)
        return self.multi_modal_projector(features)  # (B, N, D)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.BoolTensor:
        """Boolean mask ``(batch, seq, hidden)`` of the ``<image>`` positions; checks it matches the features."""
        image_token_id = self._require_image_token_id()
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == image_token_id
        n_tokens, n_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"Image features and image tokens do not match: tokens: {n_tokens}, features: {n_features} "
                f"({image_features.shape[0]} image(s) x {image_features.shape[1]} tokens). Each image needs exactly "
                f"config.num_image_tokens={self.config.num_image_tokens} <image> tokens (id {image_token_id}); build "
                f"inputs with CadCoderProcessor and resize images to config.image_size={self.config.image_size}."
            )
        return mask.unsqueeze(-1).expand_as(inputs_embeds)

    def _require_image_token_id(self) -> int:
        if self.config.image_token_id is None:
            raise ValueError(
                "config.image_token_id is not set; add '<image>' to the tokenizer (CadCoderProcessor does it) and set "
                "model.config.image_token_id = processor.image_token_id."
            )
        return self.config.image_token_id

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CadCoderCausalLMOutputWithPast:
        """Run the model.

        Args:
            input_ids: ``(batch, seq)`` token ids with ``config.num_image_tokens`` ``<image>`` tokens per image.
            pixel_values: ``(batch, num_channels, H, W)``; needed whenever ``input_ids`` hold ``<image>`` tokens that
                are not in the cache yet.
            attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.
            position_ids: optional ``(batch, seq)``; ``generate()`` derives them from the attention mask.
            cache: KV cache from a previous call.
            inputs_embeds: alternative to ``input_ids``.
            labels: ``(batch, seq)`` targets, ``-100`` where no loss is wanted (image, prompt, padding). They are
                shifted inside the loss, so ``labels`` are aligned with ``input_ids``.
            use_cache: return a cache for incremental decoding; default off when ``labels`` are given (a loss
                needs no cache, and transformers reads packed ``position_ids`` only when there is none).
            logits_to_keep: compute logits only for the last N positions (0 = all).

        Returns:
            ``CadCoderCausalLMOutputWithPast`` with ``loss`` (when ``labels``), ``logits``, ``cache``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        loss_kwargs = {k: kwargs.pop(k) for k in _LOSS_KWARGS if k in kwargs}
        if labels is not None and use_cache is None:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)

        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)
        elif input_ids is not None and self.config.image_token_id is not None:
            prefill = cache is None or cache.get_seq_length() == 0
            if prefill and bool((input_ids == self.config.image_token_id).any()):
                raise ValueError(
                    "input_ids contain <image> tokens but pixel_values is None; pass the pixel_values the processor "
                    "returned together with input_ids."
                )

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        logits = outputs.logits  # (B, T, V)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **loss_kwargs
            )
        return CadCoderCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


def _vision_feature_dim(vision_tower: nn.Module) -> int:
    """Channels of the encoder's last feature map (timm ``num_features``, else ``config.hidden_size``)."""
    timm_model = getattr(vision_tower, "timm_model", None)
    if timm_model is not None:
        return int(timm_model.num_features)
    return int(vision_tower.config.hidden_size)


CadCoderForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
if not __package__:  # imported as an installed module (not as Hub remote code): make the Auto classes see it
    from transformers import AutoModelForImageTextToText

    for _auto in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        _auto.register(CadCoderConfig, CadCoderForConditionalGeneration, exist_ok=True)
