"""CadCoderImageProcessor and CadCoderProcessor: inputs, prompt format, padding, labels, post-processing, errors."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType
from transformers.utils import logging as transformers_logging

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


def test_a_decompression_bomb_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    from PIL import Image

    from processing_cadcoder import to_rgb_image

    path = tmp_path / "bomb.png"
    Image.new("L", (200, 200), 255).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40,000 pixels is now over twice the limit
    with pytest.raises(ValueError, match="too large to decode safely.*downscale it"):
        to_rgb_image(path)


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
    with pytest.raises(ValueError, match="unexpected argument.*pad_to_multiple_of.*it accepts images"):
        processor(images=sample_images[:1], pad_to_multiple_of=8)


# ------------------------------------------------------------------------- HF-style processor arguments
@pytest.mark.parametrize("padding", [None, True, "longest", PaddingStrategy.LONGEST])
def test_padding_longest_is_the_default_training_batch(processor, sample_images, sample_programs, padding):
    programs = [sample_programs[0], sample_programs[1][:40]]
    reference = processor(images=sample_images[:2], text=programs)
    batch = processor(images=sample_images[:2], text=programs, padding=padding)
    for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
        torch.testing.assert_close(batch[key], reference[key])


def test_padding_max_length_pads_right_for_training_and_left_for_generation(processor, sample_images,
                                                                            sample_programs):  # fmt: skip
    programs = [sample_programs[0][:30], sample_programs[1][:40]]
    longest = processor(images=sample_images[:2], text=programs)
    width = longest["input_ids"].shape[1] + 7
    batch = processor(images=sample_images[:2], text=programs, padding="max_length", max_length=width)
    assert batch["input_ids"].shape == (2, width)
    n = longest["input_ids"].shape[1]
    torch.testing.assert_close(batch["input_ids"][:, :n], longest["input_ids"])
    torch.testing.assert_close(batch["labels"][:, :n], longest["labels"])
    assert not batch["attention_mask"][:, n:].any() and (batch["labels"][:, n:] == -100).all()
    prompt = processor(images=sample_images[:2], padding=True, padding_side="left")
    assert prompt["input_ids"].tolist() == [processor.prompt_ids()] * 2
    padded = processor(images=sample_images[:2], padding="max_length", max_length=8)
    assert padded["input_ids"].shape == (2, 8)
    assert padded["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]] * 2  # left padded
    assert padded["input_ids"][0, 3:].tolist() == processor.prompt_ids()


def test_padding_false_gives_unpadded_rows(processor, sample_images, sample_programs):
    programs = [sample_programs[0][:30], sample_programs[1][:40]]
    padded = processor(images=sample_images[:2], text=programs, return_tensors=None)
    rows = processor(images=sample_images[:2], text=programs, padding=False, return_tensors=None)
    lengths = [len(row) for row in rows["input_ids"]]
    assert lengths[0] != lengths[1] and rows["attention_mask"] == [[1] * n for n in lengths]
    for i, n in enumerate(lengths):
        assert rows["input_ids"][i] == padded["input_ids"][i, :n].tolist()
        assert rows["labels"][i] == padded["labels"][i, :n].tolist()
    same = processor(images=sample_images[:2], padding="do_not_pad")  # generation prompts: equal lengths
    assert same["input_ids"].shape == (2, 5)
    with pytest.raises(ValueError, match="padding=True, or return_tensors=None"):
        processor(images=sample_images[:2], text=programs, padding=False)


def test_truncation_arguments(processor, sample_images, sample_programs):
    program = sample_programs[:1]
    full = processor(images=sample_images[:1], text=program)["input_ids"]
    for truncation in (True, "longest_first", "only_first", TruncationStrategy.LONGEST_FIRST):
        cut = processor(images=sample_images[:1], text=program, truncation=truncation, max_length=12)["input_ids"]
        torch.testing.assert_close(cut, full[:, :12])
    for truncation in (False, "do_not_truncate"):
        kept = processor(images=sample_images[:1], text=program, truncation=truncation, max_length=12)["input_ids"]
        torch.testing.assert_close(kept, full)  # max_length does not cut without truncation
    processor.tokenizer.model_max_length = 20
    assert processor(images=sample_images[:1], text=program, truncation=True)["input_ids"].shape == (1, 20)
    assert processor(images=sample_images[:1], text=program)["input_ids"].shape == full.shape  # None: no cut
    prompt = processor(images=sample_images[:1], truncation=True, max_length=5)  # the prompt is never cut
    assert prompt["input_ids"].tolist() == [processor.prompt_ids()]


@pytest.mark.parametrize("return_tensors", ["np", TensorType.NUMPY, None])
def test_return_tensors_numpy_and_none(processor, sample_images, sample_programs, return_tensors):
    batch = processor(images=sample_images[:2], text=sample_programs[:2], return_tensors=return_tensors)
    reference = processor(images=sample_images[:2], text=sample_programs[:2], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
        assert isinstance(batch[key], np.ndarray)
        np.testing.assert_array_equal(batch[key], reference[key].numpy())
    assert isinstance(processor(images=sample_images[:1], return_tensors=TensorType.PYTORCH)["input_ids"], torch.Tensor)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"return_tensors": "tf"}, "return_tensors='tf'.*pass 'pt'.*'np'.*None"),
        ({"return_tensors": "jax"}, "return_tensors='jax'.*pass 'pt'"),
        ({"return_tensors": TensorType.MLX}, "return_tensors='mlx'.*pass 'pt'"),
        ({"padding": "middle"}, "padding='middle'.*pass True, 'longest', 'max_length' or False"),
        ({"padding": "max_length"}, "padding='max_length' needs max_length"),
        ({"padding": "max_length", "max_length": 12, "truncation": False}, "truncation=True.*larger max_length"),
        ({"truncation": "only_second", "max_length": 12}, "one sequence.*truncation=True or False"),
        ({"truncation": True, "max_length": 5}, "no room for the program.*max_length > 5"),
        ({"padding_side": "left"}, "right padded.*padding_side='right'"),
        ({"padding_side": "center"}, "padding_side='center'.*'left' or 'right'"),
    ],
)
def test_training_arguments_it_cannot_honour_raise_with_the_fix(processor, sample_images, sample_programs, kwargs,
                                                                message):  # fmt: skip
    with pytest.raises(ValueError, match=message):
        processor(images=sample_images[:1], text=sample_programs[:1], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"padding_side": "right"}, "left padded.*generate.*padding_side='left'"),
        ({"max_length": 3}, "shorter than the 5-token generation prompt.*max_length >= 5"),
        ({"return_tensors": "tf"}, "pass 'pt'"),
    ],
)
def test_generation_arguments_it_cannot_honour_raise_with_the_fix(processor, sample_images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(images=sample_images[:1], **kwargs)


def test_positional_arguments_keep_their_order(processor, sample_images, sample_programs):
    positional = processor(sample_images[:1], sample_programs[:1], "np", 12)  # images, text, return_tensors, max_length
    keywords = processor(images=sample_images[:1], text=sample_programs[:1], return_tensors="np", max_length=12)
    np.testing.assert_array_equal(positional["input_ids"], keywords["input_ids"])
    assert positional["input_ids"].shape == (1, 12)


def test_truncation_without_any_length_names_max_length(processor, sample_images, sample_programs):
    processor.tokenizer.model_max_length = int(1e30)  # what tokenizers report when they know no limit
    with pytest.raises(ValueError, match="pass max_length"):
        processor(images=sample_images[:1], text=sample_programs[:1], truncation=True)


def test_image_processor_refuses_other_frameworks(image_processor):
    with pytest.raises(ValueError, match="pass 'pt'"):
        image_processor(np.zeros((8, 8), dtype=np.uint8), return_tensors="tf")


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


class _Records(logging.Handler):
    """Keeps the messages logged to the logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_auto_loading_uses_an_available_backend_without_a_fallback_warning(processor, tmp_path):
    from transformers import AutoImageProcessor, AutoProcessor

    processor.save_pretrained(tmp_path)
    transformers_logging.warning_once.cache_clear()  # a fallback warned earlier in the session would hide this one
    records = _Records()
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(records)
    try:
        loaded = [AutoImageProcessor.from_pretrained(tmp_path),
                  AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True).image_processor]
        loaded += [AutoImageProcessor.from_pretrained(tmp_path, backend=backend) for backend in ("pil", "torchvision")]
    finally:
        library_logger.removeHandler(records)
    assert [type(image_processor).__name__ for image_processor in loaded] == ["CadCoderImageProcessor"] * 4
    assert not [message for message in records.messages if "backend" in message], records.messages


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
