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

Backend: a small NumPy software rasteriser. OCC's BRepMesh tessellates the shape; triangles are
scan-converted with a z-buffer (vectorised over all triangles) with per-vertex head-light shading;
the B-rep edges, taken from the same triangulation, are drawn where the depth buffer shows them. It
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
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import numpy.ma  # noqa: F401  (np.unique imports it lazily; the jailed sandbox worker could not)
from PIL import Image, ImageDraw, ImageFont

# OpenCascade is imported at module level on purpose: inside the sandbox's jailed worker, modules that
# a task imports lazily cannot be found (the worker imports this module before it forks and chroots).
try:
    from OCP.Bnd import Bnd_Box
    from OCP.BRep import BRep_Builder, BRep_Tool
    from OCP.BRepBndLib import BRepBndLib
    from OCP.BRepMesh import BRepMesh_IncrementalMesh
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_REVERSED
    from OCP.TopExp import TopExp_Explorer
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS, TopoDS_Compound
except ImportError as _err:  # pragma: no cover - cadquery pulls OCP in
    raise ImportError("cadcoder.render needs OpenCascade (OCP): pip install cadquery") from _err

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
    "DATASET_FACE_RGB",
    "DATASET_VIEW",
]

#: Face colour of axis-aligned planar faces in GenCAD-Code images (measured).
DATASET_FACE_RGB: Tuple[int, int, int] = (141, 141, 138)
#: Direction from the part toward the camera in GenCAD-Code images (measured).
DATASET_VIEW: Tuple[float, float, float] = (1.0, -1.0, 1.0)
_ISO_COS = 1.0 / math.sqrt(3.0)  # |n . view| of an axis-aligned face in the isometric view
# Tessellation tolerance: chord error in pixels, and angle between segments in radians. Finer
# settings change no fidelity number on the real sample but cost up to 4x meshing time on parts
# with many small holes.
_DEFLECTION_PX = 0.5
_ANGULAR_DEFLECTION = 0.5


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

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-friendly), accepted back by ``RenderStyle(**d)`` and :func:`render_task`."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Tessellation (OCC shape -> triangles with per-face ids, B-rep edge polylines)
# --------------------------------------------------------------------------------------------------
@dataclass
class Mesh:
    """Triangles of a B-rep solid, grouped by B-rep face, plus its edges as 3D polylines."""

    vertices: np.ndarray  # (N, 3) float64; vertices are not shared between B-rep faces
    triangles: np.ndarray  # (M, 3) int64, counter-clockwise seen from outside
    face_ids: np.ndarray  # (M,) int32, index of the B-rep face of each triangle
    edges: list  # list of (K, 3) float64 polylines, one per B-rep edge use


def _occ_shape(shape: Any) -> Any:
    """Return the TopoDS_Shape inside a cadquery Shape / Workplane / raw OCP shape."""
    if hasattr(shape, "val") and hasattr(shape, "vals"):  # cq.Workplane
        vals = [v for v in shape.vals() if hasattr(v, "wrapped")]
        if not vals:
            raise ValueError("the Workplane holds no shape to render; end the program with a solid")
        if len(vals) == 1:
            return vals[0].wrapped
        compound = TopoDS_Compound()
        builder = BRep_Builder()
        builder.MakeCompound(compound)
        for v in vals:
            builder.Add(compound, v.wrapped)
        return compound
    return getattr(shape, "wrapped", shape)


