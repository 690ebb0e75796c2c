"""CadCoderImageProcessor and CadCoderProcessor: inputs, prompt format, padding, labels, post-processing, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from processing_cadcoder import GRAY_MEAN, GRAY_STD, CadCoderImageProcessor, CadCoderProcessor, post_process_program

WHITE = (1.0 - GRAY_MEAN[0]) / GRAY_STD[0]
BLACK = (0.0 - GRAY_MEAN[0]) / GRAY_STD[0]


@pytest.fixture(scope="module")
def image_processor():
    return CadCoderImageProcessor(size=64)


# ---------------------------------------------------------------------------------------------- image modes
def test_rgb_gray_and_palette_give_the_same_pixels(image_processor, sample_images):
    rgb = sample_images[0]
    outputs = [
        image_processor(image)["pixel_values"]
        for image in (rgb, rgb.convert("L"), rgb.convert("P"), np.asarray(rgb), torch.from_numpy(np.array(rgb)))
    ]
    assert outputs[0].shape == (1, 1, 64, 64) and outputs[0].dtype == torch.float32
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], atol=0.02, rtol=0)
    assert outputs[0].min() < WHITE - 1.0 and outputs[0].max() == pytest.approx(WHITE, abs=1e-3)


def test_rgba_is_composited_on_white(image_processor):
    array = np.zeros((32, 32, 4), dtype=np.uint8)  # black, fully transparent ...
    array[:16, :, 3] = 255  # ... except the top half, which is opaque black
    pixels = image_processor(Image.fromarray(array, mode="RGBA"))["pixel_values"][0, 0]
    assert pixels[:28].mean() < BLACK + 0.1  # the opaque half stays black
    assert pixels[36:].mean() == pytest.approx(WHITE, abs=1e-3)  # the transparent half becomes white


def test_sixteen_bit_grayscale(image_processor):
    array = np.full((40, 40), 65535, dtype=np.uint16)
    array[:, :20] = 0
    for image in (Image.fromarray(array).convert("I;16"), array):
        pixels = image_processor(image)["pixel_values"][0, 0]
        assert pixels[:, :28].mean() == pytest.approx(BLACK, abs=1e-2)
        assert pixels[:, 36:].mean() == pytest.approx(WHITE, abs=1e-2)


def test_array_layouts_and_batches(image_processor):
    gray = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    reference = image_processor(gray)["pixel_values"]
    for variant in (gray[..., None], gray[None], torch.from_numpy(gray)[None], gray.astype(np.float32) / 255):
        torch.testing.assert_close(image_processor(variant)["pixel_values"], reference, atol=1e-4, rtol=0)
    assert image_processor(np.stack([gray[None], gray[None]]))["pixel_values"].shape == (2, 1, 64, 64)
    assert image_processor([gray, gray, gray])["pixel_values"].shape == (3, 1, 64, 64)


def test_three_channel_output():
    processor = CadCoderImageProcessor(size=32, num_channels=3)
    assert processor(np.zeros((10, 10), dtype=np.uint8))["pixel_values"].shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Image.new("CMYK", (8, 8)), "mode 'CMYK'.*RGB"),
        (Image.new("F", (8, 8)), "mode 'F'"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "2 channels"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "5 channels"),
        (np.full((8, 8), 3.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((8, 8), dtype=np.int64), "dtype"),
        ([], "empty batch"),
        ("image.png", "unsupported image type"),
    ],
)
def test_bad_images_raise_clear_errors(image_processor, image, message):
    with pytest.raises(ValueError, match=message):
        image_processor(image)


# ------------------------------------------------------------------------------------------------ processor
@pytest.fixture
def processor(tiny_tokenizer):
    return CadCoderProcessor(CadCoderImageProcessor(size=64), copy.deepcopy(tiny_tokenizer), num_image_tokens=4)


def test_training_batch_is_right_padded_with_masked_labels(processor, sample_images, sample_programs):
    programs = [sample_programs[0], sample_programs[1][:40]]
    batch = processor(images=sample_images[:2], text=programs)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    prompt = processor.prompt_ids()
    assert len(prompt) == 5 and prompt[:4] == [processor.image_token_id] * 4
    tok = processor.tokenizer
    for row, program in enumerate(programs):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        assert ids[row, :5].tolist() == prompt
        assert (labels[row, :5] == -100).all() and (labels[row, n:] == -100).all()  # prompt and padding ignored
        supervised = labels[row, 5:n].tolist()
        assert supervised[-1] == tok.eos_token_id  # the model learns to stop
        assert tok.decode(supervised[:-1]) == program  # exactly the program is supervised
    assert int(mask[1].sum()) < int(mask[0].sum())


def test_generation_batch_is_prompt_only(processor, sample_images):
    batch = processor(images=sample_images)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    assert batch["input_ids"].shape == (4, 5) and batch["attention_mask"].all()
    assert batch["pixel_values"].shape == (4, 1, 64, 64)


def test_max_length_truncates_and_validates(processor, sample_images, sample_programs):
    batch = processor(images=sample_images[:1], text=sample_programs[:1], max_length=12)
    assert batch["input_ids"].shape == (1, 12)
    with pytest.raises(ValueError, match="max_length"):
        processor(images=sample_images[:1], text=sample_programs[:1], max_length=5)


def test_processor_errors(processor, sample_images, sample_programs):
    with pytest.raises(ValueError, match="2 image.*3 program"):
        processor(images=sample_images[:2], text=sample_programs[:3])
    with pytest.raises(ValueError, match="empty batch"):
        processor(images=[], text=[])
    with pytest.raises(ValueError, match="no images"):
        processor(images=None, text=sample_programs[:1])
    with pytest.raises(ValueError, match="unexpected"):
        processor(images=sample_images[:1], padding_side="left")


def test_image_token_is_added_when_missing(code_corpus):
    from cadcoder.tokenizer import train_code_tokenizer

    tokenizer = train_code_tokenizer(code_corpus[:50], vocab_size=300)
    assert "<image>" not in tokenizer.get_vocab()
    processor = CadCoderProcessor(CadCoderImageProcessor(size=32), tokenizer, num_image_tokens=1)
    assert processor.image_token_id == len(tokenizer) - 1
    assert tokenizer.decode([processor.image_token_id], skip_special_tokens=True) == ""


def test_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = CadCoderProcessor.from_pretrained(tmp_path)
    assert loaded.num_image_tokens == 4 and loaded.image_token_id == processor.image_token_id
    assert loaded.image_processor.size == 64 and loaded.image_processor.num_channels == 1
    assert loaded.prompt_ids() == processor.prompt_ids()


# --------------------------------------------------------------------------------------------- decoding
def test_batch_decode_drops_prompt_and_cleans(processor, sample_programs):
    program = sample_programs[0]
    ids = processor.prompt_ids() + processor.tokenizer(program)["input_ids"] + [processor.tokenizer.eos_token_id] * 3
    assert processor.batch_decode(torch.tensor([ids])) == [program.strip()]
    assert processor.decode(ids, clean=False).strip() == program.strip()


def test_post_process_cuts_truncated_tail_and_assigns_solid():
    text = (
        "\n  import cadquery as cq\nwp = cq.Workplane('XY')\nsolid0=wp.box(1, 2, 3)\n"
        "solid1=wp.circle(0.5).extrude(1)\nsolid2=wp.rect(1, 2).extrude(0."
    )
    cleaned = post_process_program(text)
    assert cleaned.startswith("import cadquery as cq")
    assert "solid2" not in cleaned  # truncated statement removed
    assert cleaned.endswith("solid = solid1")  # solid assigned from the last complete solid


def test_post_process_keeps_complete_programs(sample_programs):
    assert post_process_program(sample_programs[0] + "\n\n") == sample_programs[0].strip()
    assert post_process_program("   \n") == ""
    assert post_process_program("x = (1,\n") == ""  # nothing complete survives
    assert post_process_program("a = 1\nb = 2") == "a = 1\nb = 2"  # no solidN to assign from: unchanged


# ------------------------------------------------------------------------------------------------ tokenizer
def test_train_code_tokenizer_round_trips_and_saves(code_corpus, tmp_path):
    from transformers import AutoTokenizer, CodeGenTokenizer

    from cadcoder.tokenizer import train_code_tokenizer

    tokenizer = train_code_tokenizer(code_corpus, vocab_size=400)
    assert isinstance(tokenizer, CodeGenTokenizer) and len(tokenizer) == 400
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == tokenizer.unk_token == "<|endoftext|>"
    program = code_corpus[0] + "  # unseen: ünïcødé ✓\n"
    ids = tokenizer(program, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == program  # byte-level: any text round-trips
    corpus_ids = tokenizer(code_corpus[0], add_special_tokens=False)["input_ids"]
    assert len(corpus_ids) < 0.6 * len(code_corpus[0].encode())  # merges learned from the corpus compress it
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(program, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize(("texts", "vocab_size", "message"), [([], 512, "no non-empty texts"), (["a"], 100, ">= 258")])
def test_train_code_tokenizer_validates(texts, vocab_size, message):
    from cadcoder.tokenizer import train_code_tokenizer

    with pytest.raises(ValueError, match=message):
        train_code_tokenizer(texts, vocab_size=vocab_size)
