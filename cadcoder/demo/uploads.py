"""Checks on an uploaded image, before the model sees it: each refusal says what to upload instead."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "UploadError", "Upload", "read_upload"]

#: Largest file accepted (bytes). Dataset images are 448 x 448 PNGs of a few kB.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: Largest image accepted (width x height), checked from the header before decoding.
MAX_UPLOAD_PIXELS = 40_000_000


class UploadError(ValueError):
    """An upload that cannot be used; the message is meant for the page."""


@dataclass
class Upload:
    """A decoded upload: the RGB image the model sees, plus notes on what was done to it."""

    image: Image.Image
    name: str
    notes: list[str] = field(default_factory=list)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def read_upload(path: str | os.PathLike | None) -> Upload:
    """Decode an uploaded file to the RGB image the model sees.

    Transparency is composited on white (dataset renders have a white background) and noted.

    Raises:
        UploadError: no file, an empty or oversized file, a file that is not an image or is corrupt, or an
            image with more than :data:`MAX_UPLOAD_PIXELS` pixels. The message says what to upload instead.
    """
    from processing_cadcoder import to_rgb_image

    if path is None or not str(path):
        raise UploadError("No image yet: upload a picture of a part (PNG or JPEG), or click one of the examples.")
    file = Path(path)
    if not file.is_file():
        raise UploadError(f"The upload {file.name} did not arrive; upload it again.")
    size = file.stat().st_size
    if size == 0:
        raise UploadError(f"{file.name} is empty (0 bytes); upload a PNG or JPEG image of a part.")
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{file.name} is {size / 2**20:.0f} MB; the demo takes images up to "
                          f"{MAX_UPLOAD_BYTES // 2**20} MB. Downscale it: the model sees 448 x 448 pixels.")  # fmt: skip
    try:
        with Image.open(file) as header:  # reads the header only
            width, height = header.size
            alpha = _has_alpha(header)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{file.name} is not an image that can be read ({type(exc).__name__}); it may be corrupt "
                          "or another kind of file. Upload a PNG or JPEG image of a part.") from None  # fmt: skip
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(f"{file.name} is {width} x {height} pixels ({width * height / 1e6:.0f} MP); the demo takes "
                          f"up to {MAX_UPLOAD_PIXELS / 1e6:.0f} MP. Downscale it: the model sees 448 x 448 pixels.")  # fmt: skip
    try:
        image = to_rgb_image(file)
    except (ValueError, FileNotFoundError) as exc:
        raise UploadError(f"{file.name} could not be decoded: {exc}") from None
    notes = []
    if alpha:
        notes.append("The image has an alpha channel: transparent pixels were put on white, like the dataset's renders.")
    return Upload(image=image, name=file.name, notes=notes)