def shape_bounds(shape: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Tight axis-aligned bounding box (min corner, max corner) of a shape."""
    box = Bnd_Box()
    BRepBndLib.AddOptimal_s(_occ_shape(shape), box, False, False)
    if box.IsVoid():
        raise ValueError("cannot render an empty shape (its bounding box is void)")
    xmin, ymin, zmin, xmax, ymax, zmax = box.Get()
    return np.array([xmin, ymin, zmin]), np.array([xmax, ymax, zmax])


def shape_to_mesh(shape: Any, linear_deflection: float, angular_deflection: float = 0.25) -> Mesh:
    """Triangulate a shape with OCC's BRepMesh and collect triangles, face ids and edge polylines.

    Args:
        shape: a cadquery Shape/Workplane or an OCP TopoDS_Shape.
        linear_deflection: maximum chord error, in model units.
        angular_deflection: maximum angle between neighbouring segments, in radians.
    """
    occ = _occ_shape(shape)
    # Not in parallel: the sandbox's workers may not start threads.
    BRepMesh_IncrementalMesh(occ, float(linear_deflection), False, float(angular_deflection), False)
    verts, tris, fids, edges = [], [], [], []
    offset = 0
    explorer = TopExp_Explorer(occ, TopAbs_FACE)
    face_index = 0
    while explorer.More():
        face = TopoDS.Face_s(explorer.Current())
        explorer.Next()
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(face, loc)
        if tri is None:
            continue
        trsf = None if loc.IsIdentity() else loc.Transformation()
        n_nodes = tri.NbNodes()
        pts = np.empty((n_nodes, 3))
        for i in range(n_nodes):
            p = tri.Node(i + 1)
            if trsf is not None:
                p = p.Transformed(trsf)
            pts[i] = (p.X(), p.Y(), p.Z())
        n_tris = tri.NbTriangles()
        idx = np.empty((n_tris, 3), dtype=np.int64)
        for i in range(n_tris):
            idx[i] = tri.Triangle(i + 1).Get()
        idx -= 1
        if face.Orientation() == TopAbs_REVERSED:
            idx = idx[:, [0, 2, 1]]
        # Edges of this face, taken from the same triangulation so they lie exactly on the mesh.
        edge_exp = TopExp_Explorer(face, TopAbs_EDGE)
        while edge_exp.More():
            edge = TopoDS.Edge_s(edge_exp.Current())
            edge_exp.Next()
            poly = BRep_Tool.PolygonOnTriangulation_s(edge, tri, loc)
            if poly is None or BRep_Tool.Degenerated_s(edge):
                continue
            nodes = poly.Nodes()
            ids = np.fromiter((nodes.Value(j) for j in range(nodes.Lower(), nodes.Upper() + 1)), dtype=np.int64)
            edges.append(pts[ids - 1])
        verts.append(pts)
        tris.append(idx + offset)
        fids.append(np.full(n_tris, face_index, dtype=np.int32))
        offset += n_nodes
        face_index += 1
    if not tris:
        raise ValueError("the shape has no faces to render (is it a solid?)")
    return Mesh(np.concatenate(verts), np.concatenate(tris), np.concatenate(fids), edges)


# --------------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------------
def _camera_axes(style: RenderStyle) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _fit_scale(lo: np.ndarray, hi: np.ndarray, right: np.ndarray, up: np.ndarray, size: int, style: RenderStyle) -> float:
    """Pixels per model unit: the projected bounding-box corners fill the style's fit window."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = np.ptp(corners @ right)
    h = np.ptp(corners @ up)
    fw, fh = style.fit_box[0] * size, style.fit_box[1] * size
    scale = min(fw / w if w > 1e-12 else np.inf, fh / h if h > 1e-12 else np.inf)
    if not np.isfinite(scale):
        raise ValueError("cannot render a shape whose bounding box is a single point")
    return float(scale * style.zoom)


# --------------------------------------------------------------------------------------------------
# Rasteriser
# --------------------------------------------------------------------------------------------------
def _rasterise(
    xy: np.ndarray, z: np.ndarray, shade: np.ndarray, tris: np.ndarray, fids: np.ndarray, size: int,
    chunk: int = 1_000_000,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer triangles (screen coords, larger z = nearer). Returns depth, face-id and shade buffers.

    Scanline rasterisation, vectorised over all triangles: every (triangle, pixel row) pair gets the
    span of pixel centres inside the triangle, so the work is proportional to the covered area (long
    thin triangles of curved faces cost no more than their pixels). Pixel (row i, col j) is sampled at
    its centre (j + 0.5, i + 0.5). Empty pixels have depth -inf and face id -1.
    """
    n_pix = size * size
    zbuf = np.full(n_pix, -np.inf)
    fbuf = np.full(n_pix, -1, dtype=np.int32)
    sbuf = np.zeros(n_pix)
    shape2 = (size, size)
    if len(tris) == 0:
        return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)
    p = xy[tris]  # (M, 3, 2)
    det = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    ymin = np.maximum(np.ceil(p[:, :, 1].min(axis=1) - 0.5), 0).astype(np.int64)
    ymax = np.minimum(np.floor(p[:, :, 1].max(axis=1) - 0.5), size - 1).astype(np.int64)
    keep = (np.abs(det) > 1e-12) & (ymax >= ymin) & (p[:, :, 0].max(axis=1) >= 0) & (p[:, :, 0].min(axis=1) <= size)
    if not keep.any():
        return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)
    tris, fids, det, p, ymin, ymax = tris[keep], fids[keep], det[keep], p[keep], ymin[keep], ymax[keep]
    # Depth and shade are affine in (x, y) over a triangle: value = a * x + b * y + c.
    inv = 1.0 / det
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    a1, b1 = e2[:, 1] * inv, -e2[:, 0] * inv  # barycentric l1 = a1 x + b1 y + c1
    a2, b2 = -e1[:, 1] * inv, e1[:, 0] * inv  # barycentric l2 = a2 x + b2 y + c2
    c1 = -(a1 * p[:, 0, 0] + b1 * p[:, 0, 1])
    c2 = -(a2 * p[:, 0, 0] + b2 * p[:, 0, 1])

    def affine(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        v0, d1, d2 = v[tris[:, 0]], v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]
        return d1 * a1 + d2 * a2, d1 * b1 + d2 * b2, v0 + d1 * c1 + d2 * c2

    za, zb, zc = affine(z)
    sa, sb, sc = affine(shade)
    # One entry per (triangle, row): the x-range where the row's centre line crosses the triangle.
    h = ymax - ymin + 1
    t = np.repeat(np.arange(len(tris)), h)
    yc = (ymin[t] + (np.arange(t.size) - np.repeat(np.cumsum(h) - h, h))).astype(np.float64) + 0.5
    xl = np.full(t.size, np.inf)
    xr = np.full(t.size, -np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        xa, ya, xb, yb = p[t, i, 0], p[t, i, 1], p[t, j, 0], p[t, j, 1]
        crosses = ((yc - ya) * (yc - yb) <= 0.0) & (ya != yb)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = xa + (yc - ya) * (xb - xa) / (yb - ya)
        xl = np.where(crosses, np.minimum(xl, x), xl)
        xr = np.where(crosses, np.maximum(xr, x), xr)
    # A small tolerance so that pixel centres on an edge shared by two triangles are never missed.
    x0 = np.maximum(np.ceil(xl - 0.5 - 1e-7), 0).astype(np.int64)
    x1 = np.minimum(np.floor(xr - 0.5 + 1e-7), size - 1).astype(np.int64)
    n = np.where(np.isfinite(xl) & np.isfinite(xr), np.maximum(x1 - x0 + 1, 0), 0)
    rows = np.flatnonzero(n)
    t, yc, x0, n = t[rows], yc[rows], x0[rows], n[rows]
    # Expand spans to pixels, in chunks of about `chunk` pixels to bound memory.
    cum = np.cumsum(n)
    splits = np.unique(np.searchsorted(cum, np.arange(chunk, cum[-1], chunk), side="right")) if cum.size else []
    for sel in np.split(np.arange(n.size), splits):
        if sel.size == 0:
            continue
        cnt = n[sel]
        r = np.repeat(sel, cnt)
        col = x0[r] + (np.arange(r.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        tt = t[r]
        x = col + 0.5
        y = yc[r]
        pix = (y - 0.5).astype(np.int64) * size + col
        depth = za[tt] * x + zb[tt] * y + zc[tt]
        np.maximum.at(zbuf, pix, depth)
        win = depth >= zbuf[pix]
        pw, tw = pix[win], tt[win]
        fbuf[pw] = fids[tw]
        sbuf[pw] = sa[tw] * x[win] + sb[tw] * y[win] + sc[tw]
    return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Area-weighted vertex normals (smooth within a B-rep face, since faces share no vertices)."""
    v0, v1, v2 = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    fn = np.cross(v1 - v0, v2 - v0)
    vn = np.zeros_like(vertices)
    for j in range(3):
        np.add.at(vn, triangles[:, j], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-300)
    return vn, fn


def _polyline_segments(polylines: list) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) arrays of the straight segments of a list of (K, 3) polylines."""
    parts = [p for p in polylines if len(p) > 1]
    if not parts:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate([p[:-1] for p in parts]), np.concatenate([p[1:] for p in parts])


def _silhouette_segments(vertices: np.ndarray, triangles: np.ndarray, front: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mesh edges between a front- and a back-facing triangle of the same B-rep face (smooth silhouettes)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    tid = np.tile(np.arange(len(triangles)), 3)
    key = np.minimum(e[:, 0], e[:, 1]) * len(vertices) + np.maximum(e[:, 0], e[:, 1])
    order = np.argsort(key, kind="stable")
    k = key[order]
    same = k[1:] == k[:-1]
    i, j = order[:-1][same], order[1:][same]
    sil = front[tid[i]] != front[tid[j]]
    seg = e[i[sil]]
    return vertices[seg[:, 0]], vertices[seg[:, 1]]


def _edge_pixels(
    starts: np.ndarray, ends: np.ndarray, right: np.ndarray, up: np.ndarray, view: np.ndarray,
    centre: np.ndarray, scale: float, size: int, zbuf: np.ndarray, tol: float,
) -> np.ndarray:
    """Boolean image of the visible parts of 3D segments (hidden lines removed with the depth buffer).

    A sample is visible when some pixel of its 3x3 neighbourhood is empty or not nearer than the
    sample by more than `tol` (model units).
    """
    mask = np.zeros((size, size), dtype=bool)
    if starts.size == 0:
        return mask

    def project(p: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = p - centre
        return (q @ right) * scale + size / 2.0, -(q @ up) * scale + size / 2.0, q @ view

    x0, y0, d0 = project(starts)
    x1, y1, d1 = project(ends)
    n = np.ceil(np.maximum(np.abs(x1 - x0), np.abs(y1 - y0))).astype(np.int64) + 1
    seg = np.repeat(np.arange(n.size), n)
    f = (np.arange(seg.size) - np.repeat(np.cumsum(n) - n, n)) / np.maximum(n[seg] - 1, 1)
    xs = x0[seg] + (x1 - x0)[seg] * f
    ys = y0[seg] + (y1 - y0)[seg] * f
    ds = d0[seg] + (d1 - d0)[seg] * f
    col = np.floor(xs).astype(np.int64)
    row = np.floor(ys).astype(np.int64)
    ok = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    col, row, ds = col[ok], row[ok], ds[ok]
    # Nearest surface around each sample: min over the 3x3 neighbourhood (empty = -inf = visible).
    padded = np.pad(zbuf, 1, constant_values=-np.inf)
    near = np.full(col.shape, np.inf)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            near = np.minimum(near, padded[row + dr, col + dc])
    visible = ds + tol >= near
    row, col, xs, ys = row[visible], col[visible], xs[ok][visible], ys[ok][visible]
    # A line on the part's outline may fall on a background pixel: move it onto the nearest pixel
    # of the part (the dataset draws outlines on the part's own boundary pixels).
    filled = np.isfinite(zbuf)
    off = ~filled[row, col]
    if off.any():
        r0, c0, x, y = row[off], col[off], xs[off], ys[off]
        best_d = np.full(r0.shape, np.inf)
        best_r, best_c = r0.copy(), c0.copy()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            rr = np.clip(r0 + dr, 0, size - 1)
            cc = np.clip(c0 + dc, 0, size - 1)
            d = (cc + 0.5 - x) ** 2 + (rr + 0.5 - y) ** 2
            better = filled[rr, cc] & (d < best_d)
            best_d = np.where(better, d, best_d)
            best_r = np.where(better, rr, best_r)
            best_c = np.where(better, cc, best_c)
        row[off], col[off] = best_r, best_c
    mask[row, col] = True
    return mask


def _outline_pixels(zbuf: np.ndarray) -> np.ndarray:
    """Pixels of the part that touch the background (4-neighbourhood): the outer outline."""
    filled = np.isfinite(zbuf)
    bg = np.pad(~filled, 1, constant_values=True)
    touch = bg[:-2, 1:-1] | bg[2:, 1:-1] | bg[1:-1, :-2] | bg[1:-1, 2:]
    return filled & touch


def _dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """Thicken a 1-px line mask to about `width` px."""
    if width <= 1:
        return mask
    out = mask.copy()
    r = width - 1
    for dr in range(-(r // 2), r - r // 2 + 1):
        for dc in range(-(r // 2), r - r // 2 + 1):
            if dr == 0 and dc == 0:
                continue
            shifted = np.zeros_like(mask)
            shifted[max(dr, 0): mask.shape[0] + min(dr, 0), max(dc, 0): mask.shape[1] + min(dc, 0)] = mask[
                max(-dr, 0): mask.shape[0] + min(-dr, 0), max(-dc, 0): mask.shape[1] + min(-dc, 0)
            ]
            out |= shifted
    return out


_LUT_SIZE = 1024


def _shade_lut(style: RenderStyle) -> np.ndarray:
    """(_LUT_SIZE, 3) uint8 colours for |n . view| = 0 .. 1 (see RenderStyle.ambient)."""
    c = np.linspace(0.0, 1.0, _LUT_SIZE)
    ambient = max(float(style.ambient), 1e-6)
    factor = ((ambient + c) / (ambient + _ISO_COS)) ** (1.0 / max(float(style.gamma), 1e-3))
    rgb = np.asarray(style.face_rgb, dtype=float)[None, :] * factor[:, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


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
    right, up, view = _camera_axes(style)
    lo, hi = shape_bounds(shape)
    centre = (lo + hi) / 2.0
    scale = _fit_scale(lo, hi, right, up, size, style)
    mesh = shape_to_mesh(shape, linear_deflection=_DEFLECTION_PX / scale, angular_deflection=_ANGULAR_DEFLECTION)
    q = mesh.vertices - centre
    shift = np.asarray(style.shift, dtype=float) * size
    xy = np.stack([(q @ right) * scale + size / 2.0 + shift[0], -(q @ up) * scale + size / 2.0 + shift[1]], axis=1)
    depth = q @ view
    vn, fn = _vertex_normals(mesh.vertices, mesh.triangles)
    shade = np.abs(vn @ view)
    # Back faces are always covered by front faces of a closed solid: skip them (about half the work).
    front = fn @ view > -1e-12 * np.maximum(np.linalg.norm(fn, axis=1), 1e-300)
    zbuf, fbuf, sbuf = _rasterise(xy, depth, shade, mesh.triangles[front], mesh.face_ids[front], size)
    filled = fbuf >= 0
    img = _shade_lut(style)[np.clip(np.rint(sbuf * (_LUT_SIZE - 1)), 0, _LUT_SIZE - 1).astype(np.intp)]
    img[~filled] = np.asarray(style.background_rgb, dtype=np.uint8)
    edges = np.zeros((size, size), dtype=bool)
    if style.draw_edges:
        centre_shifted = centre - (shift[0] * right - shift[1] * up) / scale
        args = (right, up, view, centre_shifted, scale, size, zbuf, 2.0 / scale)
        edges = _edge_pixels(*_polyline_segments(mesh.edges), *args)
        if style.draw_silhouettes:
            # Smooth silhouettes: the outline, plus mesh edges between front and back triangles inside
            # the part (kept off the outline, which they would double: the mesh chord lies inside it).
            outline = _outline_pixels(zbuf)
            silhouettes = _edge_pixels(*_silhouette_segments(mesh.vertices, mesh.triangles, front), *args)
            edges |= outline | (silhouettes & ~_dilate(outline, 3))
        # Lines are drawn on the part's own pixels, as in the dataset (the outline stays inside it).
        edges &= filled
        edges = _dilate(edges, int(style.edge_width))
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
    fields = {f.name for f in dataclasses.fields(RenderStyle)}
    unknown = set(style) - fields
    if unknown:
        raise ValueError(f"unknown render style fields {sorted(unknown)}; valid fields: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in style.items()}
    return render_mesh(shape, size, RenderStyle(**kw)).image


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
    from cadcoder.sandbox import Sandbox

    kwargs = dict(size=size, **(style.to_dict() if style is not None else {}))
    if sandbox is None:
        with Sandbox(num_workers=1, timeout=timeout) as box:
            result = box.run(code, task=render_task, **kwargs)
    else:
        result = sandbox.run(code, task=render_task, **kwargs)
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

    def rgb(im: Image.Image) -> Image.Image:
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, im).convert("RGB")
        return im.convert("RGB")

    a, b = rgb(left), rgb(right)
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
    import sys

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
