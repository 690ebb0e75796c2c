"""Procedural CadQuery programs in the GenCAD-Code style: sketch planes, features, program text.

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
intersections, repeated sketches) over the profile families of :mod:`cadcoder.synth.profiles`, with
continuous random sizes, so the corpus is not a handful of templates; :mod:`cadcoder.corpus_stats`
measures how true that is. ``generate_program(rng, complexity=...)`` is pure python + numpy and
deterministic by seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from cadcoder.synth.profiles import MAX_LOOPS, SKETCH_UNITS, Loop, profile_extent, random_profile

# ---------------------------------------------------------------------------------------------
# Constants of the GenCAD-Code / DeepCAD format
# ---------------------------------------------------------------------------------------------
GRID = 128  # origins, extrude distances and sketch scales are multiples of 1/128
MAX_SCALE_STEPS = 192  # sketch scale <= 1.5 (DeepCAD fits models in [-0.75, 0.75]^3)
COMPLEXITY_LEVELS = (0, 1, 2, 3)
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
FLOAT_LITERAL = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")
"""A float literal of a program (with a decimal point or an exponent; integers in names do not match)."""


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
    """The sketch plane of a ``(theta, phi, gamma)`` orientation given in quarter turns."""
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
# Program text
# ---------------------------------------------------------------------------------------------
@dataclass
class _Sketch:
    """One sketch-and-extrude step: plane, loops, extrude distance and how it joins the running solid."""

    frame: _Frame
    origin: np.ndarray  # world, multiples of 1/128
    scale_steps: int  # sketch scale = steps / 128
    loops: list[Loop]
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


def _loop_code(loop: Loop, wp: str, scale: float) -> str:
    """One loop as a chain of workplane calls on ``wp``, coordinates scaled to ``scale``."""
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


def _write_program(sketches: list[_Sketch]) -> str:
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


# ---------------------------------------------------------------------------------------------
# Sketch placement and features
# ---------------------------------------------------------------------------------------------
def _pick_frame(rng: np.random.Generator, complexity: int) -> _Frame:
    """A sketch plane: the two common ones at complexity 0, else drawn with the dataset's weights."""
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


def _cap_scale(scale: int, loops: list[Loop]) -> int:
    """Largest scale <= ``scale`` keeping every sketch value in GenCAD's range [-1, 1.5]."""
    lo, hi = profile_extent(loops)
    most_negative = max(-float(lo.min()), 1e-9)
    most_positive = max(float(hi.max()), 1e-9)
    cap = min(SKETCH_UNITS / most_negative, 1.5 * SKETCH_UNITS / most_positive) * GRID
    return int(max(1, min(scale, math.floor(cap))))


def _base_sketch(rng: np.random.Generator, complexity: int) -> _Sketch:
    """The first sketch: a random profile extruded and centred at the world origin, like DeepCAD's normalisation."""
    frame = _pick_frame(rng, complexity)
    loops = random_profile(rng, complexity)
    r = rng.random()
    scale = _cap_scale(int(rng.integers(128, 193)) if r < 0.6 else int(rng.integers(24, 129)), loops)
    e = _extrude_steps(rng, 192)
    lo2, hi2 = profile_extent(loops)
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


_Face = tuple[float, float, float, float, float, float]
"""The running box's ranges along a frame's x, y and normal axes: ``(u_lo, u_hi, v_lo, v_hi, w_lo, w_hi)``."""


def _repeat_of(rng: np.random.Generator, base: _Sketch) -> _Sketch:
    """The base sketch again (DeepCAD has many), with another extrude distance or offset."""
    e = _extrude_steps(rng, 192) * int(np.sign(base.extrude_steps) or 1)
    origin = base.origin.copy()
    if rng.random() < 0.5:
        origin = origin + base.frame.n * (base.extrude_steps / GRID)
    return _Sketch(base.frame, origin, base.scale_steps, base.loops, e, op="union")


