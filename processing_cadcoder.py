"""CadCoder pre- and post-processing: images -> ``pixel_values``, programs <-> tokens, generations -> clean code.

``CadCoderProcessor`` owns the ONE prompt format shared by training and inference::

    <image> x num_image_tokens, <|endoftext|> (bos), program tokens ..., <|endoftext|> (eos)
    '-------------- prompt (never supervised) ---------'  '---- supervised targets -----'

This file is part of the Hub face: it imports only torch/transformers/numpy/PIL and ships as remote code.
"""

from __future__ import annotations

import ast
import io
import os
import re
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_transforms import normalize
from transformers.image_utils import ChannelDimension
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, TensorType

__all__ = ["CadCoderImageProcessor", "CadCoderProcessor", "post_process_program", "to_rgb_image"]

IMAGE_TOKEN = "<image>"
# Mean/std of ImageNet averaged over RGB: the 1-channel stem is the sum of the RGB filters, so feeding it grey
# values normalised this way reproduces what the RGB network saw for grey pixels.
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SUPPORTED_MODES = ("RGB", "RGBA", "LA", "L", "P", "I;16", "I;16B", "I;16L", "I")
_MODES_HINT = "pass an RGB, RGBA, L, P or I;16 image (e.g. image.convert('RGB'))"

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------- images
def _pil_to_float(image: Image.Image) -> np.ndarray:
    """PIL image -> ``(H, W, C)`` float32 in [0, 1] with C in {1, 3}; transparency composited on white."""
    mode = image.mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"image has mode {mode!r}; {_MODES_HINT}.")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode.startswith("I"):  # 16/32-bit greyscale
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        return np.clip(array / peak, 0.0, 1.0)[..., None]
    array = np.asarray(image, dtype=np.float32) / 255.0
    return _composite_alpha(array[..., None] if array.ndim == 2 else array)


