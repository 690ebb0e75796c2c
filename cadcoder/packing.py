"""Sequence packing: several (image, program) examples per row, without padding them to the longest one.

Random batches of synthetic programs waste more than half their tokens on padding (one long multi-body part
sets the width of the batch). Packing puts the examples of a batch into as few rows of ``capacity`` tokens as
first-fit-decreasing allows. Each example keeps its own ``<image>`` tokens and restarts its ``position_ids`` at
0; with no ``attention_mask`` in the batch, transformers reads the position restarts as sequence boundaries
and builds a block-causal mask, so no example attends to another (sdpa, eager and flash attention alike).
The loss per token is the same as in the padded batch; only the padding compute goes away.

Images are reordered to follow the ``<image>`` tokens row by row, as ``masked_scatter`` fills them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group example indices into bins whose total length is at most ``capacity`` (longest examples first).

    Raises:
        ValueError: an example is longer than ``capacity`` on its own.
    """
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"cannot pack a {max(too_long)}-token example into rows of {capacity} tokens; raise max_length")
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_batch(batch: Mapping[str, torch.Tensor], capacity: int | None, pad_token_id: int) -> dict[str, Any]:
    """Pack a right-padded training batch into rows of at most ``capacity`` tokens.

    Args:
        batch: ``input_ids``, ``attention_mask``, ``labels`` ``(B, T)`` and ``pixel_values`` ``(B, C, H, W)``
            (one image per row), as :class:`~processing_cadcoder.CadCoderProcessor` returns them.
        capacity: tokens per packed row; None = the longest example (then only shorter examples share rows).
        pad_token_id: id written into the unused tail of a row (its labels are ``-100``).

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` ``(R, T')`` with ``R <= B`` and ``T'`` the fullest row, and
        ``pixel_values`` reordered to match. There is no ``attention_mask``: it would hide the packing.
    """
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    bins = first_fit_decreasing(lengths, capacity if capacity is not None else max(lengths))
    width = max(sum(lengths[i] for i in members) for members in bins)
    rows = len(bins)
    input_ids = torch.full((rows, width), pad_token_id, dtype=batch["input_ids"].dtype)
    labels = torch.full((rows, width), -100, dtype=batch["labels"].dtype)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    for r, members in enumerate(bins):
        start = 0
        for i in members:
            n = lengths[i]
            input_ids[r, start:start + n] = batch["input_ids"][i, :n]
            labels[r, start:start + n] = batch["labels"][i, :n]
            position_ids[r, start:start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # the padding tail is a sequence of its own
    order = [i for members in bins for i in members]
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "pixel_values": batch["pixel_values"][order]}
