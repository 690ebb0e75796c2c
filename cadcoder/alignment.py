"""Normalisation of solids and the candidate rotations of the ``"aligned"`` IoU protocol.

:func:`normalize` moves a solid into the frame a protocol compares in: for ``"aligned"`` the centre of
mass goes to the origin, the radius of gyration ``sqrt(mean |x|^2)`` to 1 and the principal axes of
inertia onto x, y, z (ascending moments ``l0 <= l1 <= l2``); for ``"bbox"`` the bounding box is
centred and its longest side scaled to 1. :mod:`cadcoder.geometry` then takes the best IoU of ``a``
against ``R b`` over proper rotations ``R`` chosen by how well the principal moments separate the axes:

* every relative gap ``(l[k+1] - l[k]) / l[k+1]`` of *both* solids is at least
  :data:`DEGENERACY_TOLERANCE` (0.05): ``R`` ranges over the 4 proper axis sign flips
  :data:`ALIGNED_FLIPS` (eigenvector signs are arbitrary);
* one pair ``(k, k+1)`` is near-degenerate in either solid (a square plate, a disc, a plate with a
  small hole): the axes inside that plane carry no information, so ``R`` ranges over all rotations
  that keep the third axis on its line: ``R = Rot_axis(theta) @ B`` with ``theta`` in ``[0, 2 pi)`` and
  ``B`` either identity or the half-turn that reverses the third axis;
* both pairs near-degenerate (cube-like inertia): ``R`` ranges over all of SO(3).

The continuous cases are searched deterministically by :func:`search_rotation` on a coarse mesh (a
15 degree grid over ``theta`` for both branches, or the 24 rotations of the cube group plus 72
super-Fibonacci rotations; then a pattern search that halves its step 10 times, from the best coarse
candidate and up to two more within 0.05 of it). :func:`aligned_rotations` gives the discrete
candidates (the 8 rotations that permute/flip the two ambiguous axes, or the 24 cube rotations) that
the exact path falls back to when no watertight mesh can be made.

Only rigid transforms (rotation, translation, uniform scale) are applied: ``transformGeometry`` with
scaling matrices has segfaulted on thin discs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cadquery as cq
import numpy as np
from OCP.BRepAlgoAPI import BRepAlgoAPI_Fuse
from OCP.BRepBuilderAPI import BRepBuilderAPI_Transform
from OCP.BRepGProp import BRepGProp
from OCP.gp import gp_Trsf
from OCP.GProp import GProp_GProps
from OCP.TopTools import TopTools_ListOfShape

__all__ = [
    "PROTOCOLS",
    "ALIGNED_FLIPS",
    "DEGENERACY_TOLERANCE",
    "Normalized",
    "check_protocol",
    "union_solids",
    "volume",
    "rigid_transform",
    "mass_properties",
    "normalize",
    "aligned_rotations",
    "search_rotation",
    "refined_rotations",
    "polish_rotation",
    "POLISH_STEP",
    "POLISH_LEVELS",
]

PROTOCOLS: tuple[str, ...] = ("aligned", "bbox", "mecagent")
ALIGNED_FLIPS: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))
#: Relative gap between consecutive principal moments below which the two axes count as ambiguous.
DEGENERACY_TOLERANCE = 0.05
_PLANE_GRID = 24  # 15 degree steps over theta
_SO3_SAMPLES = 72
_PATTERN_LEVELS = 10
#: First step (radians) and number of step sizes (each half the last) of :func:`polish_rotation`: about the error of a rotation found with the voxel
#: estimate of :mod:`cadcoder.occupancy` (a degree or so), then half of that.
POLISH_STEP = 0.02
POLISH_LEVELS = 2
# Coarse candidates this close to the best coarse value are refined too (at most 3 on the plane, 2 on the sphere).
# At 0.05 the notched cube of tests/test_geometry.py stalled at IoU 0.95 from its best start on numpy 2.4 / LAPACK
# here, while the runner-up start reached 0.99996.
_REFINE_MARGIN = 0.1


def check_protocol(protocol: str) -> None:
    """Raise ``ValueError`` naming the valid protocols unless ``protocol`` is one of :data:`PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")


def union_solids(shape: cq.Shape) -> cq.Shape:
    """Return one shape whose solids do not overlap: all solids fused with ``BRepAlgoAPI_Fuse``.

    Overlapping, un-unioned solids would count shared volume twice in every volume and IoU.
    """
    solids = shape.Solids()
    if not solids:
        raise ValueError("the shape holds no solid; pass the result of a program that builds a solid")
    if len(solids) == 1:
        return solids[0]
    args, tools = TopTools_ListOfShape(), TopTools_ListOfShape()
    args.Append(solids[0].wrapped)
    for s in solids[1:]:
        tools.Append(s.wrapped)
    op = BRepAlgoAPI_Fuse()
    op.SetRunParallel(False)
    op.SetArguments(args)
    op.SetTools(tools)
    op.Build()
    if not op.IsDone():
        raise RuntimeError("OpenCascade could not fuse the solids of the shape")
    return cq.Shape.cast(op.Shape())


def volume(shape: cq.Shape) -> float:
    """Volume of a shape by OpenCascade's volume properties."""
    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape.wrapped, props)
    return float(props.Mass())


def rigid_transform(shape: cq.Shape, matrix: np.ndarray, translation: np.ndarray, scale: float = 1.0) -> cq.Shape:
    """Apply ``x -> scale * (matrix @ x + translation)`` with a rigid gp_Trsf (matrix orthonormal, det +1)."""
    trsf = gp_Trsf()
    m, t = matrix, translation
    trsf.SetValues(m[0, 0], m[0, 1], m[0, 2], t[0], m[1, 0], m[1, 1], m[1, 2], t[1], m[2, 0], m[2, 1], m[2, 2], t[2])
    out = BRepBuilderAPI_Transform(shape.wrapped, trsf, True).Shape()
    if scale != 1.0:
        sc = gp_Trsf()
        sc.SetScaleFactor(float(scale))
        out = BRepBuilderAPI_Transform(out, sc, True).Shape()
    return cq.Shape.cast(out)


@dataclass
class Normalized:
    """A normalised solid and the transform that produced it (``x' = scale * (rotation @ x + translation)``).

    ``moments`` holds the principal moments of inertia, ascending and divided by their sum
    (``"aligned"`` only; ``None`` for ``"bbox"``); ``size`` is the bounding-box diagonal after
    normalisation (the unit of fuzzy boolean tolerances).
    """

    shape: cq.Shape
    rotation: np.ndarray
    translation: np.ndarray
    scale: float
    volume: float
    moments: np.ndarray | None = None
    size: float = 1.0
    _mesh: Any = field(default=None, repr=False)
    _occupancy: Any = field(default=None, repr=False)


def mass_properties(shape: cq.Shape) -> tuple[float, np.ndarray, np.ndarray]:
    """Volume, centre of mass ``(3,)`` and inertia tensor ``(3, 3)`` of a shape, by OpenCascade."""
    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape.wrapped, props)
    vol = props.Mass()
    c = props.CentreOfMass()
    mat = props.MatrixOfInertia()
    inertia = np.array([[mat.Value(i, j) for j in (1, 2, 3)] for i in (1, 2, 3)])
    return float(vol), np.array([c.X(), c.Y(), c.Z()]), inertia


def _principal_frame(shape: cq.Shape) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    vol, center, inertia = mass_properties(shape)
    if not vol > 0:
        raise ValueError("the shape has no positive volume")
    eigval, eigvec = np.linalg.eigh(inertia)
    order = np.argsort(eigval, kind="stable")
    eigval, eigvec = eigval[order], eigvec[:, order]
    # Deterministic signs: largest component of each axis positive, then force a proper rotation.
    for k in range(3):
        if eigvec[np.argmax(np.abs(eigvec[:, k])), k] < 0:
            eigvec[:, k] = -eigvec[:, k]
    if np.linalg.det(eigvec) < 0:
        eigvec[:, 2] = -eigvec[:, 2]
    radius_of_gyration = math.sqrt(max(float(np.trace(inertia)), 0.0) / (2.0 * vol))
    moments = np.clip(eigval, 0.0, None) / max(float(eigval.sum()), 1e-300)
    return center, eigvec, radius_of_gyration, moments


def normalize(shape: cq.Shape, protocol: str = "aligned") -> Normalized:
    """Normalise a (unioned) solid for the ``"aligned"`` or ``"bbox"`` protocol.

    Args:
        shape: a solid or compound of non-overlapping solids (see :func:`union_solids`).
        protocol: ``"aligned"`` (centre of mass, radius of gyration, principal axes) or ``"bbox"``.
    """
    check_protocol(protocol)
    moments = None
    if protocol == "aligned":
        center, axes, rg, moments = _principal_frame(shape)
        if not rg > 0:
            raise ValueError("degenerate shape: zero radius of gyration")
        rotation = axes.T
        translation = -rotation @ center
        scale = 1.0 / rg
    elif protocol == "bbox":
        bb = shape.BoundingBox(tolerance=1e-6)
        longest = max(bb.xlen, bb.ylen, bb.zlen)
        if not longest > 0:
            raise ValueError("degenerate shape: empty bounding box")
        rotation = np.eye(3)
        translation = -np.array([bb.center.x, bb.center.y, bb.center.z])
        scale = 1.0 / longest
    else:
        raise ValueError("the 'mecagent' protocol normalises meshes; use mecagent_iou()")
    out = rigid_transform(shape, rotation, translation, scale)
    bb = out.BoundingBox()
    size = float(math.sqrt(bb.xlen**2 + bb.ylen**2 + bb.zlen**2)) or 1.0
    return Normalized(out, rotation, translation, scale, volume(out), moments, size)


# ----------------------------------------------------------------------------------------------
# Candidate rotations of the "aligned" protocol.
# ----------------------------------------------------------------------------------------------
def _ambiguous_pairs(a: Normalized, b: Normalized, tolerance: float = DEGENERACY_TOLERANCE) -> list[int]:
    """Indices ``k`` of consecutive principal axes ``(k, k+1)`` whose moments nearly coincide in a or b."""
    pairs = []
    for k in (0, 1):
        for m in (a.moments, b.moments):
            if m is not None and (m[k + 1] - m[k]) < tolerance * max(m[k + 1], 1e-300):
                pairs.append(k)
                break
    return pairs


def _axis_rotation(axis: int, theta: float) -> np.ndarray:
    i, j = (axis + 1) % 3, (axis + 2) % 3
    c, s = math.cos(theta), math.sin(theta)
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def _half_turn(axis: int) -> np.ndarray:
    """The proper rotation that reverses ``axis`` (a half turn about the next axis)."""
    d = np.ones(3)
    d[axis] = d[(axis + 2) % 3] = -1.0
    return np.diag(d)


def _cube_rotations() -> list[np.ndarray]:
    """The 24 proper rotations of the cube group (signed permutation matrices with det +1), fixed order."""
    out = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in ((1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1), (-1, 1, 1), (-1, 1, -1), (-1, -1, 1), (-1, -1, -1)):
            m = np.zeros((3, 3))
            for r, c in enumerate(perm):
                m[r, c] = signs[r]
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _super_fibonacci(n: int) -> list[np.ndarray]:
    """``n`` quasi-uniform rotations (super-Fibonacci spirals, Alexa 2022), deterministic."""
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    out = []
    for i in range(n):
        s = i + 0.5
        r, big_r = math.sqrt(s / n), math.sqrt(1.0 - s / n)
        alpha, beta = 2 * math.pi * s / phi, 2 * math.pi * s / psi
        out.append(_quat_to_matrix(np.array([r * math.sin(alpha), r * math.cos(alpha), big_r * math.sin(beta), big_r * math.cos(beta)])))
    return out


def _rotvec(omega: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(omega))
    if angle == 0.0:
        return np.eye(3)
    k = omega / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def aligned_rotations(a: Normalized, b: Normalized) -> tuple[str, list[np.ndarray]]:
    """The discrete candidate rotations of ``b`` under the ``"aligned"`` protocol (see the module docstring).

    Returns:
        ``(kind, rotations)``: kind ``"flips"`` (4 sign flips), ``"plane"`` (8 rotations that permute and
        flip the two ambiguous axes; the continuous search starts from them) or ``"sphere"`` (the 24
        rotations of the cube group).
    """
    pairs = _ambiguous_pairs(a, b)
    if not pairs:
        return "flips", [np.diag(np.array(s, dtype=float)) for s in ALIGNED_FLIPS]
    if len(pairs) == 1:
        free = 2 if pairs[0] == 0 else 0
        return "plane", [_axis_rotation(free, q * math.pi / 2) @ br for br in (np.eye(3), _half_turn(free)) for q in range(4)]
    return "sphere", _cube_rotations()


def search_rotation(f: Callable[[np.ndarray], float], a: Normalized, b: Normalized) -> tuple[np.ndarray, float]:
    """Deterministic maximisation of ``f(R)`` over the continuous candidate set of the aligned protocol."""
    return max(refined_rotations(f, a, b), key=lambda t: t[1])


def refined_rotations(f: Callable[[np.ndarray], float], a: Normalized, b: Normalized) -> list[tuple[np.ndarray, float]]:
    """The local maxima :func:`search_rotation` chooses from, as ``(rotation, f(rotation))``, best coarse start first.

    The coarse candidates (a 15-degree grid on the plane, cube rotations and a super-Fibonacci sample on the
    sphere) within :data:`_REFINE_MARGIN` of the best are refined: at most 3 on the plane, 2 on the sphere.
    """
    kind, _ = aligned_rotations(a, b)
    if kind == "plane":
        free = 2 if _ambiguous_pairs(a, b)[0] == 0 else 0
        branches = (np.eye(3), _half_turn(free))
        step = 2 * math.pi / _PLANE_GRID
        scored = [(f(_axis_rotation(free, m * step) @ br), bi, m * step) for bi, br in enumerate(branches) for m in range(_PLANE_GRID)]
        scored.sort(key=lambda t: -t[0])
        found = []
        for val, bi, theta in [s for s in scored[:3] if s[0] >= scored[0][0] - _REFINE_MARGIN]:
            h = step / 2
            for _ in range(_PATTERN_LEVELS):
                for cand in (theta - h, theta + h):
                    v = f(_axis_rotation(free, cand) @ branches[bi])
                    if v > val:
                        val, theta = v, cand
                        break
                h /= 2
            found.append((_axis_rotation(free, theta) @ branches[bi], val))
        return found
    starts = _cube_rotations() + _super_fibonacci(_SO3_SAMPLES)
    scored3 = sorted(((f(r), k) for k, r in enumerate(starts)), key=lambda t: -t[0])
    return [_pattern_search(f, starts[k], val, (0, 1, 2), 0.25, _PATTERN_LEVELS)
            for val, k in scored3[:2] if val >= scored3[0][0] - _REFINE_MARGIN]  # fmt: skip


def _pattern_search(
    f: Callable[[np.ndarray], float], rot: np.ndarray, val: float, axes: Sequence[int], step: float, levels: int
) -> tuple[np.ndarray, float]:
    """Compass search of ``f`` by small rotations about ``axes`` applied on the left, halving ``step`` per level."""
    for _ in range(levels):
        improved = True
        while improved:
            improved = False
            for axis in axes:
                for sign in (-1.0, 1.0):
                    omega = np.zeros(3)
                    omega[axis] = sign * step
                    cand = _rotvec(omega) @ rot
                    v = f(cand)
                    if v > val:
                        val, rot, improved = v, cand, True
        step /= 2
    return rot, val


def polish_rotation(
    f: Callable[[np.ndarray], float], a: Normalized, b: Normalized, rotation: np.ndarray,
    step: float = POLISH_STEP, levels: int = POLISH_LEVELS,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Local maximisation of ``f`` near ``rotation``, inside the aligned protocol's continuous candidate set.

    For a rotation found by maximising a cheaper estimate of ``f`` (:mod:`cadcoder.occupancy`): a compass search
    from ``step`` radians, halved ``levels`` times, about the free axis on the plane and about all three axes on
    the sphere. Returns ``(rotation, f(rotation))``; on ``"flips"`` the rotation is returned unchanged.
    """
    kind, _ = aligned_rotations(a, b)
    val = f(rotation)
    if kind == "flips":
        return rotation, val
    axes = (2 if _ambiguous_pairs(a, b)[0] == 0 else 0,) if kind == "plane" else (0, 1, 2)
    return _pattern_search(f, rotation, val, axes, step, levels)
