"""Image-space comparison of part renders: silhouettes, edge maps, face colour.

Used to measure renderer fidelity against real GenCAD-Code images (``benchmarks/real_sample.py``)
and by render-and-compare inference (:func:`image_similarity`), which must be blind to framing:
dataset parts are not size-normalised, so both images are cropped to the part and rescaled first.

All functions accept PIL images or numpy arrays (H x W x 3 uint8, or H x W grey). The dataset look
is assumed: a light, uniform background, and lines drawn dark.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Tuple, Union

import numpy as np
from PIL import Image

from processing_cadcoder import SUPPORTED_MODES, to_rgb_image

__all__ = [
    "to_rgb_array",
    "foreground_mask",
    "edge_map",
    "silhouette_iou",
    "edge_f1",
    "face_colour",
    "face_colour_difference",
    "crop_to_content",
    "compare_images",
    "image_similarity",
]

ImageLike = Union[Image.Image, np.ndarray]


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return an (H, W, 3) uint8 array, decoded by :func:`processing_cadcoder.to_rgb_image`.

    RGBA/LA are composited on white, grey is replicated. On top of what ``to_rgb_image`` takes, this
    keeps the looser inputs of the metrics: PIL modes it refuses (``"1"``, ``"CMYK"``, ...) are
    converted to RGB first, float arrays with values beyond [0, 1] are read as 0-255, and other
    integer arrays are rounded and clipped to 0-255.
    """
    if isinstance(image, Image.Image):
        if image.mode not in SUPPORTED_MODES:
            image = image.convert("RGB")
    elif not isinstance(image, (str, os.PathLike, bytes, bytearray, dict)):
        image = _as_uint8(np.asarray(image))
    return np.asarray(to_rgb_image(image), dtype=np.uint8)


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    """Pixels as uint8: floats in [0, 1] are scaled by 255, everything else is rounded and clipped to 0-255."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _background(rgb: np.ndarray) -> np.ndarray:
    """Background colour: the median of the one-pixel image border."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(float)
    return np.median(border, axis=0)


def foreground_mask(image: ImageLike, threshold: float = 12.0) -> np.ndarray:
    """Pixels that differ from the background colour by more than `threshold` in some channel."""
    rgb = to_rgb_array(image)
    diff = np.abs(rgb.astype(np.int16) - _background(rgb)[None, None, :].astype(np.int16))
    return diff.max(axis=2) > threshold


def edge_map(image: ImageLike, method: str = "dark", dark_threshold: int = 60, gradient_threshold: float = 40.0) -> np.ndarray:
    """Boolean map of line pixels.

    Args:
        method: ``"dark"`` takes the drawn lines of the dataset style (all channels <= `dark_threshold`);
            ``"gradient"`` takes strong intensity steps (for images without drawn lines).
    """
    rgb = to_rgb_array(image)
    if method == "dark":
        return rgb.max(axis=2) <= dark_threshold
    if method == "gradient":
        g = rgb.astype(float).mean(axis=2)
        gx = np.zeros_like(g)
        gy = np.zeros_like(g)
        gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
        gy[1:-1, :] = g[2:, :] - g[:-2, :]
        return np.hypot(gx, gy) > gradient_threshold
    raise ValueError(f"unknown edge method {method!r}; use 'dark' or 'gradient'")


