"""The look and camera of a render: :class:`RenderStyle`, the camera it implies, and its shading curve.

The defaults reproduce the GenCAD-Code images (measured on the 34 real pairs in ``gencad_sample/``):
one orthographic isometric view from (+1, -1, +1) with z up, flat grey faces (141, 141, 138) that get
lighter where a curved face turns toward the viewer, 1-px black edges on white, and the projected
bounding box fitted into a 400x300 px window at 448 px. See :mod:`cadcoder.render` for the renderer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence, Tuple

import numpy as np

__all__ = [
    "DATASET_FACE_RGB",
    "DATASET_VIEW",
    "LUT_SIZE",
    "RenderStyle",
    "camera_axes",
    "fit_scale",
    "shade_lut",
]

#: Face colour of axis-aligned planar faces in GenCAD-Code images (measured).
DATASET_FACE_RGB: Tuple[int, int, int] = (141, 141, 138)
#: Direction from the part toward the camera in GenCAD-Code images (measured).
DATASET_VIEW: Tuple[float, float, float] = (1.0, -1.0, 1.0)
_ISO_COS = 1.0 / math.sqrt(3.0)  # |n . view| of an axis-aligned face in the isometric view
#: Entries of the shading look-up table over |n . view| in [0, 1].
LUT_SIZE = 1024


@dataclass
class RenderStyle:
    """Look and camera of a render; the defaults reproduce the GenCAD-Code images.

    All fields are concrete values (no randomness inside the renderer); use :meth:`random` to draw a
    style for domain randomisation.

    Attributes:
        face_rgb: colour of a face seen at the isometric angle (|n . view| = 1/sqrt(3)).
        ambient: ambient light relative to the head light's diffuse term. A face's colour is
            ``face_rgb * ((ambient + c) / (ambient + 1/sqrt(3))) ** (1 / gamma)`` with c = |n . view|:
            Lambert shading in linear light, then gamma-encoded. Curved faces turned toward the viewer
            get lighter, grazing ones darker. The defaults fit the dataset's curved faces within 2 grey
            levels over c in [0.15, 0.82].
        gamma: display gamma of the shading curve.
        background_rgb: background colour.
        edge_rgb: colour of edges and outlines.
        edge_width: line width in pixels (1 = dataset look).
        draw_edges: draw the B-rep edges (visible parts only).
        draw_silhouettes: also outline smooth silhouettes (e.g. a cylinder's sides). The dataset does
            not: there only B-rep edges are drawn and a curved silhouette shows as dark shading.
        azimuth_deg: rotation of the view direction about the z axis, added to the dataset view.
        elevation_deg: change of the view's elevation angle, added to the dataset view.
        roll_deg: rotation of the image plane about the view axis.
        zoom: multiplier of the fitted scale (1 = dataset framing).
        shift: (dx, dy) shift of the part in the image, as fractions of the image size.
        fit_box: (width, height) of the window, as fractions of the image size, into which the
            projected bounding box is fitted (measured on the dataset: 400/448 x 300/448).
    """

    face_rgb: Tuple[int, int, int] = DATASET_FACE_RGB
    ambient: float = 0.156
    gamma: float = 2.2
    background_rgb: Tuple[int, int, int] = (255, 255, 255)
    edge_rgb: Tuple[int, int, int] = (0, 0, 0)
    edge_width: int = 1
    draw_edges: bool = True
    draw_silhouettes: bool = False
    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    roll_deg: float = 0.0
    zoom: float = 1.0
    shift: Tuple[float, float] = (0.0, 0.0)
    fit_box: Tuple[float, float] = (400.0 / 448.0, 300.0 / 448.0)

    @classmethod
    def random(
        cls,
        rng: np.random.Generator | int | None = None,
        grey_jitter: float = 25.0,
        camera_jitter_deg: float = 4.0,
        zoom_range: Tuple[float, float] = (0.85, 1.1),
        max_shift: float = 0.04,
        edge_widths: Sequence[int] = (1, 1, 1, 2),
        silhouette_prob: float = 0.2,
    ) -> "RenderStyle":
        """Draw a style near the dataset look, for domain randomisation of synthetic images.

        Args:
            rng: a numpy Generator or a seed.
            grey_jitter: face grey level varies uniformly by +- this many levels (slight tint too).
            camera_jitter_deg: azimuth/elevation offsets drawn from N(0, this); roll from N(0, this/4).
            zoom_range: uniform range of the zoom factor.
            max_shift: uniform image shift, as a fraction of the image size, in each axis.
            edge_widths: line widths to choose from uniformly.
            silhouette_prob: probability of also outlining smooth silhouettes (as many CAD viewers do).
        """
        rng = np.random.default_rng(rng)
        grey = 141.0 + rng.uniform(-grey_jitter, grey_jitter)
        tint = rng.uniform(-4.0, 4.0, size=3) + np.array([0.0, 0.0, -3.0])
        face = tuple(int(np.clip(round(grey + t), 0, 255)) for t in tint)
        return cls(
            face_rgb=face,  # type: ignore[arg-type]
            ambient=float(rng.uniform(0.05, 0.5)),
            gamma=float(rng.uniform(1.6, 2.8)),
            edge_width=int(rng.choice(np.asarray(edge_widths))),
            draw_silhouettes=bool(rng.random() < silhouette_prob),
            azimuth_deg=float(rng.normal(0.0, camera_jitter_deg)),
            elevation_deg=float(rng.normal(0.0, camera_jitter_deg)),
            roll_deg=float(rng.normal(0.0, camera_jitter_deg / 4.0)),
            zoom=float(rng.uniform(*zoom_range)),
            shift=(float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift))),
        )

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "RenderStyle":
        """The style from :meth:`to_dict`'s form (lists become tuples, as after a JSON round trip).

        Raises:
            ValueError: a key that is not a field; the message lists the valid fields.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - names
        if unknown:
            raise ValueError(f"unknown render style fields {sorted(unknown)}; valid fields: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-friendly), accepted back by ``RenderStyle(**d)`` and :func:`render_task`."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Camera and shading
# --------------------------------------------------------------------------------------------------
def camera_axes(style: RenderStyle) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (right, up, toward_camera) unit vectors for the style's view (z is up)."""
    base = np.asarray(DATASET_VIEW, dtype=float)
    az = math.atan2(base[1], base[0]) + math.radians(style.azimuth_deg)
    el = math.atan2(base[2], math.hypot(base[0], base[1])) + math.radians(style.elevation_deg)
    el = max(min(el, math.radians(89.0)), math.radians(-89.0))
    view = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    right = np.cross(-view, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, -view)
    if style.roll_deg:
        c, s = math.cos(math.radians(style.roll_deg)), math.sin(math.radians(style.roll_deg))
        right, up = c * right + s * up, -s * right + c * up
    return right, up, view


def fit_scale(lo: np.ndarray, hi: np.ndarray, right: np.ndarray, up: np.ndarray, size: int, style: RenderStyle) -> float:
    """Pixels per model unit: the projected bounding-box corners fill the style's fit window."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = np.ptp(corners @ right)
    h = np.ptp(corners @ up)
    fw, fh = style.fit_box[0] * size, style.fit_box[1] * size
    scale = min(fw / w if w > 1e-12 else np.inf, fh / h if h > 1e-12 else np.inf)
    if not np.isfinite(scale):
        raise ValueError("cannot render a shape whose bounding box is a single point")
    return float(scale * style.zoom)


def shade_lut(style: RenderStyle) -> np.ndarray:
    """(LUT_SIZE, 3) uint8 colours for |n . view| = 0 .. 1 (see RenderStyle.ambient)."""
    c = np.linspace(0.0, 1.0, LUT_SIZE)
    ambient = max(float(style.ambient), 1e-6)
    factor = ((ambient + c) / (ambient + _ISO_COS)) ** (1.0 / max(float(style.gamma), 1e-3))
    rgb = np.asarray(style.face_rgb, dtype=float)[None, :] * factor[:, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
