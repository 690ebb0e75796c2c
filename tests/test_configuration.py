"""CadCoderConfig: defaults, sub-config forms, serialisation and validation."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, CodeGenConfig, GPT2Config, TimmWrapperConfig

from configuration_cadcoder import CODEGEN_350M_MONO_ARCH, CadCoderConfig, timm_vision_config


def test_default_is_resnet18_gray_plus_codegen_350m():
    config = CadCoderConfig()
    assert config.model_type == "cadcoder"
    assert isinstance(config.vision_config, TimmWrapperConfig)
    assert config.vision_config.architecture == "resnet18"
    assert config.vision_config.model_args["in_chans"] == 1
    assert config.vision_config.num_labels == 0
    assert isinstance(config.text_config, CodeGenConfig)
    for key in ("n_embd", "n_layer", "n_head", "rotary_dim", "vocab_size", "n_positions"):
        assert getattr(config.text_config, key) == CODEGEN_350M_MONO_ARCH[key], key
    assert config.visual_tokens == "grid"
    assert config.tie_word_embeddings is False


@pytest.mark.parametrize(
    ("image_size", "visual_tokens", "expected"),
    [(224, "grid", 49), (448, "grid", 196), (128, "grid", 16), (448, "pooled", 1), (100, "grid", 16)],
)
def test_num_image_tokens(image_size, visual_tokens, expected):
    assert CadCoderConfig(image_size=image_size, visual_tokens=visual_tokens).num_image_tokens == expected


def test_sub_configs_accept_dicts_and_objects():
    from_dict = CadCoderConfig(
        text_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2},
        vision_config={"model_type": "timm_wrapper", "architecture": "resnet10t", "model_args": {"in_chans": 1}},
    )
    assert isinstance(from_dict.text_config, GPT2Config) and from_dict.text_config.n_layer == 2
    assert from_dict.vision_config.architecture == "resnet10t"
    assert from_dict.vision_config.num_labels == 0  # no dummy ImageNet labels written to config.json
    assert from_dict.tie_word_embeddings is True  # follows GPT-2

    from_objects = CadCoderConfig(
        text_config=GPT2Config(n_layer=3, n_embd=32, n_head=2),
        vision_config=TimmWrapperConfig(architecture="resnet18", model_args={"in_chans": 1}, num_labels=0),
    )
    assert from_objects.text_config.n_layer == 3


def test_num_channels_is_propagated_to_the_encoder():
    config = CadCoderConfig(num_channels=3)
    assert config.vision_config.model_args["in_chans"] == 3


def test_save_and_reload_round_trip(tmp_path):
    config = CadCoderConfig(
        text_config={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 300},
        visual_tokens="pooled",
        image_size=448,
        image_token_id=299,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is CadCoderConfig
    assert loaded.visual_tokens == "pooled" and loaded.image_size == 448 and loaded.image_token_id == 299
    assert isinstance(loaded.text_config, GPT2Config) and loaded.text_config.vocab_size == 300
    assert isinstance(loaded.vision_config, TimmWrapperConfig)
    assert loaded.vision_config.model_args == {"in_chans": 1} and loaded.vision_config.num_labels == 0
    assert loaded.num_image_tokens == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"visual_tokens": "patches"}, "visual_tokens"), ({"image_size": 16}, "image_size")],
)
def test_invalid_values_raise_with_a_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CadCoderConfig(**kwargs)


def test_timm_vision_config_is_the_default_encoder():
    default = CadCoderConfig().vision_config
    assert TimmWrapperConfig(**timm_vision_config()).to_dict() == default.to_dict()
    custom = timm_vision_config("resnet10t", num_channels=3, model_args={"in_chans": 1, "drop_rate": 0.1})
    assert custom["model_args"] == {"in_chans": 3, "drop_rate": 0.1}  # in_chans always follows num_channels
    assert custom["num_labels"] == 0 and custom["do_pooling"] is False
    assert CadCoderConfig(vision_config=custom, num_channels=3).vision_config.architecture == "resnet10t"
