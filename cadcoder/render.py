"""Headless rendering of CadQuery solids in the GenCAD-Code image style.

The GenCAD-Code images (measured on the 34 real pairs in ``gencad_sample/``) are 448x448 RGB, one
orthographic isometric view from (+1, -1, +1) with z up; flat grey faces (141, 141, 138) that get
lighter where a curved face turns toward the viewer (a head light: Lambert in linear light, then
gamma 2.2); 1-px black B-rep edges (seams included) with hidden lines removed and no anti-aliasing;
smooth silhouettes get no line (they show as dark grazing shading); white background. Framing: the
view is centred on the centre of the part's 3D bounding box, and the scale is the largest at which the
eight projected corners of that box fit in a 400x300 px window (at 448 px; it scales with ``size``).
With these rules the renders of the 34 ground-truth programs reach silhouette IoU 0.996, edge F1
0.967 (2-px tolerance) and a face-colour difference of 0.13/255 on average against the real images
(``benchmarks/real_sample.py``).

Backend: a small NumPy software rasteriser. OCC's BRepMesh tessellates the shape
(:func:`cadcoder.mesh.shape_to_mesh`); triangles are scan-converted with a z-buffer (vectorised over
all triangles) with per-vertex head-light shading; the B-rep edges, taken from the same
triangulation, are drawn where the depth buffer shows them (:mod:`cadcoder.raster`). The look and
camera are a :class:`cadcoder.render_style.RenderStyle`. It
needs no display, no GPU and no OpenGL library (nothing beyond the pip wheels of numpy, Pillow and
cadquery), gives the same pixels on every machine (which matters for synthetic training data), and
takes a few tens of milliseconds per 448-px image on one CPU core (``benchmarks/render_speed.py``).
VTK, which ships with cadquery, was not used: its offscreen windows need EGL or OSMesa system
libraries on a bare machine, and GPU drivers would make the pixels machine-dependent.

Generated programs are rendered with :func:`render_program`, which runs them only through
:class:`cadcoder.sandbox.Sandbox`; inside the sandbox worker :func:`render_task` does the work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cadcoder.mesh import Mesh, shape_bounds, shape_to_mesh
from cadcoder.raster import dilate, edge_pixels, outline_pixels, polyline_segments, rasterise, silhouette_segments, vertex_normals
from cadcoder.render_style import DATASET_FACE_RGB, DATASET_VIEW, LUT_SIZE, RenderStyle, camera_axes, fit_scale, shade_lut
from cadcoder.sandbox import borrow_or_open
from cadcoder.tasks import RENDER

__all__ = [
    "RenderStyle",
    "render_shape",
    "render_task",
    "render_program",
    "render_mesh",
    "RenderBuffers",
    "side_by_side",
    "render_cli",
    "shape_to_mesh",
    "shape_bounds",
    "Mesh",
    "DATASET_FACE_RGB",
    "DATASET_VIEW",
]

# Tessellation tolerance: chord error in pixels, and angle between segments in radians. Finer
# settings change no fidelity number on the real sample but cost up to 4x meshing time on parts
# with many small holes.
_DEFLECTION_PX = 0.5
_ANGULAR_DEFLECTION = 0.5


@dataclass
class RenderBuffers:
    """Intermediate buffers of one render (useful for render-and-compare and debugging)."""

    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float, -inf where empty; larger = nearer the camera
    face_ids: np.ndarray  # (H, W) int32, -1 where empty
    edges: np.ndarray  # (H, W) bool, pixels drawn as lines
    scale: float  # pixels per model unit


def render_mesh(shape: Any, size: int = 448, style: Optional[RenderStyle] = None) -> RenderBuffers:
    """Render a shape and return the image with its depth, face-id and edge buffers."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    size = int(size)
    style = style or RenderStyle()
    right, up, view = camera_axes(style)
    lo, hi = shape_bounds(shape)
    centre = (lo + hi) / 2.0
    scale = fit_scale(lo, hi, right, up, size, style)
    mesh = shape_to_mesh(shape, linear_deflection=_DEFLECTION_PX / scale, angular_deflection=_ANGULAR_DEFLECTION)
    q = mesh.vertices - centre
    shift = np.asarray(style.shift, dtype=float) * size
    xy = np.stack([(q @ right) * scale + size / 2.0 + shift[0], -(q @ up) * scale + size / 2.0 + shift[1]], axis=1)
    depth = q @ view
    vn, fn = vertex_normals(mesh.vertices, mesh.triangles)
    shade = np.abs(vn @ view)
    # Back faces are always covered by front faces of a closed solid: skip them (about half the work).
    front = fn @ view > -1e-12 * np.maximum(np.linalg.norm(fn, axis=1), 1e-300)
    zbuf, fbuf, sbuf = rasterise(xy, depth, shade, mesh.triangles[front], mesh.face_ids[front], size)
    filled = fbuf >= 0
    img = shade_lut(style)[np.clip(np.rint(sbuf * (LUT_SIZE - 1)), 0, LUT_SIZE - 1).astype(np.intp)]
    img[~filled] = np.asarray(style.background_rgb, dtype=np.uint8)
    edges = np.zeros((size, size), dtype=bool)
    if style.draw_edges:
        centre_shifted = centre - (shift[0] * right - shift[1] * up) / scale
        args = (right, up, view, centre_shifted, scale, size, zbuf, 2.0 / scale)
        edges = edge_pixels(*polyline_segments(mesh.edges), *args)
        if style.draw_silhouettes:
            # Smooth silhouettes: the outline, plus mesh edges between front and back triangles inside
            # the part (kept off the outline, which they would double: the mesh chord lies inside it).
            outline = outline_pixels(zbuf)
            silhouettes = edge_pixels(*silhouette_segments(mesh.vertices, mesh.triangles, front), *args)
            edges |= outline | (silhouettes & ~dilate(outline, 3))
        # Lines are drawn on the part's own pixels, as in the dataset (the outline stays inside it).
        edges &= filled
        edges = dilate(edges, int(style.edge_width))
        img[edges] = np.asarray(style.edge_rgb, dtype=np.uint8)
    return RenderBuffers(img, zbuf, fbuf, edges, scale)


