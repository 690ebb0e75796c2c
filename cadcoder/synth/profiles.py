"""The 2-D profiles of synthetic GenCAD-style sketches: loop geometry, outer-profile families, holes.

Everything is in integer sketch units: a sketch coordinate prints as ``scale / SKETCH_UNITS * k`` for an
integer ``k`` (see :mod:`cadcoder.synth.programs`). An outer loop is normalised like DeepCAD's: it starts
at its left-most (then lowest) vertex, placed at (0, 0), runs counter-clockwise, and its farthest point
sits ``SKETCH_UNITS`` away. Holes are placed inside it without touching it or each other: concentric,
bolt circles, mirrored pairs, 2x2 grids or at random. Pure python + numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SKETCH_UNITS = 95  # sketch coordinates are (scale / 95) * k
MAX_LOOPS = 10  # per model, as in GenCAD-Code
_HOLE_PROBS = np.array([0.60, 0.22, 0.07, 0.04, 0.04, 0.015, 0.01, 0.005])  # 0..7 inner loops


# ---------------------------------------------------------------------------------------------
# Loops (integer sketch units)
# ---------------------------------------------------------------------------------------------
@dataclass
class Loop:
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
        """Lower and upper corner of the loop's boundary points."""
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
    """Centre of the circle through a, b and c (None when they are collinear)."""
    d = 2 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
    if abs(d) < 1e-9:
        return None
    ux = ((a @ a) * (b[1] - c[1]) + (b @ b) * (c[1] - a[1]) + (c @ c) * (a[1] - b[1])) / d
    uy = ((a @ a) * (c[0] - b[0]) + (b @ b) * (a[0] - c[0]) + (c @ c) * (b[0] - a[0])) / d
    return np.array([ux, uy])


def _signed_area(pts: np.ndarray) -> float:
    """Shoelace area of a polygon: positive when counter-clockwise."""
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
                  offset: tuple[float, float] = (0.0, 0.0)) -> Loop | None:
    """Round a float polygon (already in sketch units after ``scale``/``offset``) to a Loop."""
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
    return Loop(verts=[(int(x), int(y)) for x, y in v], arcs=arcs)


# --- outer profile families: return (float vertices, bulges) in an arbitrary frame --------------
def _fam_rect(rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Rectangle of random aspect, sometimes turned upright."""
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
    """Regular polygon (triangle, pentagon, hexagon, octagon), sometimes squashed."""
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
    """Right or general triangle, trapezoid or parallelogram."""
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


def _outer_loop(rng: np.random.Generator, family: str) -> Loop:
    """An outer loop normalised like DeepCAD: start vertex at (0, 0), farthest point at 95 units."""
    if family == "circle":
        r = int(rng.choice([48, 48, 48, 47]))
        return Loop(circle=(48, 0, r))
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
    return Loop(circle=(48, 0, 48))


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


def _fits(hole: Loop, outer: np.ndarray, others: list[np.ndarray], margin: float) -> bool:
    """Whether a hole lies inside the outer loop and clear of the other holes, ``margin`` units from each."""
    hp = hole.points()
    if not _inside(hp, outer).all() or _min_dist(hp, outer) < margin:
        return False
    if _inside(outer, hp).any():
        return False
    for o in others:
        if _inside(hp, o).any() or _inside(o, hp).any() or _min_dist(hp, o) < margin:
            return False
    return True


def _hole_shape(rng: np.random.Generator, cx: float, cy: float, size: float) -> Loop | None:
    """A hole of about ``size`` units centred at (cx, cy): circle (mostly), rectangle, slot or polygon."""
    kind = rng.choice(["circle"] * 14 + ["rect"] * 4 + ["slot", "poly"])
    size = max(size, 6.0)  # holes below ~6 % of the sketch are invisible at 448 px
    if kind == "circle":
        r = max(3, int(round(size / 2)))
        return Loop(circle=(int(round(cx)), int(round(cy)), r))
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


def _add_holes(rng: np.random.Generator, outer: Loop, n_holes: int) -> list[Loop]:
    """Place up to ``n_holes`` non-overlapping inner loops: concentric, symmetric patterns or random."""
    if n_holes <= 0:
        return []
    opts = outer.points()
    lo, hi = opts.min(0), opts.max(0)
    span = hi - lo
    center = (lo + hi) / 2
    holes: list[Loop] = []
    placed: list[np.ndarray] = []
    margin = 1.5

    def try_add(h: Loop | None) -> bool:
        if h is not None and _fits(h, opts, placed, margin):
            holes.append(h)
            placed.append(h.points())
            return True
        return False

    pattern = rng.random()
    if outer.circle is not None and pattern < 0.55:
        cx, cy, r = outer.circle
        if rng.random() < 0.75:  # concentric hole (washers, tubes, flanges)
            try_add(Loop(circle=(cx, cy, int(rng.integers(3, max(4, r - 4))))))
        if len(holes) < n_holes and n_holes >= 2:  # bolt circle
            k = int(min(n_holes - len(holes), rng.choice([3, 4, 4, 6, 8])))
            inner_r = holes[0].circle[2] if holes else 0
            for _ in range(8):
                hr = int(rng.integers(2, max(3, (r - inner_r) // 4)))
                rad = rng.uniform(inner_r + hr + 3, r - hr - 3) if r - hr - 3 > inner_r + hr + 3 else None
                if rad is None:
                    continue
                a0 = rng.choice([0.0, np.pi / k, np.pi / 2])
                ring = [Loop(circle=(int(round(cx + rad * np.cos(a0 + 2 * np.pi * i / k))),
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
# Whole profiles
# ---------------------------------------------------------------------------------------------
def random_profile(rng: np.random.Generator, complexity: int, max_holes: int | None = None) -> list[Loop]:
    """An outer loop of a random family plus its holes; complexity 0 keeps to simple families, one hole at most."""
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


def profile_extent(loops: list[Loop]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corner of the boundary points of all ``loops``."""
    pts = np.concatenate([lp.points() for lp in loops])
    return pts.min(0), pts.max(0)