def _composite_alpha(array: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` with C in {1, 2, 3, 4}; alpha (C = 2 or 4) is composited on a white background."""
    channels = array.shape[-1]
    if channels in (2, 4):
        color, alpha = array[..., :-1], array[..., -1:]
        return color * alpha + (1.0 - alpha)
    return array


def _array_to_float(array: np.ndarray, kind: str) -> np.ndarray:
    """numpy/torch pixels -> ``(H, W, C)`` float32 in [0, 1]; accepts HW, HWC and CHW with C in {1, 3, 4}."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(
            f"{kind} image has shape {tuple(array.shape)}; pass (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4 "
            "(or a 4-D batch)."
        )
    if array.shape[-1] not in (1, 2, 3, 4) and array.shape[0] in (1, 2, 3, 4):  # channels-last wins a tie
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(
            f"{kind} image has {channels} channels (shape {tuple(array.shape)}); pass 1 (grey), 3 (RGB) or 4 (RGBA)."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{kind} image is empty (shape {tuple(array.shape)}); pass a non-empty image.")
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if out.size and (float(out.min()) < -1e-3 or float(out.max()) > 1.0 + 1e-3):
            raise ValueError(
                f"float {kind} image has values in [{out.min():.3g}, {out.max():.3g}]; float pixels must lie in "
                "[0, 1] (pass uint8 arrays for 0..255, or divide by 255)."
            )
        out = np.clip(out, 0.0, 1.0)
    else:
        raise ValueError(f"{kind} image has dtype {array.dtype}; pass uint8, uint16, bool or float in [0, 1].")
    if channels == 4:
        out = _composite_alpha(out)
    return out


def _to_float_image(image: ImageLike) -> np.ndarray:
    """Any supported single image -> ``(H, W, C)`` float32 in [0, 1], C in {1, 3}."""
    if isinstance(image, Image.Image):
        return _pil_to_float(image)
    if isinstance(image, torch.Tensor):
        return _array_to_float(image.detach().cpu().float().numpy() if image.dtype == torch.bfloat16
                               else image.detach().cpu().numpy(), "torch")  # fmt: skip
    if isinstance(image, np.ndarray):
        return _array_to_float(image, "numpy")
    raise ValueError(
        f"unsupported image type {type(image).__name__}; pass a PIL.Image, a numpy array or a torch tensor."
    )


def to_rgb_image(image: ImageLike | str | bytes | dict | Any) -> Image.Image:
    """Decode any supported image to an 8-bit RGB ``PIL.Image`` with transparency composited on white.

    The one image decoder of the package: the processor, the metrics, the data loader and inference all
    read images through it. Accepts a PIL image (the modes of :data:`SUPPORTED_MODES`), a numpy array or
    torch tensor (HW, HWC or CHW; uint8, uint16, bool or float in [0, 1]), a file path, encoded bytes, or a
    ``datasets`` image dict ``{"bytes": ..., "path": ...}``.

    Raises:
        FileNotFoundError: a path that does not exist or is a folder.
        ValueError: anything that cannot be decoded; the message says what to pass instead.
    """
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
        if image is None:
            raise ValueError("image dict has neither 'bytes' nor 'path'; pass an encoded image or a file path.")
    if isinstance(image, (bytes, bytearray)):
        image = _open_pil(io.BytesIO(image), "encoded bytes")
    elif isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise FileNotFoundError(f"image file not found: {path}; pass the path of a PNG or JPEG image of a part")
        if os.path.isdir(path):
            raise FileNotFoundError(f"{path} is a folder, not an image file; pass the image files inside it")
        image = _open_pil(path, path)
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return image
    array = _to_float_image(image)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.rint(array * 255.0).astype(np.uint8), mode="RGB")


def _open_pil(source: Any, name: str) -> Image.Image:
    """Open and fully load an image (so a file is closed again); unreadable input raises ``ValueError``."""
    try:
        with Image.open(source) as opened:
            opened.load()
            return opened.copy()
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{name} is too large to decode safely ({exc}); downscale it (the model sees "
                         "448x448 pixels) and pass it again") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{name} is not a readable image ({type(exc).__name__}: {exc}); pass a PNG or JPEG file") from None


def _as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """Normalise a single image, a list of images or a 4-D batch into a non-empty list of images."""
    if images is None:
        raise ValueError("no images given; pass a PIL image, an array, or a non-empty list of them.")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    else:
        images = list(images)
    if not images:
        raise ValueError("empty batch of images; pass at least one image.")
    return images


class CadCoderImageProcessor(BaseImageProcessor):
    """Turn renders of CAD parts into ``pixel_values`` for ``CadCoderForConditionalGeneration``.

    Steps: decode (PIL RGB/RGBA/LA/L/P/I;16, numpy or torch; alpha composited on white) -> grey (ITU-R 601 luma) or
    RGB -> resize to ``size`` x ``size`` (bicubic, antialiased) -> normalise with ``image_mean``/``image_std``.

    Args:
        size: output side in pixels (match ``CadCoderConfig.image_size``).
        num_channels: 1 (grayscale, the default) or 3.
        image_mean, image_std: per-channel normalisation; defaults depend on ``num_channels``.
        resample: PIL resampling filter used for resizing.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 224,
        num_channels: int = 1,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int = Image.Resampling.BICUBIC,
        **kwargs,
    ):
        if isinstance(size, dict):  # tolerate transformers-style {"height": h, "width": w}
            size = int(size.get("height", size.get("shortest_edge")))
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels={num_channels} is not supported; use 1 (grayscale) or 3 (RGB).")
        self.size = int(size)
        self.num_channels = int(num_channels)
        default_mean, default_std = (GRAY_MEAN, GRAY_STD) if num_channels == 1 else (RGB_MEAN, RGB_STD)
        self.image_mean = list(image_mean if image_mean is not None else default_mean)
        self.image_std = list(image_std if image_std is not None else default_std)
        if len(self.image_mean) != num_channels or len(self.image_std) != num_channels:
            raise ValueError(f"image_mean and image_std need {num_channels} value(s), one per channel.")
        self.resample = int(resample)
        super().__init__(**kwargs)

    def __call__(self, images: ImageLike | Sequence[ImageLike], **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess_one(self, image: ImageLike) -> np.ndarray:
        """One image -> normalised ``(num_channels, size, size)`` float32 array."""
        pixels = _to_float_image(image)  # (H, W, 1|3)
        if self.num_channels == 1 and pixels.shape[-1] == 3:
            pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
        elif self.num_channels == 3 and pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        # Resized in float, one "F" image per channel: transformers' `resize` goes through 8-bit PIL images.
        channels = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32), mode="F").resize(
                    (self.size, self.size), resample=self.resample
                ),
                dtype=np.float32,
            )
            for c in range(self.num_channels)
        ]
        out = np.clip(np.stack(channels, axis=0), 0.0, 1.0)  # (C, size, size); clip bicubic overshoot
        return normalize(out, self.image_mean, self.image_std, input_data_format=ChannelDimension.FIRST)

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt", **kwargs
    ) -> BatchFeature:
        """Preprocess one image or a batch.

        Returns:
            ``BatchFeature`` with ``pixel_values`` of shape ``(batch, num_channels, size, size)``.

        Raises:
            ValueError: unsupported mode/type/dtype/channel count, or an empty batch (the message says what to pass).
        """
        if kwargs:
            unknown = ", ".join(sorted(kwargs))
            raise ValueError(f"CadCoderImageProcessor got unexpected argument(s): {unknown}.")
        batch = np.stack([self.preprocess_one(image) for image in _as_image_list(images)])
        return BatchFeature(data={"pixel_values": batch}, tensor_type=_tensor_type(return_tensors))


# ------------------------------------------------------------------------------------------------ programs
_SOLID_NAME = re.compile(r"^solid\d*$")


def _cut_to_complete_statements(code: str) -> str:
    """Longest prefix made of whole lines that parses as Python (drops a truncated tail)."""
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end]).rstrip()
        if not candidate:
            continue
        try:
            ast.parse(candidate)
        except (SyntaxError, ValueError):
            continue
        return candidate
    return ""


def _ensure_solid(code: str) -> str:
    """Append ``solid = <last solidN>`` when the program never assigns ``solid`` (the evaluator reads ``solid``)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    assigned = [
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    ]
    if "solid" in assigned:
        return code
    candidates = [name for name in assigned if _SOLID_NAME.match(name)]
    if not candidates:
        return code
    return f"{code}\nsolid = {candidates[-1]}"


def post_process_program(text: str) -> str:
    """Clean one generated program: trim whitespace, cut back to the last complete statement, assign ``solid``.

    The result is plain source text; it is never executed here (run it through ``cadcoder.sandbox``).
    """
    code = text.replace("\r\n", "\n").strip()
    if not code:
        return ""
    code = _cut_to_complete_statements(code)
    return _ensure_solid(code).strip()


# ------------------------------------------------------------------------------------- processor arguments
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: "do_not_pad",
            "do_not_pad": "do_not_pad"}  # fmt: skip
_TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}
_NO_MODEL_MAX_LENGTH = 10**12  # tokenizers that know no limit report int(1e30)


def _option(value: Any) -> Any:
    """The plain value of a transformers enum option (``PaddingStrategy.LONGEST`` -> ``"longest"``)."""
    return value.value if isinstance(value, Enum) else value


def _tensor_type(return_tensors: str | TensorType | None) -> str | None:
    """``"pt"``, ``"np"`` or ``None``; other frameworks raise ``ValueError``."""
    value = _option(return_tensors)
    if value not in ("pt", "np", None):
        raise ValueError(
            f"return_tensors={value!r} is not supported; pass 'pt' (torch tensors), 'np' (numpy arrays) or None."
        )
    return value


def _padding_strategy(padding: bool | str | PaddingStrategy | None) -> str:
    """``"longest"``, ``"max_length"`` or ``"do_not_pad"`` (``None`` means ``"longest"``)."""
    return _choice("padding", padding, _PADDING, "longest", "pass True, 'longest', 'max_length' or False")


def _truncation(truncation: bool | str | TruncationStrategy | None) -> bool | None:
    """``True`` (cut), ``False`` (never cut) or ``None`` (cut when ``max_length`` is given)."""
    hint = "each example is one sequence (prompt + program); pass truncation=True or False"
    return _choice("truncation", truncation, _TRUNCATION, None, hint)


def _choice(name: str, option: Any, table: dict, default: Any, hint: str) -> Any:
    """``table[option]`` for a bool or string option (``None``: ``default``); anything else raises with ``hint``."""
    value = _option(option)
    if value is None:
        return default
    if isinstance(value, (bool, str)) and value in table:
        return table[value]
    raise ValueError(f"{name}={value!r} is not supported; {hint}.")


def _padding_side(padding_side: str | None, training: bool) -> str:
    """``"right"`` for training batches, ``"left"`` for generation inputs; the other side raises ``ValueError``."""
    side = "right" if training else "left"
    if padding_side in (None, side):
        return side
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r} is not supported; pass 'left' or 'right'.")
    if training:
        raise ValueError(
            "training batches (text given) are right padded: the labels and sequence packing rely on it; pass "
            "padding_side='right' or leave it out."
        )
    raise ValueError(
        "generation inputs (text=None) are left padded: generate() appends new tokens at the right end; pass "
        "padding_side='left' or leave it out."
    )


def _as_programs(text: str | Sequence[str] | None, num_images: int) -> list[str] | None:
    """``text`` as a list of one program per image (``None`` stays ``None``: generation inputs)."""
    if text is None:
        return None
    programs = [text] if isinstance(text, str) else list(text)
    if len(programs) != num_images:
        raise ValueError(
            f"got {num_images} image(s) but {len(programs)} program(s); pass exactly one program per image "
            "(or text=None to build generation prompts)."
        )
    if not all(isinstance(p, str) for p in programs):
        raise ValueError("text must be a list of program strings.")
    return programs


def _pad_rows(rows: list[list[int]], padding: str, max_length: int | None, side: str, pad_token_id: int,
              label_start: int | None, stack: bool) -> dict[str, Any]:  # fmt: skip
    """Pad token rows into ``input_ids``, ``attention_mask`` and (when ``label_start`` is set) ``labels``.

    ``labels`` copy the ids from ``label_start`` on (``-100`` before it and on padding). Unpadded rows of
    different lengths come back as lists of lists; ``stack=True`` (a tensor type was asked for) refuses them.
    """
    lengths = [len(row) for row in rows]
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length (tokens per row, prompt included).")
        if max(lengths) > max_length:
            raise ValueError(
                f"a row has {max(lengths)} tokens, more than max_length={max_length}, and truncation is off; pass "
                "truncation=True to cut programs, or a larger max_length."
            )
    elif padding == "do_not_pad" and len(set(lengths)) > 1:
        if stack:
            raise ValueError(
                f"padding=False leaves rows of {min(lengths)} to {max(lengths)} tokens, which do not stack into "
                "tensors; pass padding=True, or return_tensors=None to get lists."
            )
        out: dict[str, Any] = {"input_ids": rows, "attention_mask": [[1] * n for n in lengths]}
        if label_start is not None:
            out["labels"] = [[-100] * label_start + row[label_start:] for row in rows]
        return out
    width = max_length if padding == "max_length" else max(lengths)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    for i, row in enumerate(rows):
        start = 0 if side == "right" else width - len(row)
        input_ids[i, start : start + len(row)] = row
        attention_mask[i, start : start + len(row)] = 1
        if label_start is not None:
            labels[i, start + label_start : start + len(row)] = row[label_start:]
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if label_start is not None:
        out["labels"] = labels
    return out


# ----------------------------------------------------------------------------------------------- processor
class CadCoderProcessor(ProcessorMixin):
    """Image processor + code tokenizer, and the single prompt format of CadCoder.

    ``processor(images=..., text=[programs])`` builds a TRAINING batch (right padded): ``input_ids``,
    ``attention_mask``, ``pixel_values``, ``labels`` (``-100`` on image/prompt/padding; the program and its final EOS
    are supervised). ``processor(images=...)`` builds a GENERATION batch (prompt only, left padded).

    Args:
        image_processor: a ``CadCoderImageProcessor``.
        tokenizer: a CodeGen-style tokenizer (``<|endoftext|>`` as bos/eos/pad). ``<image>`` is added if missing.
        num_image_tokens: ``<image>`` placeholders per image; must equal ``model.config.num_image_tokens``.
        image_token: the placeholder token string.
    """

    def __init__(
        self, image_processor=None, tokenizer=None, num_image_tokens: int = 49, image_token: str = IMAGE_TOKEN
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("CadCoderProcessor needs both an image_processor and a tokenizer.")
        self.num_image_tokens = int(num_image_tokens)
        if self.num_image_tokens < 1:
            raise ValueError(
                f"num_image_tokens={num_image_tokens}; it must be >= 1 (use model.config.num_image_tokens)."
            )
        self.image_token = image_token
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; CodeGen-style tokenizers use '<|endoftext|>'.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # CodeGen convention: pad == eos, masked by attention_mask
        super().__init__(image_processor, tokenizer)

    @property
    def image_token_id(self) -> int:
        """Id of the ``<image>`` placeholder token in the tokenizer."""
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    def prompt_ids(self) -> list[int]:
        """Token ids of the prompt that precedes every program: image placeholders then bos."""
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return [self.image_token_id] * self.num_image_tokens + [bos]

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | TensorType | None = "pt",
        max_length: int | None = None,
        padding: bool | str | PaddingStrategy | None = None,
        truncation: bool | str | TruncationStrategy | None = None,
        padding_side: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Build model inputs, with the keyword arguments of transformers' tokenizers and processors.

        Args:
            images: one image or a list (PIL / numpy / torch, any form ``CadCoderImageProcessor`` reads).
            text: the TARGET CadQuery program(s), one string per image, that the model is trained to write. With
                ``text`` the call builds a TRAINING batch: ``labels`` supervise exactly the program's tokens and a
                final EOS (``-100`` on image tokens, bos and padding). ``text`` is not a prompt: the prompt is
                always the ``<image>`` placeholders + bos, built here. ``text=None`` builds GENERATION inputs
                (prompt only) for ``model.generate``.
            return_tensors: ``"pt"`` (default, torch tensors), ``"np"`` (numpy arrays) or ``None`` (numpy arrays;
                lists of lists for ``input_ids``/``attention_mask``/``labels`` when unpadded rows differ in length).
            max_length: tokens per row, prompt included (see ``padding`` and ``truncation``).
            padding: ``True`` / ``"longest"`` (the default): pad to the longest row; ``"max_length"``: pad every
                row to ``max_length``; ``False`` / ``"do_not_pad"``: no padding (rows of different lengths then
                need ``return_tensors=None``). Generation prompts all have the same length, so only
                ``"max_length"`` pads them.
            truncation: ``True`` / ``"longest_first"`` / ``"only_first"``: cut training rows to ``max_length``
                tokens, prompt included (or to ``tokenizer.model_max_length`` without ``max_length``); a cut
                program loses its final EOS. ``False`` / ``"do_not_truncate"``: never cut. ``None`` (default):
                cut when ``max_length`` is given. The generation prompt is never cut.
            padding_side: ``"right"`` for training batches (labels and sequence packing rely on it), ``"left"``
                for generation inputs (``generate`` appends at the right); the default picks the right one.

        Raises:
            ValueError: no/empty images, image and program counts differ, ``max_length`` too short for the prompt,
                a padding side, truncation strategy or tensor type this processor cannot produce, or an unknown
                keyword argument; each message says what to pass instead.
        """
        if kwargs:
            raise ValueError(
                f"CadCoderProcessor got unexpected argument(s): {', '.join(sorted(kwargs))}; it accepts images, "
                "text, padding, truncation, max_length, padding_side and return_tensors."
            )
        tensor_type = _tensor_type(return_tensors)
        padding = _padding_strategy(padding)
        image_list = _as_image_list(images)
        programs = _as_programs(text, len(image_list))
        training = programs is not None
        side = _padding_side(padding_side, training)
        prompt = self.prompt_ids()
        if training:
            limit = self._truncation_length(truncation, max_length)
            eos = self.tokenizer.eos_token_id
            rows = [prompt + self.tokenizer(p, add_special_tokens=False)["input_ids"] + [eos] for p in programs]
            rows = [row[:limit] for row in rows] if limit else rows
        else:
            if max_length is not None and _truncation(truncation) is not False and max_length < len(prompt):
                raise ValueError(
                    f"max_length={max_length} is shorter than the {len(prompt)}-token generation prompt "
                    f"({self.num_image_tokens} image tokens + bos), which is never cut; pass max_length >= "
                    f"{len(prompt)} or leave it out."
                )
            rows = [prompt] * len(image_list)
        encoded = _pad_rows(rows, padding, max_length, side, self.tokenizer.pad_token_id,
                            label_start=len(prompt) if training else None, stack=tensor_type is not None)  # fmt: skip
        encoded["pixel_values"] = self.image_processor(image_list, return_tensors="np")["pixel_values"]
        return BatchFeature(data=encoded, tensor_type=tensor_type)

    def _truncation_length(self, truncation: bool | str | TruncationStrategy | None, max_length: int | None):
        """Tokens per training row after truncation (``None``: no truncation); checks room for the program."""
        truncate = _truncation(truncation)
        if truncate is False or (truncate is None and max_length is None):
            return None
        if max_length is None:
            max_length = self.tokenizer.model_max_length
            if max_length is None or max_length > _NO_MODEL_MAX_LENGTH:
                raise ValueError("truncation=True needs a length: the tokenizer sets no model_max_length; pass max_length.")
        prompt_length = len(self.prompt_ids())
        if max_length <= prompt_length:
            raise ValueError(
                f"max_length={max_length} leaves no room for the program: the prompt alone is {prompt_length} "
                f"tokens ({self.num_image_tokens} image tokens + bos); use max_length > {prompt_length}."
            )
        return max_length

    # ---------------------------------------------------------------------------------------- decoding
    def batch_decode(self, sequences, skip_special_tokens: bool = True, clean: bool = True, **kwargs) -> list[str]:
        """Decode token ids (prompt included or not) into programs; ``clean=True`` applies
        ``post_process_generation``."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.post_process_generation(texts) if clean else texts

    def decode(self, token_ids, skip_special_tokens: bool = True, clean: bool = True, **kwargs) -> str:
        """Decode one sequence; see ``batch_decode``."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        text = self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        return self.post_process_generation(text) if clean else text

    def post_process_generation(self, text: str | Sequence[str]) -> str | list[str]:
        """Generated text -> clean CadQuery source (trimmed, cut to the last complete statement, ``solid``
        assigned). Accepts one string or a list."""
        if isinstance(text, str):
            return post_process_program(text)
        return [post_process_program(t) for t in text]


CadCoderImageProcessor.register_for_auto_class("AutoImageProcessor")
CadCoderProcessor.register_for_auto_class("AutoProcessor")
if not __package__:  # imported as an installed module (not as Hub remote code): make the Auto classes see it
    from transformers import AutoImageProcessor, AutoProcessor

    try:  # the relative form names the file for save_pretrained; the try hides both from the remote-code check
        from .configuration_cadcoder import CadCoderConfig
    except ImportError:
        from configuration_cadcoder import CadCoderConfig

    # One class serves every backend (it converts images itself), so it is registered for both: registered for
    # "pil" alone, AutoImageProcessor asks for "torchvision" whenever torchvision is installed and warns on fallback.
    AutoImageProcessor.register(
        CadCoderConfig,
        image_processor_classes={"pil": CadCoderImageProcessor, "torchvision": CadCoderImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(CadCoderConfig, CadCoderProcessor, exist_ok=True)