def _sketch_face(rng: np.random.Generator, box: tuple[np.ndarray, np.ndarray], base: _Sketch,
                 complexity: int) -> tuple[_Frame, _Face]:
    """A plane to sketch a feature on, and the running box's ranges along its axes.

    A face too small to sketch on (the side of a thin plate) gives way to another plane, then the base one.
    """
    lo, hi = box
    candidates = [base.frame if rng.random() < 0.55 else _pick_frame(rng, complexity),
                  _pick_frame(rng, complexity), base.frame]
    for frame in candidates:
        face = _uv_range(frame, lo, hi)
        if min(face[1] - face[0], face[3] - face[2]) >= 12 / GRID:
            break
    return frame, face


def _fit_profile(rng: np.random.Generator, kind: str, face: _Face, loops: list[Loop]) -> tuple[int, float, float]:
    """Sketch scale (1/128 steps) and start-vertex position (u, v) of a feature's profile on the face.

    The profile's box sits inside the face, centred or at random, sometimes overhanging an edge (notches);
    an intersecting profile covers the face.
    """
    u_lo, u_hi, v_lo, v_hi, _, _ = face
    fw, fh = u_hi - u_lo, v_hi - v_lo
    plo, phi = profile_extent(loops)
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
    return scale, pu - plo[0] * s, pv - plo[1] * s


def _extrude_on_face(rng: np.random.Generator, kind: str, face: _Face, loops: list[Loop], scale: int,
                     u0: float, v0: float) -> tuple[float, float, float, int, str, bool]:
    """How a feature of ``kind`` extrudes: ``(u0, v0, w0, signed steps, op, both)``, (u0, v0, w0) its start vertex."""
    u_lo, u_hi, v_lo, v_hi, w_lo, w_hi = face
    depth_steps = max(1, _q(w_hi - w_lo))
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
        plo, phi = profile_extent(loops)
        s = scale / GRID / SKETCH_UNITS
        bw, bh = (phi - plo) * s
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
    return u0, v0, w_face, int(e), op, both


def _feature(rng: np.random.Generator, box: tuple[np.ndarray, np.ndarray], base: _Sketch,
             complexity: int) -> _Sketch:
    """One further sketch/extrude placed relative to the running bounding box."""
    kind = rng.choice(["boss", "pocket", "through", "adjacent", "repeat", "intersect"],
                      p=[0.38, 0.14, 0.06, 0.20, 0.18, 0.04] if complexity >= 3 else
                      [0.38, 0.30, 0.12, 0.15, 0.05, 0.0])
    if kind == "repeat":
        return _repeat_of(rng, base)
    frame, face = _sketch_face(rng, box, base, complexity)
    if face[5] - face[4] <= 2 / GRID and kind in ("pocket", "through", "intersect"):
        kind = "boss"
    loops = random_profile(rng, complexity, max_holes=2 if kind != "intersect" and rng.random() < 0.3 else 0)
    scale, u0, v0 = _fit_profile(rng, kind, face, loops)
    u0, v0, w_face, e, op, both = _extrude_on_face(rng, kind, face, loops, scale, u0, v0)
    origin = _place(frame, u0, v0, w_face)
    if np.abs(origin).max() > 1.0:
        origin = np.clip(origin, -1.0, 1.0)
    sk = _Sketch(frame, origin, scale, loops, e, both=both, op=op)
    if complexity >= 3 and not both and op != "intersect" and rng.random() < 0.03:
        sk.second_steps = -int(np.sign(e)) * int(rng.integers(1, max(2, abs(e))))
    return sk


def _values_in_range(sk: _Sketch) -> bool:
    """Whether every number the sketch writes lies in GenCAD-Code's value range."""
    text = _write_program([sk]).split("\n", 2)[2]  # skip the import and the comment (digits of "sketch 0")
    vals = [float(v) for v in FLOAT_LITERAL.findall(re.sub(r"[A-Za-z_]+\d+", "", text))]
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
    return _write_program(sketches)
