"""CadCoderForConditionalGeneration: forward/loss, generation consistency, training signal, errors, loading."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from modeling_cadcoder import CadCoderForConditionalGeneration

GEN = dict(max_new_tokens=12, do_sample=False)


def _generate(model, inputs, **kwargs):
    out = model.generate(**inputs, **GEN, output_scores=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.scores, dim=1)  # (B, T), (B, new, V)


def _train_batch(processor, sample_images, sample_programs):
    return processor(images=sample_images[:2], text=[sample_programs[0], sample_programs[1][:60]])


# ------------------------------------------------------------------------------------------ forward / loss
@pytest.mark.parametrize("text_model_type", ["codegen", "gpt2"])
@pytest.mark.parametrize("visual_tokens", ["grid", "pooled"])
def test_forward_returns_loss_logits_cache(make_tiny_cadcoder, sample_images, sample_programs, text_model_type,
                                           visual_tokens):  # fmt: skip
    model, processor = make_tiny_cadcoder(text_model_type=text_model_type, visual_tokens=visual_tokens)
    assert processor.num_image_tokens == (16 if visual_tokens == "grid" else 1)
    batch = _train_batch(processor, sample_images, sample_programs)
    out = model(**batch, use_cache=True)
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert out.cache is not None and out.cache.get_seq_length() == batch["input_ids"].shape[1]
    assert out.image_hidden_states.shape == (2, processor.num_image_tokens, model.config.text_config.hidden_size)
    # The loss is the mean next-token cross-entropy over supervised positions only (labels != -100).
    labels = batch["labels"]
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert torch.isfinite(out.loss)


def test_loss_ignores_padding(make_tiny_cadcoder, sample_images, sample_programs):
    model, processor = make_tiny_cadcoder()
    short = sample_programs[1][:60]
    alone = model(**processor(images=sample_images[1:2], text=[short])).loss
    padded = processor(images=sample_images[:2], text=[sample_programs[0], short])
    logits = model(**padded).logits[1:2]
    labels = padded["labels"][1:2]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, alone, rtol=1e-4, atol=1e-5)


def test_image_changes_the_logits(tiny_cadcoder, sample_images):
    model, processor = tiny_cadcoder
    with torch.no_grad():
        a = model(**processor(images=sample_images[0])).logits[:, -1]
        b = model(**processor(images=sample_images[3])).logits[:, -1]
    assert not torch.allclose(a, b, atol=1e-4)


# -------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("visual_tokens", ["grid", "pooled"])
def test_kv_cache_generation_equals_no_cache(make_tiny_cadcoder, sample_images, visual_tokens):
    model, processor = make_tiny_cadcoder(visual_tokens=visual_tokens)
    inputs = processor(images=sample_images[:2])
    cached, cached_scores = _generate(model, inputs, use_cache=True)
    plain, plain_scores = _generate(model, inputs, use_cache=False)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_scores, plain_scores, atol=1e-4, rtol=1e-4)


def test_image_is_encoded_once_with_cache(make_tiny_cadcoder, sample_images):
    model, processor = make_tiny_cadcoder()
    calls = []
    model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    model.generate(**processor(images=sample_images[:2]), **GEN)
    assert len(calls) == 1


@pytest.mark.parametrize("text_model_type", ["codegen", "gpt2"])
def test_batched_left_padded_generation_equals_one_by_one(make_tiny_cadcoder, sample_images, text_model_type):
    model, processor = make_tiny_cadcoder(text_model_type=text_model_type)
    pixel_values = processor(images=sample_images)["pixel_values"]
    # Rows continue from program prefixes of different lengths, so the batch needs real left padding.
    prefix = processor.tokenizer("import cadquery as cq\nwp", add_special_tokens=False)["input_ids"]
    rows = [processor.prompt_ids() + prefix[: 2 * i] for i in range(len(sample_images))]
    width, pad = max(map(len, rows)), processor.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    assert attention_mask[0].sum() < width  # the first row really is padded
    batched, batched_scores = _generate(
        model, {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
    )
    for i, row in enumerate(rows):
        single_inputs = {"input_ids": torch.tensor([row]), "attention_mask": torch.ones(1, len(row), dtype=torch.long),
                         "pixel_values": pixel_values[i : i + 1]}  # fmt: skip
        single, single_scores = _generate(model, single_inputs)
        new_tokens = single[0, len(row) :]
        assert torch.equal(batched[i, width : width + len(new_tokens)], new_tokens)
        torch.testing.assert_close(
            batched_scores[i, : len(new_tokens)], single_scores[0, : len(new_tokens)], atol=1e-4, rtol=1e-4
        )


def test_greedy_generation_can_follow_a_learned_program(make_tiny_cadcoder, sample_images, sample_programs):
    """After overfitting one pair, generate + batch_decode returns exactly that program (the full loop works)."""
    model, processor = make_tiny_cadcoder(image_size=64)
    program = "import cadquery as cq\nsolid0=cq.Workplane('XY').box(1, 2, 3)\nsolid=solid0\n"
    batch = processor(images=sample_images[:1], text=[program])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    ids = model.generate(**processor(images=sample_images[:1]), max_new_tokens=64)
    assert processor.batch_decode(ids) == [program.strip()]


# ---------------------------------------------------------------------------------------------- training
def test_loss_falls_and_gradients_reach_every_part(make_tiny_cadcoder, sample_images, sample_programs):
    model, processor = make_tiny_cadcoder()
    model.train()
    batch = _train_batch(processor, sample_images, sample_programs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        if step == 0:
            grads = {
                "vision": model.vision_tower.timm_model.conv1.weight.grad,
                "projector": model.multi_modal_projector.linear_1.weight.grad,
                "language": model.get_input_embeddings().weight.grad,
                "language_block": next(model.language_model.base_model.h[0].parameters()).grad,
            }
            for part, grad in grads.items():
                assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {part}"
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_activation_checkpointing_gives_same_loss_and_grads(make_tiny_cadcoder, sample_images, sample_programs):
    model, processor = make_tiny_cadcoder()
    model.train()
    batch = _train_batch(processor, sample_images, sample_programs)
    reference = model(**batch).loss
    reference.backward()
    ref_grad = model.multi_modal_projector.linear_1.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.language_model.base_model.h[0].gradient_checkpointing
    assert model.vision_tower.timm_model.grad_checkpointing
    loss = model(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(model.multi_modal_projector.linear_1.weight.grad, ref_grad, rtol=1e-4, atol=1e-6)
    model.activation_checkpointing_disable()


def test_freeze_parts_for_staged_training(make_tiny_cadcoder):
    model, _ = make_tiny_cadcoder()
    counts = model.set_trainable(vision=False, projector=True, language=False)
    assert counts["vision"] == 0 and counts["language"] == 0 and counts["projector"] > 0
    model.train()
    assert not model.vision_tower.training and model.multi_modal_projector.training  # frozen BN statistics
    counts = model.freeze(vision=False)
    assert all(n > 0 for n in counts.values())
    model.train()
    assert model.vision_tower.training


def test_resize_token_embeddings(make_tiny_cadcoder, sample_images, sample_programs):
    model, processor = make_tiny_cadcoder(text_model_type="gpt2")
    old = model.config.text_config.vocab_size
    processor.tokenizer.add_tokens(["<new_a>", "<new_b>"])
    model.resize_token_embeddings(len(processor.tokenizer))
    assert model.config.text_config.vocab_size == old + 2
    out = model(**_train_batch(processor, sample_images, sample_programs))
    assert out.logits.shape[-1] == old + 2 and torch.isfinite(out.loss)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


# ----------------------------------------------------------------------------------------------- errors
def test_image_token_count_mismatch_raises(tiny_cadcoder, sample_images):
    model, processor = tiny_cadcoder
    inputs = processor(images=sample_images[:2])
    inputs["input_ids"] = inputs["input_ids"][:, 1:]  # one placeholder fewer per image
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match=r"do not match: tokens: 30, features: 32.*num_image_tokens=16"):
        model(**inputs)


def test_missing_pixel_values_and_bad_shapes_raise(tiny_cadcoder, sample_images):
    model, processor = tiny_cadcoder
    inputs = processor(images=sample_images[:1])
    with pytest.raises(ValueError, match="pixel_values is None"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 1"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(pixel_values=inputs["pixel_values"])


def test_unset_image_token_id_raises(make_tiny_cadcoder, sample_images):
    model, processor = make_tiny_cadcoder()
    model.config.image_token_id = None
    with pytest.raises(ValueError, match="image_token_id is not set"):
        model(**processor(images=sample_images[:1]))


# ----------------------------------------------------------------------------------------------- loading
def test_save_load_bfloat16_and_attention_backends(make_tiny_cadcoder, sample_images, tmp_path):
    model, processor = make_tiny_cadcoder()
    model.save_pretrained(tmp_path)
    inputs = processor(images=sample_images[:2])
    with torch.no_grad():
        reference = model(**inputs).logits
        for attn in ("sdpa", "eager"):
            loaded = CadCoderForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=attn)
            assert loaded.config.text_config._attn_implementation == attn
            torch.testing.assert_close(loaded(**inputs).logits, reference, atol=1e-4, rtol=1e-4)
        bf16 = CadCoderForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
        assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
        logits = bf16(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert (logits.float().argmax(-1)[:, -1] == reference.argmax(-1)[:, -1]).float().mean() >= 0.5
    ids = bf16.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
    assert ids.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_build_from_pretrained_components_adapts_rgb_stem(tmp_path, tiny_tokenizer, sample_images, sample_programs):
    """Build from a local timm checkpoint (3-channel stem) and a local tiny CodeGen, as the Hub ids would."""
    from transformers import AutoModelForCausalLM, TimmWrapperConfig, TimmWrapperModel

    from cadcoder.factory import build_from_pretrained_components, text_config_for

    torch.manual_seed(0)
    vision_dir, text_dir = tmp_path / "vision", tmp_path / "text"
    rgb = TimmWrapperModel(TimmWrapperConfig(architecture="resnet18", num_labels=0))
    rgb.save_pretrained(vision_dir)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    lm = AutoModelForCausalLM.from_config(text_config_for(tokenizer, "codegen", n_positions=256))
    lm.save_pretrained(text_dir)
    # A tokenizer that lacks <image>: it gets added, and the LM is resized to hold it.
    from cadcoder.tokenizer import train_code_tokenizer

    fresh_tokenizer = train_code_tokenizer(sample_programs * 5, vocab_size=len(tokenizer) - 1)
    model = build_from_pretrained_components(
        vision=vision_dir, text=str(text_dir), tokenizer=fresh_tokenizer, image_size=64, visual_tokens="grid"
    )
    tensors = list(model.parameters()) + list(model.buffers())
    assert {t.device.type for t in tensors} == {"cpu"} and {p.dtype for p in model.parameters()} == {torch.float32}
    stem = model.vision_tower.timm_model.conv1.weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem, rgb.timm_model.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.vision_tower.timm_model.layer4[1].conv2.weight,
                               rgb.timm_model.layer4[1].conv2.weight)  # fmt: skip
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] >= len(fresh_tokenizer) and model.config.image_token_id == len(fresh_tokenizer) - 1
    torch.testing.assert_close(emb[:10], lm.get_input_embeddings().weight[:10])
    assert model.generation_config.eos_token_id == fresh_tokenizer.eos_token_id
    from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

    processor = CadCoderProcessor(CadCoderImageProcessor(size=64), fresh_tokenizer, model.config.num_image_tokens)
    out = model(**processor(images=sample_images[:1], text=sample_programs[:1]))
    assert torch.isfinite(out.loss)
    # timm's own folder format (what the Hub's timm/* repos hold), loaded in bfloat16.
    from timm.models import save_for_hf

    save_for_hf(rgb.timm_model, tmp_path / "timm_native", safe_serialization=True)
    bf16 = build_from_pretrained_components(
        vision=tmp_path / "timm_native", text=text_dir, image_size=64, dtype=torch.bfloat16
    )
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(bf16.vision_tower.timm_model.conv1.weight.float(), stem, atol=2e-2, rtol=1e-2)
