"""Procedural CadQuery programs in the GenCAD-Code style, and a resumable synthetic dataset builder.

GenCAD-Code programs are machine-written from DeepCAD sketch-and-extrude sequences. This module
re-creates that process rather than templating the text:

* every sketch plane comes from DeepCAD's polar parameterisation ``(theta, phi, gamma)`` evaluated
  with numpy trigonometry, so the plane vectors print exactly like the dataset's
  (``cq.Vector(1.0, 6.123233995736766e-17, -6.123233995736766e-17)``);
* plane origins and extrude distances are integer multiples of 1/128; sketch coordinates are
  ``scale / 95 * k`` for integer ``k`` (this operation order reproduces the dataset's float reprs
  bit for bit, e.g. ``0.6609375000000001``), with ``scale`` a multiple of 1/128 and the profile
  normalised so its farthest point from the start vertex sits at ``k = 95``;
* loops start at their left-most (then lowest) vertex and run counter-clockwise; the first edge is
  drawn by ``close()``, the rest by ``lineTo`` / ``threePointArc``; circles are ``moveTo(c).circle(r)``;
* bodies are combined with ``union`` / ``cut`` / ``intersect``; extrudes are one-sided, two-sided
  (``both=True``) or asymmetric (the dataset's ``solid_temp`` idiom).

Shapes are built as a small feature grammar (base body, bosses, pockets, through-cuts, adjacent blocks,
intersections, repeated sketches) over many profile families, with continuous random sizes, so the
corpus is not a handful of templates; ``corpus_stats`` measures how true that is.

``generate_program(rng, complexity=...)`` is pure python + numpy and deterministic by seed.
``build_synthetic_dataset`` executes, validates, deduplicates and renders every program through
:class:`cadcoder.sandbox.Sandbox` and writes a resumable sharded dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin  # noqa: F401  (PNG encoding inside the jailed worker)

from cadcoder.schema import (  # noqa: F401  (re-exported: the builder's names for the schema)
    CHARS_PER_TOKEN,
    GENCAD_COLUMNS,
    GENCAD_PROMPT,
    SPLIT_NAMES,
    approx_token_count,
    gencad_features,
)

# The sandbox's jailed workers cannot import lazily: the render task's modules load here, at import time.
try:
    from cadcoder import render as _render
except ImportError:  # no OpenCascade: programs can still be written (generate_program), not built or rendered
    _render = None

# ---------------------------------------------------------------------------------------------
# Constants of the GenCAD-Code / DeepCAD format
# ---------------------------------------------------------------------------------------------
SKETCH_UNITS = 95  # sketch coordinates are (scale / 95) * k
GRID = 128  # origins, extrude distances and sketch scales are multiples of 1/128
MAX_SCALE_STEPS = 192  # sketch scale <= 1.5 (DeepCAD fits models in [-0.75, 0.75]^3)
COMPLEXITY_LEVELS = (0, 1, 2, 3)
MAX_LOOPS = 10  # per model, as in GenCAD-Code
VALUE_RANGE = (-1.0, 1.5)  # every number of a GenCAD-Code program lies in this range

# (theta, phi, gamma) in quarter turns -> DeepCAD plane; weights follow the real sample
# (normals (0,0,1) ~ 44 %, (0,-1,0) ~ 48 %, (1,0,0) ~ 6 %, (0,1,0) ~ 2 %) plus rare others.
_ORIENTATIONS: tuple[tuple[tuple[int, int, int], float], ...] = (
    ((0, 0, 0), 0.42),  # normal +z, x +x
    ((1, -1, 1), 0.44),  # normal -y, x +x
    ((1, 0, 1), 0.05),  # normal +x, x +y
    ((1, 1, 1), 0.03),  # normal +y, x -x
    ((0, 0, 1), 0.01),  # normal +z, x +y
    ((2, 0, 0), 0.015),  # normal -z, x -x
    ((1, 2, 1), 0.015),  # normal -x, x -y
    ((1, -1, -1), 0.01),  # normal -y, x -x
    ((1, 0, -1), 0.01),  # normal +x, x -y
)

_STEP_PROBS = np.array([0.55, 0.24, 0.08, 0.06, 0.03, 0.02, 0.01, 0.01])  # 1..8 sketch/extrude steps
_HOLE_PROBS = np.array([0.60, 0.22, 0.07, 0.04, 0.04, 0.015, 0.01, 0.005])  # 0..7 inner loops


def _polar_plane(theta: float, phi: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """DeepCAD's ``polar_parameterization_inverse``: (normal, x axis) of a sketch plane."""
    normal = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])
    ry = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    rz = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1]])
    ref_x = rz.dot(ry.dot(np.array([1, 0, 0])))
    ref_y = np.cross(normal, ref_x)
    x_axis = ref_x * np.cos(gamma) + ref_y * np.sin(gamma)
    return normal, x_axis


def _fmt(value: float) -> str:
    """Python float repr, the dataset's number format (negative zero printed as 0.0)."""
    return repr(float(value) + 0.0)


@dataclass(frozen=True)
class _Frame:
    """An axis-aligned sketch plane: exact printed vectors plus integer axes for bookkeeping."""

    x_text: str
    n_text: str
    x: np.ndarray
    y: np.ndarray
    n: np.ndarray


def _make_frame(quarters: tuple[int, int, int]) -> _Frame:
    t, p, g = (q * np.pi / 2 for q in quarters)
    normal, x_axis = _polar_plane(t, p, g)
    n = np.round(normal).astype(int)
    x = np.round(x_axis).astype(int)
    return _Frame(
        x_text=", ".join(_fmt(v) for v in x_axis),
        n_text=", ".join(_fmt(v) for v in normal),
        x=x,
        y=np.cross(n, x),  # cadquery: yDir = zDir x xDir
        n=n,
    )


_FRAMES = tuple(_make_frame(q) for q, _ in _ORIENTATIONS)
_FRAME_WEIGHTS = np.array([w for _, w in _ORIENTATIONS]) / sum(w for _, w in _ORIENTATIONS)


# ---------------------------------------------------------------------------------------------
# Sketch profiles (integer sketch units)
# ---------------------------------------------------------------------------------------------
@dataclass
class _Loop:
    """A closed loop in integer sketch units: a circle or a polygon with optional arc edges.

    For polygons ``arcs[i]`` is the arc mid point (float units) of edge ``verts[i] -> verts[i+1]``
    or None for a line.
    """

    circle: tuple[int, int, int] | None = None  # (cx, cy, r)
    verts: list[tuple[int, int]] = field(default_factory=list)
    arcs: list[tuple[float, float] | None] = field(default_factory=list)

    def points(self, n_arc: int = 8) -> np.ndarray:
        """Dense boundary points (for containment tests and bounding boxes)."""
        if self.circle is not None:
            cx, cy, r = self.circle
            a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
        out: list[tuple[float, float]] = []
        m = len(self.verts)
        for i in range(m):
            a, b = np.array(self.verts[i], float), np.array(self.verts[(i + 1) % m], float)
            mid = self.arcs[i]
            out.append(tuple(a))
            if mid is not None and i != 0:  # edge 0 is drawn by close(): always a line
                out.extend(_arc_points(a, np.array(mid), b, n_arc))
        return np.array(out)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        pts = self.points()
        return pts.min(0), pts.max(0)


