"""Train a small byte-level BPE code tokenizer offline and wrap it as a ``CodeGenTokenizer``.

The real ``Salesforce/codegen-350M-mono`` tokenizer lives on the Hub; on machines without network
access (tests, CI, the quickstart) we train a tiny one with `tokenizers` on the programs themselves.
The result behaves like CodeGen's: byte-level BPE, ``<|endoftext|>`` as bos/eos/unk/pad.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CodeGenTokenizer

ENDOFTEXT = "<|endoftext|>"

__all__ = ["ENDOFTEXT", "train_code_tokenizer"]


def train_code_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    min_frequency: int = 2,
    model_max_length: int = 2048,
) -> CodeGenTokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` and return it as a ``CodeGenTokenizer``.

    Args:
        texts: Training corpus, e.g. CadQuery programs. Consumed once.
        vocab_size: Target vocabulary size, including the 256 byte symbols and ``<|endoftext|>``.
        min_frequency: Minimum pair frequency for a merge.
        model_max_length: Stored as the tokenizer's ``model_max_length``.

    Returns:
        A ``CodeGenTokenizer`` with ``<|endoftext|>`` as bos, eos, unk and pad token (pad == eos, as in CodeGen:
        mask padding in labels by ``attention_mask``, never by id).

    Raises:
        ValueError: if ``texts`` is empty or ``vocab_size`` is too small to hold the byte alphabet.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_code_tokenizer got no non-empty texts; pass a list of programs to train on.")
    if vocab_size < 258:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 257 symbols; use >= 258."
        )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    vocab = bpe.get_vocab()
    # CodeGenTokenizer wants merges as (left, right) tuples, in rank order.
    merges = _merges_from_json(bpe)
    return CodeGenTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=ENDOFTEXT,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        model_max_length=model_max_length,
    )


def _merges_from_json(bpe: Tokenizer) -> list[tuple[str, str]]:
    """Read the merge list, in rank order, from the serialised tokenizer (stable across `tokenizers` versions)."""
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