def render_shape(shape: Any, size: int = 448, style: Optional[RenderStyle] = None) -> Image.Image:
    """Render a CadQuery shape (Shape, Workplane or OCP TopoDS_Shape) in the GenCAD-Code style.

    Args:
        shape: the solid to draw.
        size: output width and height in pixels.
        style: look and camera; ``None`` gives the dataset look.

    Returns:
        An RGB PIL image of ``size`` x ``size`` pixels.
    """
    return Image.fromarray(render_mesh(shape, size, style).image, mode="RGB")


def render_task(shape: Any, size: int = 448, **style: Any) -> np.ndarray:
    """Sandbox task: render ``shape`` and return an (size, size, 3) uint8 array.

    ``style`` holds :class:`RenderStyle` fields as keyword arguments (e.g. ``edge_width=2``), so the
    call pickles cleanly: ``sandbox.run(code, task=render_task, size=224, **style.to_dict())``.
    """
    return render_mesh(shape, size, RenderStyle.from_dict(style)).image


def render_program(
    code: str, size: int = 448, sandbox: Any = None, timeout: float = 10.0, style: Optional[RenderStyle] = None
) -> Image.Image:
    """Run a CadQuery program in the sandbox and render its ``solid``.

    Args:
        code: CadQuery source (untrusted; it runs only inside :class:`cadcoder.sandbox.Sandbox`).
        size: output size in pixels.
        sandbox: an open Sandbox to reuse; ``None`` starts a one-worker sandbox for this call.
        timeout: seconds allowed for the program when a new sandbox is started.
        style: look and camera; ``None`` gives the dataset look.

    Raises:
        RuntimeError: the program failed; the message holds the sandbox's failure reason and detail.
    """
    kwargs = dict(size=size, **(style.to_dict() if style is not None else {}))
    with borrow_or_open(sandbox, num_workers=1, timeout=timeout) as box:
        result = box.run(code, task=RENDER, **kwargs)
    if not result.ok:
        raise RuntimeError(f"could not render the program: {result.status}: {result.error}")
    return Image.fromarray(np.asarray(result.value, dtype=np.uint8), mode="RGB")


# --------------------------------------------------------------------------------------------------
# Previews and CLI
# --------------------------------------------------------------------------------------------------
def side_by_side(
    left: Image.Image, right: Image.Image, labels: Sequence[str] | None = ("input", "prediction"), gap: int = 8
) -> Image.Image:
    """Place two images next to each other on white, at the height of the taller, with captions.

    Args:
        left, right: images of any mode (converted to RGB; RGBA is composited on white).
        labels: two captions drawn above the images, or ``None`` for none.
        gap: pixels between the two images.
    """

    # Imported here: cadcoder.image_metrics loads the processor (torch), which the sandbox's render
    # workers, importing this module, do not need.
    from cadcoder.image_metrics import to_rgb_array

    a, b = (Image.fromarray(to_rgb_array(im), mode="RGB") for im in (left, right))
    h = max(a.height, b.height)
    if a.height != h:
        a = a.resize((round(a.width * h / a.height), h), Image.BILINEAR)
    if b.height != h:
        b = b.resize((round(b.width * h / b.height), h), Image.BILINEAR)
    top = 0
    if labels is not None:
        if len(labels) != 2:
            raise ValueError(f"labels must hold two captions, got {len(labels)}")
        top = 18
    sheet = Image.new("RGB", (a.width + gap + b.width, h + top), (255, 255, 255))
    sheet.paste(a, (0, top))
    sheet.paste(b, (a.width + gap, top))
    if labels is not None:
        draw = ImageDraw.Draw(sheet)
        font = ImageFont.load_default()
        draw.text((4, 3), str(labels[0]), fill=(0, 0, 0), font=font)
        draw.text((a.width + gap + 4, 3), str(labels[1]), fill=(0, 0, 0), font=font)
    return sheet


def render_cli(args: argparse.Namespace) -> int:
    """`cadcoder render PROGRAM.py --out IMAGE.png [--size N] [--timeout S]`: render through the sandbox."""
    path = Path(args.program)
    if not path.is_file():
        raise FileNotFoundError(f"program file not found: {path}; pass a .py file holding CadQuery source")
    code = path.read_text(encoding="utf-8")
    try:
        image = render_program(code, size=int(args.size), timeout=float(args.timeout))
    except RuntimeError as err:
        print(f"cadcoder render: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out} ({image.width}x{image.height})")
    return 0