def _arc_points(a: np.ndarray, m: np.ndarray, b: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Interior points of the circular arc through a, m, b."""
    center = _circumcenter(a, m, b)
    if center is None:
        return [tuple(m)]
    r = np.linalg.norm(a - center)
    ang = [math.atan2(*(p - center)[::-1]) for p in (a, m, b)]
    a0, am, a1 = ang
    # sweep from a0 to a1 passing through am
    sweep = (a1 - a0) % (2 * np.pi)
    if not ((am - a0) % (2 * np.pi) < sweep):
        sweep -= 2 * np.pi
    ts = a0 + sweep * np.linspace(0, 1, n + 2)[1:-1]
    return [(center[0] + r * math.cos(t), center[1] + r * math.sin(t)) for t in ts]


def _circumcenter(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    d = 2 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
    if abs(d) < 1e-9:
        return None
    ux = ((a @ a) * (b[1] - c[1]) + (b @ b) * (c[1] - a[1]) + (c @ c) * (a[1] - b[1])) / d
    uy = ((a @ a) * (c[0] - b[0]) + (b @ b) * (a[0] - c[0]) + (c @ c) * (b[0] - a[0])) / d
    return np.array([ux, uy])


def _signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _canonical_polygon(verts: np.ndarray, bulges: list[float]) -> tuple[np.ndarray, list[float]]:
    """Counter-clockwise, starting at the left-most (then lowest) vertex, like DeepCAD loops."""
    if _signed_area(verts) < 0:
        verts = verts[::-1].copy()
        # edge i (v_i -> v_i+1) of the reversed polygon is edge (m-2-i) of the original
        bulges = [bulges[(len(bulges) - 2 - i) % len(bulges)] for i in range(len(bulges))]
    order = np.lexsort((verts[:, 1], verts[:, 0]))
    start = int(order[0])
    return np.roll(verts, -start, 0), bulges[start:] + bulges[:start]


def _arc_mid(a: np.ndarray, b: np.ndarray, bulge: float) -> np.ndarray:
    """Mid point of an arc on chord a->b; bulge > 0 bulges outwards of a CCW polygon (1 = half circle)."""
    d = b - a
    outward = np.array([d[1], -d[0]]) / (np.linalg.norm(d) + 1e-12)
    return (a + b) / 2 + bulge * np.linalg.norm(d) / 2 * outward


def _polygon_loop(verts: np.ndarray, bulges: list[float] | None = None, scale: float = 1.0,
                  offset: tuple[float, float] = (0.0, 0.0)) -> _Loop | None:
    """Round a float polygon (already in sketch units after ``scale``/``offset``) to a _Loop."""
    bulges = list(bulges) if bulges is not None else [0.0] * len(verts)
    pts = np.round(np.asarray(verts, float) * scale + np.asarray(offset)).astype(int)
    keep_v, keep_b = [], []
    for i in range(len(pts)):
        if keep_v and tuple(pts[i]) == keep_v[-1]:
            continue
        keep_v.append(tuple(pts[i]))
        keep_b.append(bulges[i])
    while len(keep_v) > 1 and keep_v[0] == keep_v[-1]:
        keep_v.pop()
        keep_b.pop()
    if len(keep_v) < 3:
        return None
    v = np.array(keep_v, float)
    if abs(_signed_area(v)) < 4.0:
        return None
    v, b = _canonical_polygon(v, keep_b)
    arcs: list[tuple[float, float] | None] = []
    for i in range(len(v)):
        if b[i] != 0.0 and i != 0:
            a, c = v[i], v[(i + 1) % len(v)]
            if np.linalg.norm(c - a) < 2:
                arcs.append(None)
                continue
            m = _arc_mid(a, c, b[i])
            arcs.append((float(m[0]), float(m[1])))
        else:
            arcs.append(None)
    return _Loop(verts=[(int(x), int(y)) for x, y in v], arcs=arcs)


# --- outer profile families: return (float vertices, bulges) in an arbitrary frame --------------
def _fam_rect(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    w, h = 1.0, float(rng.choice([rng.uniform(0.03, 1.0), rng.uniform(0.3, 1.0), 1.0]))
    v = np.array([[0, 0], [w, 0], [w, h], [0, h]])
    return (v if rng.random() < 0.6 else v[:, ::-1] * [1, 1]), [0.0] * 4


def _fam_skyline(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Orthogonal x-monotone polygon: L, T, U, steps, notched plates."""
    n = int(rng.integers(2, 6))
    xs = np.sort(rng.choice(np.arange(1, 20), n - 1, replace=False)) / 20.0
    xs = np.concatenate([[0.0], xs, [1.0]])
    tops = rng.uniform(0.15, 1.0, n)
    bottoms = np.where(rng.random(n) < 0.25, rng.uniform(0.0, 0.5, n) * tops, 0.0)
    if rng.random() < 0.5:
        bottoms[:] = 0.0
    pts = []
    for i in range(n):  # bottom chain left -> right
        pts += [(xs[i], bottoms[i]), (xs[i + 1], bottoms[i])]
    for i in reversed(range(n)):  # top chain right -> left
        pts += [(xs[i + 1], tops[i]), (xs[i], tops[i])]
    v = np.array(pts)
    if rng.random() < 0.4:
        v = v[:, ::-1]
    if rng.random() < 0.3:
        v[:, 1] = -v[:, 1]
    return v, [0.0] * len(v)


def _fam_regular(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    k = int(rng.choice([3, 5, 6, 6, 8]))
    a0 = rng.choice([0.0, np.pi / k, rng.uniform(0, 2 * np.pi)])
    a = a0 + 2 * np.pi * np.arange(k) / k
    sx = 1.0 if rng.random() < 0.7 else rng.uniform(0.5, 1.0)
    return np.stack([np.cos(a), sx * np.sin(a)], 1), [0.0] * k


def _fam_random_polygon(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Random star-shaped polygon (convex when the radii are equal)."""
    k = int(rng.integers(3, 10))
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = rng.uniform(0.55, 1.0, k) if rng.random() < 0.5 else np.ones(k)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1), [0.0] * k


def _fam_triangle_trapezoid(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    w, h = 1.0, rng.uniform(0.2, 1.0)
    kind = rng.integers(0, 3)
    if kind == 0:  # right triangle
        v = np.array([[0, 0], [w, 0], [0, h]])
    elif kind == 1:  # general triangle
        v = np.array([[0, 0], [w, 0], [rng.uniform(-0.3, 1.2), h]])
    else:  # trapezoid / parallelogram
        a, b = rng.uniform(0, 0.45), rng.uniform(0, 0.45)
        v = np.array([[0, 0], [w, 0], [w - b, h], [a, h]])
    return v, [0.0] * len(v)


def _fam_slot(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Obround / D shape / rounded ends: a rectangle with one or two half-circle (or shallower) ends."""
    w, h = 1.0, rng.uniform(0.1, 0.7)
    v = np.array([[0, 0], [w, 0], [w, h], [0, h]])
    b = [0.0, 1.0, 0.0, 1.0]
    r = rng.random()
    if r < 0.3:
        b[3] = 0.0
    elif r < 0.5:
        b = [0.0, rng.uniform(0.2, 0.9), 0.0, rng.uniform(0.2, 0.9)]
    if rng.random() < 0.3:
        b[2] = rng.choice([-1, 1]) * rng.uniform(0.1, 0.4)
    return v, b


def _fam_rounded_rect(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Rectangle with some corners replaced by quarter arcs (fillets) or chamfers."""
    w, h = 1.0, rng.uniform(0.3, 1.0)
    r = rng.uniform(0.05, 0.45) * min(w, h)
    corners = [(w, 0), (w, h), (0, h), (0, 0)]
    pts: list[tuple[float, float]] = []
    bul: list[float] = []
    # walk CCW starting at the bottom edge; each corner is cut into two points joined by an arc or a chamfer
    dirs_in = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    arc_bulge = math.tan(math.pi / 8)  # quarter-circle arc as a bulge on its chord
    for (cx, cy), (dx, dy), (ex, ey) in zip(corners, dirs_in, dirs_in[1:] + dirs_in[:1]):
        mode = rng.choice(["arc", "arc", "chamfer", "sharp"])
        if mode == "sharp":
            pts.append((cx, cy))
            bul.append(0.0)
        else:
            pts.append((cx - dx * r, cy - dy * r))
            bul.append(arc_bulge if mode == "arc" else 0.0)
            pts.append((cx + ex * r, cy + ey * r))
            bul.append(0.0)
    return np.array(pts), bul


def _fam_arc_polygon(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """A convex polygon with some edges replaced by outward or gentle inward arcs."""
    v, _ = _fam_regular(rng) if rng.random() < 0.5 else _fam_rect(rng)
    b = [0.0 if rng.random() < 0.55 else float(rng.choice([1, 1, -1]) * rng.uniform(0.15, 0.6))
         for _ in range(len(v))]
    return v, b


_FAMILIES = {
    "rect": (_fam_rect, 0.36),
    "circle": (None, 0.24),
    "skyline": (_fam_skyline, 0.12),
    "regular": (_fam_regular, 0.06),
    "random_polygon": (_fam_random_polygon, 0.05),
    "triangle": (_fam_triangle_trapezoid, 0.07),
    "slot": (_fam_slot, 0.04),
    "rounded_rect": (_fam_rounded_rect, 0.04),
    "arc_polygon": (_fam_arc_polygon, 0.02),
}
_SIMPLE_FAMILIES = ("rect", "circle", "triangle", "regular")


def _outer_loop(rng: np.random.Generator, family: str) -> _Loop:
    """An outer loop normalised like DeepCAD: start vertex at (0, 0), farthest point at 95 units."""
    if family == "circle":
        r = int(rng.choice([48, 48, 48, 47]))
        return _Loop(circle=(48, 0, r))
    for _ in range(20):
        verts, bulges = _FAMILIES[family][0](rng)
        verts = np.asarray(verts, float)
        v, b = _canonical_polygon(verts, list(bulges))
        v = v - v[0]
        # bound by the vertices and the arc mid points, like DeepCAD's bbox of curve points
        extent = np.abs(v).max()
        if extent <= 0:
            continue
        loop = _polygon_loop(v, b, scale=SKETCH_UNITS / extent)
        if loop is not None:
            sx, sy = loop.verts[0]
            if (sx, sy) != (0, 0):  # rounding moved the start: re-anchor
                loop.verts = [(x - sx, y - sy) for x, y in loop.verts]
                loop.arcs = [None if m is None else (m[0] - sx, m[1] - sy) for m in loop.arcs]
            return loop
    return _Loop(circle=(48, 0, 48))


# --- inner loops (holes) ----------------------------------------------------------------------
def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon for many points."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cond = (y0 > y) != (y1 > y)
    xint = x0 + (y - y0) * (x1 - x0) / np.where(y1 - y0 == 0, 1e-12, y1 - y0)
    return (cond & (x < xint)).sum(1) % 2 == 1


def _min_dist(points: np.ndarray, poly: np.ndarray) -> float:
    """Smallest distance from points to the edges of a closed polygon."""
    a = poly
    b = np.roll(poly, -1, 0)
    ab = b - a
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0, 1)
    proj = a[None] + t[..., None] * ab[None]
    return float(np.sqrt(((points[:, None, :] - proj) ** 2).sum(-1)).min())


def _fits(hole: _Loop, outer: np.ndarray, others: list[np.ndarray], margin: float) -> bool:
    hp = hole.points()
    if not _inside(hp, outer).all() or _min_dist(hp, outer) < margin:
        return False
    if _inside(outer, hp).any():
        return False
    for o in others:
        if _inside(hp, o).any() or _inside(o, hp).any() or _min_dist(hp, o) < margin:
            return False
    return True


def _hole_shape(rng: np.random.Generator, cx: float, cy: float, size: float) -> _Loop | None:
    """A hole of about ``size`` units centred at (cx, cy): circle (mostly), rectangle, slot or polygon."""
    kind = rng.choice(["circle"] * 14 + ["rect"] * 4 + ["slot", "poly"])
    size = max(size, 6.0)  # holes below ~6 % of the sketch are invisible at 448 px
    if kind == "circle":
        r = max(3, int(round(size / 2)))
        return _Loop(circle=(int(round(cx)), int(round(cy)), r))
    if kind == "rect":
        w, h = size, size * rng.uniform(0.3, 1.0)
        if rng.random() < 0.5:
            w, h = h, w
        v = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
        return _polygon_loop(v, offset=(cx, cy))
    if kind == "slot":
        w, h = size, size * rng.uniform(0.25, 0.6)
        v = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
        if rng.random() < 0.5:
            v = v[:, ::-1]
        return _polygon_loop(v, [0.0, 1.0, 0.0, 1.0], offset=(cx, cy))
    k = int(rng.choice([3, 4, 5, 6]))
    a = rng.uniform(0, np.pi) + 2 * np.pi * np.arange(k) / k
    v = np.stack([np.cos(a), np.sin(a)], 1) * size / 2
    return _polygon_loop(v, offset=(cx, cy))


def _add_holes(rng: np.random.Generator, outer: _Loop, n_holes: int) -> list[_Loop]:
    """Place up to ``n_holes`` non-overlapping inner loops: concentric, symmetric patterns or random."""
    if n_holes <= 0:
        return []
    opts = outer.points()
    lo, hi = opts.min(0), opts.max(0)
    span = hi - lo
    center = (lo + hi) / 2
    holes: list[_Loop] = []
    placed: list[np.ndarray] = []
    margin = 1.5

    def try_add(h: _Loop | None) -> bool:
        if h is not None and _fits(h, opts, placed, margin):
            holes.append(h)
            placed.append(h.points())
            return True
        return False

    pattern = rng.random()
    if outer.circle is not None and pattern < 0.55:
        cx, cy, r = outer.circle
        if rng.random() < 0.75:  # concentric hole (washers, tubes, flanges)
            try_add(_Loop(circle=(cx, cy, int(rng.integers(3, max(4, r - 4))))))
        if len(holes) < n_holes and n_holes >= 2:  # bolt circle
            k = int(min(n_holes - len(holes), rng.choice([3, 4, 4, 6, 8])))
            inner_r = holes[0].circle[2] if holes else 0
            for _ in range(8):
                hr = int(rng.integers(2, max(3, (r - inner_r) // 4)))
                rad = rng.uniform(inner_r + hr + 3, r - hr - 3) if r - hr - 3 > inner_r + hr + 3 else None
                if rad is None:
                    continue
                a0 = rng.choice([0.0, np.pi / k, np.pi / 2])
                ring = [_Loop(circle=(int(round(cx + rad * np.cos(a0 + 2 * np.pi * i / k))),
                                      int(round(cy + rad * np.sin(a0 + 2 * np.pi * i / k))), hr))
                        for i in range(k)]
                saved = (list(holes), list(placed))
                if all(try_add(h) for h in ring):
                    break
                holes[:], placed[:] = saved
    elif pattern < 0.75 and n_holes >= 2:  # symmetric pattern: mirrored pair or 2x2 grid
        for _ in range(10):
            size = float(rng.uniform(0.06, 0.3) * span.min())
            fx, fy = rng.uniform(0.15, 0.42, 2)
            grid = n_holes >= 4 and rng.random() < 0.6
            if grid:
                cs = [(center[0] + sx * fx * span[0], center[1] + sy * fy * span[1])
                      for sx in (-1, 1) for sy in (-1, 1)]
            elif span[0] >= span[1]:
                cs = [(center[0] - fx * span[0], center[1]), (center[0] + fx * span[0], center[1])]
            else:
                cs = [(center[0], center[1] - fy * span[1]), (center[0], center[1] + fy * span[1])]
            proto = np.random.default_rng(int(rng.integers(1 << 30)))
            state = proto.bit_generator.state
            saved = (list(holes), list(placed))
            ok = True
            for c in cs:  # the same shape at every position
                proto.bit_generator.state = state
                if not try_add(_hole_shape(proto, c[0], c[1], size)):
                    ok = False
                    break
            if ok:
                break
            holes[:], placed[:] = saved
    tries = 0
    while len(holes) < n_holes and tries < 12 * n_holes:  # random placements for the rest
        tries += 1
        size = float(rng.uniform(0.05, 0.5 if not holes else 0.3) * span.min())
        c = lo + rng.uniform(0.1, 0.9, 2) * span
        if not holes and rng.random() < 0.4:
            c = center
        try_add(_hole_shape(rng, c[0], c[1], size))
    holes.sort(key=lambda h: tuple(h.bbox()[0]))
    return holes


# ---------------------------------------------------------------------------------------------
# Program assembly
# ---------------------------------------------------------------------------------------------
@dataclass
class _Sketch:
    frame: _Frame
    origin: np.ndarray  # world, multiples of 1/128
    scale_steps: int  # sketch scale = steps / 128
    loops: list[_Loop]
    extrude_steps: int  # signed, distance = steps / 128
    both: bool = False
    op: str = "union"  # how it joins the running solid (ignored for the first)
    second_steps: int | None = None  # asymmetric two-sided extrude (the dataset's solid_temp idiom)

    def world_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world bounding box of the extruded body."""
        s = self.scale_steps / GRID / SKETCH_UNITS
        pts2 = np.concatenate([lp.points() for lp in self.loops[:1]])
        lo2, hi2 = pts2.min(0) * s, pts2.max(0) * s
        d = self.extrude_steps / GRID
        ws = [0.0, d]
        if self.both:
            ws = [-abs(d), abs(d)]
        if self.second_steps is not None:
            ws.append(self.second_steps / GRID)
        corners = []
        for u in (lo2[0], hi2[0]):
            for v in (lo2[1], hi2[1]):
                for w in (min(ws), max(ws)):
                    corners.append(self.origin + u * self.frame.x + v * self.frame.y + w * self.frame.n)
        c = np.array(corners)
        return c.min(0), c.max(0)


def _q(x: float) -> int:
    """Nearest grid step (1/128)."""
    return int(round(x * GRID))


def _loop_code(loop: _Loop, wp: str, scale: float) -> str:
    def num(k: float) -> str:
        return _fmt(scale / SKETCH_UNITS * k)

    if loop.circle is not None:
        cx, cy, r = loop.circle
        return f"{wp}.moveTo({num(cx)}, {num(cy)}).circle({num(r)})"
    v = loop.verts
    m = len(v)
    parts = [f"{wp}.moveTo({num(v[1][0])}, {num(v[1][1])})"]
    for i in range(1, m):
        b = v[(i + 1) % m]
        mid = loop.arcs[i]
        if mid is None:
            parts.append(f"lineTo({num(b[0])}, {num(b[1])})")
        else:
            parts.append(f"threePointArc(({num(mid[0])}, {num(mid[1])}), ({num(b[0])}, {num(b[1])}))")
    parts.append("close()")
    return ".".join(parts)


def _render_program(sketches: list[_Sketch]) -> str:
    """Write the sketches as a GenCAD-Code program."""
    out = ["import cadquery as cq"]
    loop_id = 0
    for i, sk in enumerate(sketches):
        o = ", ".join(_fmt(c) for c in sk.origin)
        wp_line = (f"wp_sketch{i} = cq.Workplane(cq.Plane(cq.Vector({o}), cq.Vector({sk.frame.x_text}), "
                   f"cq.Vector({sk.frame.n_text})))")
        scale = sk.scale_steps / GRID
        names = [f"loop{loop_id + j}" for j in range(len(sk.loops))]
        loop_lines = [f"{nm}={_loop_code(lp, f'wp_sketch{i}', scale)}" for nm, lp in zip(names, sk.loops)]
        loop_id += len(sk.loops)
        adds = "".join(f".add({nm})" for nm in names)
        d = _fmt(sk.extrude_steps / GRID)
        ext = f"extrude({d}, both=True)" if sk.both else f"extrude({d})"
        out.append(f"# Generating a workplane for sketch {i}")
        out.append(wp_line)
        out.extend(loop_lines)
        out.append(f"solid{i}=wp_sketch{i}{adds}.{ext}")
        if sk.second_steps is None:
            out.append(f"solid=solid{i}" if i == 0 else f"solid=solid.{sk.op}(solid{i})")
            continue
        d2 = f"extrude({_fmt(sk.second_steps / GRID)})"
        if i == 0:
            out.append("solid=solid0")
            out += [wp_line, *loop_lines, f"solid0=wp_sketch0{adds}.{d2}", "solid=solid.union(solid0)"]
        else:
            out.append(f"solid_temp=solid{i}")
            out += [wp_line, *loop_lines, f"solid{i}=wp_sketch{i}{adds}.{d2}",
                    f"solid_temp=solid_temp.union(solid{i})", f"solid=solid.{sk.op}(solid_temp)"]
    return "\n".join(out) + "\n"


def _profile(rng: np.random.Generator, complexity: int, max_holes: int | None = None) -> list[_Loop]:
    names = list(_FAMILIES)
    if complexity == 0:
        names = list(_SIMPLE_FAMILIES)
    w = np.array([_FAMILIES[n][1] for n in names])
    family = str(rng.choice(names, p=w / w.sum()))
    outer = _outer_loop(rng, family)
    if complexity == 0:
        n_holes = int(rng.random() < 0.35)
    else:
        n_holes = int(rng.choice(len(_HOLE_PROBS), p=_HOLE_PROBS / _HOLE_PROBS.sum()))
    if max_holes is not None:
        n_holes = min(n_holes, max_holes)
    n_holes = min(n_holes, MAX_LOOPS - 1)
    return [outer, *_add_holes(rng, outer, n_holes)]


def _pick_frame(rng: np.random.Generator, complexity: int) -> _Frame:
    if complexity == 0:
        return _FRAMES[int(rng.choice([0, 1]))]
    return _FRAMES[int(rng.choice(len(_FRAMES), p=_FRAME_WEIGHTS))]


def _extrude_steps(rng: np.random.Generator, limit: int) -> int:
    """Extrude distance in 1/128 steps: thin plates, medium blocks and tall prisms, like DeepCAD."""
    r = rng.random()
    if r < 0.3:
        k = rng.integers(1, 17)
    elif r < 0.55:
        k = rng.integers(16, 41)
    elif r < 0.8:
        k = rng.integers(32, 73)
    else:
        k = rng.integers(64, 97)
    return int(max(1, min(k, limit)))


def _uv_range(frame: _Frame, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Ranges of a world box along the frame's x, y and normal axes."""
    out = []
    for ax in (frame.x, frame.y, frame.n):
        vals = [lo @ ax, hi @ ax]
        out += [min(vals), max(vals)]
    return tuple(out)  # type: ignore[return-value]


def _place(frame: _Frame, u0: float, v0: float, w0: float) -> np.ndarray:
    """World origin (on the 1/128 grid) of a plane whose start vertex sits at (u0, v0, w0) in frame axes."""
    world = u0 * frame.x + v0 * frame.y + w0 * frame.n
    return np.array([_q(c) / GRID for c in world])


def _profile_extent(loops: list[_Loop]) -> tuple[np.ndarray, np.ndarray]:
    pts = np.concatenate([lp.points() for lp in loops])
    return pts.min(0), pts.max(0)


def _cap_scale(scale: int, loops: list[_Loop]) -> int:
    """Largest scale <= ``scale`` keeping every sketch value in GenCAD's range [-1, 1.5]."""
    lo, hi = _profile_extent(loops)
    most_negative = max(-float(lo.min()), 1e-9)
    most_positive = max(float(hi.max()), 1e-9)
    cap = min(SKETCH_UNITS / most_negative, 1.5 * SKETCH_UNITS / most_positive) * GRID
    return int(max(1, min(scale, math.floor(cap))))


def _base_sketch(rng: np.random.Generator, complexity: int) -> _Sketch:
    frame = _pick_frame(rng, complexity)
    loops = _profile(rng, complexity)
    r = rng.random()
    scale = _cap_scale(int(rng.integers(128, 193)) if r < 0.6 else int(rng.integers(24, 129)), loops)
    e = _extrude_steps(rng, 192)
    lo2, hi2 = _profile_extent(loops)
    s = scale / GRID / SKETCH_UNITS
    both = complexity > 0 and rng.random() < 0.06
    if both:
        e = max(1, e // 2)
    sign = -1 if (complexity > 0 and rng.random() < 0.08) else 1
    # centre the body at the world origin, as DeepCAD's normalisation does
    cu, cv = -(lo2 + hi2) / 2 * s
    cw = 0.0 if both else -sign * e / GRID / 2
    if rng.random() < 0.35:
        cw = 0.0
    origin = _place(frame, cu, cv, cw)
    return _Sketch(frame, origin, scale, loops, sign * e, both=both)


def _feature(rng: np.random.Generator, box: tuple[np.ndarray, np.ndarray], base: _Sketch,
             complexity: int) -> _Sketch:
    """One further sketch/extrude placed relative to the running bounding box."""
    lo, hi = box
    kind = rng.choice(["boss", "pocket", "through", "adjacent", "repeat", "intersect"],
                      p=[0.38, 0.14, 0.06, 0.20, 0.18, 0.04] if complexity >= 3 else
                      [0.38, 0.30, 0.12, 0.15, 0.05, 0.0])
    if kind == "repeat":  # same sketch again (DeepCAD has many), different distance or offset
        e = _extrude_steps(rng, 192) * int(np.sign(base.extrude_steps) or 1)
        origin = base.origin.copy()
        if rng.random() < 0.5:
            origin = origin + base.frame.n * (base.extrude_steps / GRID)
        return _Sketch(base.frame, origin, base.scale_steps, base.loops, e, op="union")
    # a face too small to sketch on (the side of a thin plate) -> try another plane, then the base one
    candidates = [base.frame if rng.random() < 0.55 else _pick_frame(rng, complexity),
                  _pick_frame(rng, complexity), base.frame]
    for frame in candidates:
        u_lo, u_hi, v_lo, v_hi, w_lo, w_hi = _uv_range(frame, lo, hi)
        fw, fh, depth = u_hi - u_lo, v_hi - v_lo, w_hi - w_lo
        if min(fw, fh) >= 12 / GRID:
            break
    if depth <= 2 / GRID and kind in ("pocket", "through", "intersect"):
        kind = "boss"
    loops = _profile(rng, complexity, max_holes=2 if kind != "intersect" and rng.random() < 0.3 else 0)
    plo, phi = _profile_extent(loops)
    pw, ph = phi - plo
    if kind == "intersect":
        frac = rng.uniform(0.9, 1.15)
    elif kind == "adjacent":
        frac = rng.uniform(0.3, 1.0)
    else:
        frac = rng.uniform(0.15, 0.85)
    s_units = frac * min(fw / max(pw, 1), fh / max(ph, 1))  # world per unit
    scale = _cap_scale(int(np.clip(math.floor(s_units * SKETCH_UNITS * GRID), 1, MAX_SCALE_STEPS)), loops)
    s = scale / GRID / SKETCH_UNITS
    bw, bh = pw * s, ph * s
    # position of the profile's box inside the face (centred-ish, sometimes overhanging for notches)
    if kind == "intersect":
        pu, pv = (u_lo + u_hi - bw) / 2, (v_lo + v_hi - bh) / 2
    else:
        slack_u, slack_v = max(fw - bw, 0), max(fh - bh, 0)
        if rng.random() < 0.5:
            pu, pv = u_lo + slack_u / 2, v_lo + slack_v / 2
        else:
            pu, pv = u_lo + rng.uniform(0, 1) * slack_u, v_lo + rng.uniform(0, 1) * slack_v
        if kind == "pocket" and rng.random() < 0.25:  # notch at an edge
            pu = u_lo - bw / 2 if rng.random() < 0.5 else u_hi - bw / 2
    u0, v0 = pu - plo[0] * s, pv - plo[1] * s
    depth_steps = max(1, _q(depth))
    top = rng.random() < 0.7
    w_face = w_hi if top else w_lo
    outward = 1 if top else -1
    op = "union"
    both = False
    if kind == "boss":
        e = outward * _extrude_steps(rng, 96)
    elif kind == "pocket":
        e = -outward * int(rng.integers(1, depth_steps + 1))
        op = "cut"
    elif kind == "through":
        op = "cut" if rng.random() < 0.8 else "union"
        if rng.random() < 0.4:
            both = True
            w_face = (w_lo + w_hi) / 2
            e = int(math.ceil(depth_steps / 2))
        else:
            e = -outward * depth_steps
    elif kind == "adjacent":  # a block beside the part, sharing the base plane
        side = rng.integers(0, 4)
        if side == 0:
            u0 = u_hi - plo[0] * s
        elif side == 1:
            u0 = u_lo - bw - plo[0] * s
        elif side == 2:
            v0 = v_hi - plo[1] * s
        else:
            v0 = v_lo - bh - plo[1] * s
        w_face = w_lo
        e = _extrude_steps(rng, max(1, depth_steps)) if rng.random() < 0.6 else depth_steps
    else:  # intersect: a profile covering the face, through the whole part
        op = "intersect"
        w_face = w_lo
        e = depth_steps
    origin = _place(frame, u0, v0, w_face)
    if np.abs(origin).max() > 1.0:
        origin = np.clip(origin, -1.0, 1.0)
    sk = _Sketch(frame, origin, scale, loops, int(e), both=both, op=op)
    if complexity >= 3 and not both and op != "intersect" and rng.random() < 0.03:
        sk.second_steps = -int(np.sign(e)) * int(rng.integers(1, max(2, abs(e))))
    return sk


def _values_in_range(sk: _Sketch) -> bool:
    text = _render_program([sk]).split("\n", 2)[2]  # skip the import and the comment (digits of "sketch 0")
    vals = [float(v) for v in _NUM_RE.findall(re.sub(r"[A-Za-z_]+\d+", "", text))]
    return all(VALUE_RANGE[0] <= v <= VALUE_RANGE[1] for v in vals)


def generate_program(rng: np.random.Generator | int, complexity: int = 3) -> str:
    """Generate one CadQuery program in the GenCAD-Code style.

    Args:
        rng: a ``numpy.random.Generator`` or an integer seed (same seed -> same program).
        complexity: curriculum level.
            0 -- one extrude of a simple profile (rectangle, circle, triangle, regular polygon) on the two
                 common planes, at most one hole: a CPU quickstart learns these in minutes;
            1 -- one extrude of any profile family (lines, arcs, circles, up to 7 holes), every plane,
                 one- and two-sided extrudes;
            2 -- 1-3 sketch/extrude steps combined with union and cut;
            3 -- the GenCAD-Code distribution: 1-8 steps (median 1), union/cut/intersect, asymmetric
                 two-sided extrudes (default).

    Returns:
        Program source ending in a newline; the result is bound to ``solid``. It has not been executed:
        run it through :class:`cadcoder.sandbox.Sandbox` (``build_synthetic_dataset`` does).
    """
    if complexity not in COMPLEXITY_LEVELS:
        raise ValueError(f"complexity must be one of {COMPLEXITY_LEVELS}, got {complexity!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if complexity <= 1:
        n_steps = 1
    elif complexity == 2:
        n_steps = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    else:
        n_steps = int(rng.choice(len(_STEP_PROBS), p=_STEP_PROBS / _STEP_PROBS.sum())) + 1
    base = _base_sketch(rng, complexity)
    if complexity >= 3 and n_steps == 1 and not base.both and rng.random() < 0.03:
        base.second_steps = -int(np.sign(base.extrude_steps)) * int(rng.integers(1, 97))
    sketches = [base]
    lo, hi = base.world_box()
    n_loops = len(base.loops)
    for _ in range(n_steps - 1):
        for _attempt in range(4):  # keep GenCAD's ranges: values in [-1, 1.5], at most 10 loops
            sk = _feature(rng, (lo, hi), base, complexity)
            if _values_in_range(sk) and n_loops + len(sk.loops) <= MAX_LOOPS:
                break
        else:
            break
        n_loops += len(sk.loops)
        sketches.append(sk)
        blo, bhi = sk.world_box()
        if sk.op == "union":
            lo, hi = np.minimum(lo, blo), np.maximum(hi, bhi)
        elif sk.op == "intersect":
            lo, hi = np.maximum(lo, blo), np.minimum(hi, bhi)
            if (hi <= lo).any():
                lo, hi = base.world_box()
    return _render_program(sketches)


# ---------------------------------------------------------------------------------------------
# Dataset building
# ---------------------------------------------------------------------------------------------
_MANIFEST = "manifest.json"
_WORK_DIR = "_synth_work"
_NUM_RE = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")


def code_skeleton(code: str) -> str:
    """The program with every number replaced by ``#``: its template, used for the diversity report."""
    return _NUM_RE.sub("#", code)


def code_key(code: str, decimals: int = 4) -> str:
    """Dedup key by code: whitespace-normalised source with numbers rounded to ``decimals``.

    Two programs that differ only below 1e-4 (far below the 1/128 grid) are the same sample.
    """
    text = _NUM_RE.sub(lambda m: f"{round(float(m.group()), decimals) + 0.0!r}", code)
    text = "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return hashlib.sha1(text.encode()).hexdigest()


def geometry_key(fingerprint: dict[str, Any], digits: int = 4) -> str:
    """Dedup key by geometry: volume, area, bounding box and centre of mass rounded to ``digits`` decimals.

    Different programs that build the same solid (a sketch repeated and unioned onto itself, a cut
    that removes nothing) share this key.
    """
    vals = [fingerprint["volume"], fingerprint["area"], *fingerprint["bbox"], *fingerprint["center"]]
    return hashlib.sha1(repr([round(float(v), digits) + 0.0 for v in vals]).encode()).hexdigest()


def synth_sample_task(shape: Any, size: int = 448, style: dict[str, Any] | None = None,
                      min_ink: float = 0.002) -> dict[str, Any]:
    """Sandbox task run on each synthetic program's validated solid: render it and fingerprint it.

    Returns ``{"png": bytes, "volume", "area", "bbox", "center", "n_solids", "n_faces", "ink", "render_seconds"}`` where
    ``ink`` is the fraction of non-background pixels; rendering happens inside the isolated worker.
    """
    t0 = time.perf_counter()
    img = _render.render_task(shape, size=size, **(style or {}))
    render_seconds = time.perf_counter() - t0
    bg = np.array((style or {}).get("background_rgb", (255, 255, 255)), dtype=np.int16)
    ink = float((np.abs(img.astype(np.int16) - bg).sum(-1) > 30).mean())
    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    bb = shape.BoundingBox()
    com = shape.Center()
    return {
        "png": buf.getvalue(),
        "volume": float(sum(s.Volume() for s in shape.Solids())),
        "area": float(shape.Area()),
        "bbox": (bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax),
        "center": (com.x, com.y, com.z),
        "n_solids": len(shape.Solids()),
        "n_faces": len(shape.Faces()),
        "ink": ink,
        "render_seconds": render_seconds,
    }


def sample_seed(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of chunking, so a resumed run redoes nothing differently."""
    return np.random.default_rng([int(seed), int(index)])


def _style_for(render_style: Any, seed: int, index: int) -> dict[str, Any] | None:
    if render_style is None:
        return None
    if render_style == "random":
        return _render.RenderStyle.random(np.random.default_rng([int(seed), int(index), 1])).to_dict()
    if isinstance(render_style, _render.RenderStyle):
        return render_style.to_dict()
    if isinstance(render_style, dict):
        return dict(render_style)
    raise ValueError(f"render_style must be None, 'random', a RenderStyle or a dict, got {render_style!r}")


def _reject_reason(result: Any, allow_multi_solid: bool, min_ink: float) -> str | None:
    """Why a sandbox result is not a usable sample (None if it is)."""
    if not result.ok:
        return result.status
    v = result.value
    lo, hi = np.array(v["bbox"][:3]), np.array(v["bbox"][3:])
    if v["volume"] <= 1e-6 or (hi - lo).min() < 1.0 / GRID / 2:
        return "degenerate"
    if not allow_multi_solid and v["n_solids"] != 1:
        return "multi_solid"
    if v["ink"] < min_ink:
        return "blank_image"
    return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_shard_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf)
    _atomic_write_bytes(path, buf.getvalue())


def _shard_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("deepcad_id", pa.string()), ("cadquery", pa.string()),
        ("token_count", pa.int64()), ("png", pa.binary()), ("code_key", pa.string()),
        ("geom_key", pa.string()), ("skeleton", pa.string()),
    ])


def _read_shards(work: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for sh in shards:
        rows.extend(pq.read_table(work / sh["file"]).to_pylist())
    return rows


def _split_counts(n: int, splits: tuple[float, float, float]) -> tuple[int, int, int]:
    """Rows of train / validation / test for ``n`` samples; raises when a requested split would be empty."""
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
    n_val = int(round(n * splits[1]))
    n_test = int(round(n * splits[2]))
    if n >= 3:  # every requested split gets at least one row
        n_val = max(n_val, 1 if splits[1] > 0 else 0)
        n_test = max(n_test, 1 if splits[2] > 0 else 0)
    counts = (n - n_val - n_test, n_val, n_test)
    for name, fraction, count in zip(SPLIT_NAMES, splits, counts):
        if fraction > 0 and count == 0:  # datasets cannot load an empty split back from save_to_disk
            raise ValueError(
                f"{n} samples leave the {name} split empty; ask for at least 3 samples (3 per complexity "
                f"level when levels are mixed), or give the {name} split a fraction of 0 to leave it out"
            )
    return counts


def build_synthetic_dataset(
    num: int,
    out_dir: str | os.PathLike,
    workers: int = 2,
    seed: int = 0,
    image_size: int = 448,
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05),
    complexity: int = 3,
    progress: bool = True,
    tokenizer: Any = None,
    render_style: Any = None,
    timeout: float = 10.0,
    chunk_size: int = 64,
    allow_multi_solid: bool = False,
    max_per_skeleton: int | None = None,
    min_ink: float = 0.002,
    max_attempts: int | None = None,
    stop_after_chunks: int | None = None,
    sandbox: Any = None,
) -> "datasets.DatasetDict":  # noqa: F821
    """Generate, validate, deduplicate and render ``num`` synthetic (image, program) pairs.

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, executed in
    :class:`cadcoder.sandbox.Sandbox` and rendered there (:func:`synth_sample_task`). It is kept when the
    program yields one valid, non-degenerate solid with a non-blank image, and when neither its code key
    (numbers rounded to 1e-4, :func:`code_key`) nor its geometry key (:func:`geometry_key`) was seen at
    a lower index. Programs that share a *template* (same code with numbers stripped) are all kept: the
    GenCAD-Code distribution itself is dominated by a few templates (plates, discs, tubes) with different
    numbers, and dropping them would distort it. ``max_per_skeleton`` caps a template's count if wanted;
    the share of distinct templates is reported by :func:`cadcoder.corpus_stats.corpus_stats`.

    Work goes to ``out_dir/_synth_work``: one parquet shard per chunk of indices, written atomically,
    and a manifest updated after it. An interrupted run resumes from the manifest with no lost work and
    no duplicate, and produces exactly the dataset an uninterrupted run would. A finished run can be
    extended by calling again with a larger ``num``.

    Args:
        num: number of valid samples wanted.
        out_dir: output folder; the final ``DatasetDict`` is saved there with ``save_to_disk``.
        workers: sandbox worker processes.
        seed: base seed.
        image_size: rendered image side in pixels (GenCAD-Code: 448).
        splits: train/validation/test fractions.
        complexity: generator curriculum level, see :func:`generate_program`.
        progress: show a tqdm bar.
        tokenizer: a tokenizer for ``token_count``; None uses :func:`approx_token_count`.
        render_style: None (dataset look), ``"random"`` (per-sample :meth:`RenderStyle.random`, domain
            randomisation), a :class:`cadcoder.render.RenderStyle` or a dict of its fields.
        timeout: seconds per program in the sandbox.
        chunk_size: indices per shard (the unit of resumption).
        allow_multi_solid: keep programs whose result has several disconnected solids.
        max_per_skeleton: optional cap on samples sharing one number-stripped template.
        min_ink: minimum fraction of non-background pixels of a kept image.
        max_attempts: give up after this many generated programs (default ``20 * num + 200``).
        stop_after_chunks: stop (as if interrupted) after this many new chunks; for tests of resumption.
        sandbox: an open :class:`cadcoder.sandbox.Sandbox` to reuse (its own worker count and timeout
            apply); None starts one with ``workers`` and ``timeout`` and closes it at the end.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``/``validation``/``test`` and the GenCAD-Code
        columns ``image, deepcad_id, cadquery, token_count, prompt, hundred_subset``; or ``None`` when
        stopped early by ``stop_after_chunks``.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds a run made with different settings.
        RuntimeError: fewer than ``num`` valid samples after ``max_attempts`` programs.
    """
    from tqdm.auto import tqdm

    from cadcoder.sandbox import Sandbox

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if complexity not in COMPLEXITY_LEVELS:
        raise ValueError(f"complexity must be one of {COMPLEXITY_LEVELS}, got {complexity!r}")
    _split_counts(num, splits)
    out = Path(out_dir)
    work = out / _WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        "seed": int(seed), "complexity": int(complexity), "image_size": int(image_size),
        "render_style": _style_for(render_style, seed, 0) if render_style != "random" else "random",
        "allow_multi_solid": bool(allow_multi_solid), "max_per_skeleton": max_per_skeleton,
        "min_ink": float(min_ink), "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
        "format": 1,
    }
    manifest_path = work / _MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["settings"] != settings:
            diff = {k: (manifest["settings"].get(k), v) for k, v in settings.items() if manifest["settings"].get(k) != v}
            raise ValueError(
                f"{out} holds a synthetic run made with other settings {diff} (saved, requested); "
                "resume with the same settings or choose another --out folder"
            )
    else:
        manifest = {"settings": settings, "next_index": 0, "shards": [], "rejected": {}}
    rows = _read_shards(work, manifest["shards"])
    seen_code = {r["code_key"] for r in rows}
    seen_geom = {r["geom_key"] for r in rows}
    per_skel: dict[str, int] = {}
    for r in rows:
        per_skel[r["skeleton"]] = per_skel.get(r["skeleton"], 0) + 1
    max_attempts = 20 * num + 200 if max_attempts is None else max_attempts
    count_tokens: Callable[[str], int] = (
        approx_token_count if tokenizer is None else (lambda c: len(tokenizer(c)["input_ids"]))
    )
    bar = tqdm(total=num, initial=min(len(rows), num), desc="synth", unit="sample", disable=not progress)
    new_chunks = 0
    try:
        own = sandbox is None
        box = Sandbox(num_workers=workers, timeout=timeout) if own else sandbox
        n_threads = box.num_workers
        with contextlib.ExitStack() as stack, ThreadPoolExecutor(max(1, n_threads)) as pool:
            if own:
                stack.enter_context(box)
            while len(rows) < num:
                start = manifest["next_index"]
                if start >= max_attempts:
                    raise RuntimeError(
                        f"only {len(rows)} of {num} programs were valid and distinct after {start} attempts "
                        f"(rejections: {manifest['rejected']}); raise max_attempts or use another seed"
                    )
                stop = start + chunk_size
                idx = list(range(start, stop))
                codes = [generate_program(sample_seed(seed, i), complexity=complexity) for i in idx]

                def run_one(j: int) -> Any:
                    return box.run(codes[j], task=synth_sample_task, size=image_size,
                                   style=_style_for(render_style, seed, idx[j]), min_ink=min_ink)

                results = list(pool.map(run_one, range(len(idx))))
                timing = manifest.setdefault("timing", {"programs": 0, "sandbox_seconds": 0.0, "render_seconds": 0.0, "rendered": 0})
                for r in results:
                    timing["programs"] += 1
                    timing["sandbox_seconds"] += r.seconds
                    if r.ok:
                        timing["rendered"] += 1
                        timing["render_seconds"] += r.value["render_seconds"]
                task_errors = [r.error for r in results if not r.ok and r.error.startswith("task failed")]
                if len(task_errors) == len(results):  # a broken environment, not bad programs
                    raise RuntimeError(f"the render task failed on every program: {task_errors[0]}")
                chunk_rows = []
                for i, code, res in zip(idx, codes, results):
                    reason = _reject_reason(res, allow_multi_solid, min_ink)
                    if reason is None:
                        ck, gk, sk = code_key(code), geometry_key(res.value), code_skeleton(code)
                        if ck in seen_code or gk in seen_geom:
                            reason = "duplicate"
                        elif max_per_skeleton is not None and per_skel.get(sk, 0) >= max_per_skeleton:
                            reason = "template_cap"
                    if reason is not None:
                        manifest["rejected"][reason] = manifest["rejected"].get(reason, 0) + 1
                        continue
                    seen_code.add(ck)
                    seen_geom.add(gk)
                    per_skel[sk] = per_skel.get(sk, 0) + 1
                    chunk_rows.append({
                        "index": i, "deepcad_id": f"synth{seed}_{i:08d}", "cadquery": code,
                        "token_count": count_tokens(code), "png": res.value["png"],
                        "code_key": ck, "geom_key": gk, "skeleton": sk,
                    })
                name = f"shard-{start:09d}-{stop:09d}.parquet"
                _write_shard(work / name, chunk_rows)  # shard first, then the manifest that names it
                manifest["shards"].append({"file": name, "start": start, "stop": stop, "kept": len(chunk_rows)})
                manifest["next_index"] = stop
                _atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
                rows.extend(chunk_rows)
                bar.update(min(len(rows), num) - bar.n)
                new_chunks += 1
                if stop_after_chunks is not None and new_chunks >= stop_after_chunks and len(rows) < num:
                    return None
    finally:
        bar.close()
    dd = _assemble(rows[:num], seed, splits)
    dd.save_to_disk(str(out))
    stats = {"attempted": manifest["next_index"], "kept": len(rows), "rejected": manifest["rejected"],
             "timing": manifest.get("timing", {})}
    (out / "synth_stats.json").write_text(json.dumps(stats, indent=1))
    return dd


def _assemble(rows: list[dict[str, Any]], seed: int, splits: tuple[float, float, float]) -> Any:
    """Rows (in index order) -> DatasetDict with a seeded split assignment."""
    import datasets

    n_train, n_val, n_test = _split_counts(len(rows), splits)
    perm = np.random.default_rng([int(seed), 2**31 - 1]).permutation(len(rows))
    parts = dict(zip(SPLIT_NAMES, (sorted(perm[:n_train]), sorted(perm[n_train:n_train + n_val]),
                                   sorted(perm[n_train + n_val:]))))
    out = {}
    for split, ids in parts.items():
        if not ids:  # a split asked for with fraction 0: left out, as datasets cannot reload an empty one
            continue
        recs = {
            "image": [{"bytes": rows[i]["png"], "path": None} for i in ids],
            "deepcad_id": [rows[i]["deepcad_id"] for i in ids],
            "cadquery": [rows[i]["cadquery"] for i in ids],
            "token_count": [rows[i]["token_count"] for i in ids],
            "prompt": [GENCAD_PROMPT] * len(ids),
            "hundred_subset": [split == "test" and k < 100 for k in range(len(ids))],
        }
        out[split] = datasets.Dataset.from_dict(recs, features=gencad_features())
    return datasets.DatasetDict(out)


def synth_cli(args: argparse.Namespace) -> int:
    """``cadcoder synth --num N --out DIR [--workers K --seed S --image-size P --push-to-hub REPO]``."""
    import sys

    try:
        dd = build_synthetic_dataset(
            num=args.num, out_dir=args.out, workers=args.workers, seed=args.seed, image_size=args.image_size,
            complexity=getattr(args, "complexity", 3), render_style=getattr(args, "render_style", None),
        )
    except (ValueError, RuntimeError) as err:
        print(f"cadcoder synth: error: {err}", file=sys.stderr)
        return 2
    stats = json.loads((Path(args.out) / "synth_stats.json").read_text())
    sizes = ", ".join(f"{k}={len(v)}" for k, v in dd.items())
    print(f"wrote {args.out}: {sizes}; {stats['attempted']} programs generated, rejected {stats['rejected']}")
    if getattr(args, "push_to_hub", None):
        # Needs network and a token (huggingface-cli login); it cannot run on offline machines.
        dd.push_to_hub(args.push_to_hub)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0
from cadcoder.corpus_stats import corpus_stats  # noqa: E402,F401  (re-export: the contract names synth.corpus_stats)