def silhouette_iou(a: ImageLike, b: ImageLike) -> float:
    """Intersection over union of the two foreground masks (1.0 when both are empty)."""
    ma, mb = _mask(a), _mask(b)
    _check_same_shape(ma, mb)
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def edge_f1(reference: ImageLike, prediction: ImageLike, tolerance: float = 2.0) -> float:
    """F1 of line pixels, where a pixel matches if the other map has a line within `tolerance` px.

    Inputs may be images (their :func:`edge_map` is used) or boolean maps. 1.0 when both are empty.
    """
    from scipy.ndimage import distance_transform_edt

    ea = reference if _is_bool_map(reference) else edge_map(reference)
    eb = prediction if _is_bool_map(prediction) else edge_map(prediction)
    ea, eb = np.asarray(ea, bool), np.asarray(eb, bool)
    _check_same_shape(ea, eb)
    if not ea.any() and not eb.any():
        return 1.0
    if not ea.any() or not eb.any():
        return 0.0
    dist_to_a = distance_transform_edt(~ea)
    dist_to_b = distance_transform_edt(~eb)
    precision = float((dist_to_a[eb] <= tolerance).mean())
    recall = float((dist_to_b[ea] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def face_colour(image: ImageLike) -> np.ndarray:
    """Median RGB of the part's face pixels (foreground minus lines); NaNs if there are none."""
    rgb = to_rgb_array(image)
    faces = foreground_mask(rgb) & ~edge_map(rgb)
    if not faces.any():
        return np.full(3, np.nan)
    return np.median(rgb[faces].astype(float), axis=0)


def face_colour_difference(a: ImageLike, b: ImageLike) -> float:
    """Largest per-channel difference (0-255) between the median face colours of two images."""
    return float(np.max(np.abs(face_colour(a) - face_colour(b))))


def crop_to_content(image: ImageLike, size: int = 128, margin: float = 0.05) -> np.ndarray:
    """Crop to the part's bounding box (square, centred, plus a margin) and rescale to `size`.

    Removes framing differences (scale and position) before comparing two renders. An image with no
    foreground is only resized.
    """
    rgb = to_rgb_array(image)
    box = _square_box(foreground_mask(rgb), margin)
    bg = tuple(int(v) for v in _background(rgb))
    return np.asarray(_crop_pad(Image.fromarray(rgb), box, bg).resize((size, size), Image.BILINEAR))


def compare_images(reference: ImageLike, prediction: ImageLike, tolerance: float = 2.0) -> Dict[str, float]:
    """Renderer-fidelity numbers of a render against a reference image of the same framing.

    Returns ``silhouette_iou``, ``edge_f1`` (with `tolerance` px) and ``face_colour_diff`` (0-255).
    """
    ra, rb = to_rgb_array(reference), to_rgb_array(prediction)
    _check_same_shape(ra[:, :, 0], rb[:, :, 0])
    return {
        "silhouette_iou": silhouette_iou(ra, rb),
        "edge_f1": edge_f1(edge_map(ra), edge_map(rb), tolerance),
        "face_colour_diff": face_colour_difference(ra, rb),
    }


def image_similarity(a: ImageLike, b: ImageLike, size: int = 128, edge_weight: float = 0.5) -> float:
    """Framing-invariant similarity in [0, 1] of two part images (for render-and-compare).

    Both images are cropped to their part's bounding box and rescaled to `size` px; the score is
    ``(1 - edge_weight) * silhouette IoU + edge_weight * edge F1`` (2-px tolerance at 448-px scale).
    Line maps are resampled by coverage so thin lines survive downscaling.
    """
    if not 0.0 <= edge_weight <= 1.0:
        raise ValueError(f"edge_weight must lie in [0, 1], got {edge_weight}")
    ma, ea = _normalised_maps(to_rgb_array(a), size)
    mb, eb = _normalised_maps(to_rgb_array(b), size)
    union = np.logical_or(ma, mb).sum()
    iou = 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)
    if edge_weight == 0.0:
        return iou
    tol = max(1.0, 2.0 * size / 448.0)
    return (1.0 - edge_weight) * iou + edge_weight * edge_f1(ea, eb, tol)


# --------------------------------------------------------------------------------------------------
def _mask(image: Any) -> np.ndarray:
    return np.asarray(image, bool) if _is_bool_map(image) else foreground_mask(image)


def _is_bool_map(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == bool and x.ndim == 2


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"images have different sizes {a.shape[::-1]} and {b.shape[::-1]}; resize them to the same size "
            "or use image_similarity(), which matches framing"
        )


def _square_box(mask: np.ndarray, margin: float) -> Tuple[int, int, int, int]:
    """Square (left, top, right, bottom) box around the mask's bounding box, grown by `margin`."""
    h, w = mask.shape
    if not mask.any():
        return 0, 0, w, h
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    cy, cx = (rows[0] + rows[-1] + 1) / 2.0, (cols[0] + cols[-1] + 1) / 2.0
    half = max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) * (0.5 + margin)
    half = max(half, 1.0)
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def _crop_pad(im: Image.Image, box: Tuple[int, int, int, int], fill: Any) -> Image.Image:
    """Crop `box`, filling the parts outside the image with `fill`."""
    left, top, right, bottom = box
    out = Image.new(im.mode, (right - left, bottom - top), fill)
    out.paste(im, (-left, -top))
    return out


def _normalised_maps(rgb: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Silhouette and line maps cropped to the part and rescaled to size x size."""
    mask = foreground_mask(rgb)
    lines = edge_map(rgb) & mask
    box = _square_box(mask, 0.05)
    m = _crop_pad(Image.fromarray(mask.astype(np.uint8) * 255), box, 0).resize((size, size), Image.BOX)
    e = _crop_pad(Image.fromarray(lines.astype(np.uint8) * 255), box, 0).resize((size, size), Image.BOX)
    scale = size / max(box[2] - box[0], 1)
    # A 1-px line covers about `scale` of a downsampled pixel; keep pixels it crosses noticeably.
    return np.asarray(m) >= 128, np.asarray(e) >= max(1, int(255 * min(scale, 1.0) * 0.5))
