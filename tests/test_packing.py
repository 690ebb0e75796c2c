"""Sequence packing (cadcoder/packing.py): fewer, fuller rows, and exactly the loss of the padded batch."""

from __future__ import annotations

import random

import pytest
import torch

from cadcoder.data import CadCoderCollator
from cadcoder.packing import first_fit_decreasing
from tests.conftest import synthetic_program


def test_first_fit_decreasing_respects_capacity_and_keeps_every_example():
    lengths = [50, 300, 120, 80, 400, 30, 200, 10]
    bins = first_fit_decreasing(lengths, capacity=420)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 420 for members in bins)
    assert len(bins) == 3  # 1190 tokens need at least 3 rows of 420
    with pytest.raises(ValueError, match="raise max_length"):
        first_fit_decreasing([500], capacity=420)


@pytest.fixture(scope="module")
def mixed_rows(sample_images):
    """Eight (image, program) rows with programs of very different lengths, like a random training batch."""
    rng = random.Random(7)
    programs = [synthetic_program(rng, n_sketches=1 + (i % 3) * 2) for i in range(8)]
    return [{"image": sample_images[i % 4], "cadquery": p} for i, p in enumerate(programs)]


@pytest.mark.parametrize("text_model_type", ["codegen", "gpt2"])
def test_packed_batch_has_the_padded_batch_loss(make_tiny_cadcoder, mixed_rows, text_model_type):
    model, processor = make_tiny_cadcoder(text_model_type=text_model_type, n_positions=2048)
    padded = CadCoderCollator(processor)(mixed_rows)
    capacity = 2 * int(padded["attention_mask"].sum(1).max())
    packed = CadCoderCollator(processor, max_length=capacity, packing=True)(mixed_rows)

    assert "attention_mask" not in packed
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())
    assert packed["pixel_values"].shape == padded["pixel_values"].shape

    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed).loss
        # Control: the same rows with one mask over each whole row let examples see each other.
        leaky = model(**packed, attention_mask=torch.ones_like(packed["input_ids"])).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-4, atol=1e-5)
    assert abs(float(leaky) - float(loss_padded)) > 1e-4
