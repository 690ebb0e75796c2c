"""Tests of cadcoder.geometry: invariances, analytic overlaps, fast path, mecagent protocol, Chamfer.

The shapes here are built by this test code (trusted, hand-written boxes and cylinders), so they are
handled in-process; programs from anywhere else go through the sandbox (see test_evaluation.py).
"""

from __future__ import annotations

import math

import cadquery as cq
import numpy as np
import pytest
import trimesh

from cadcoder import geometry as g


def box(a: float, b: float, c: float) -> cq.Shape:
    return cq.Workplane("XY").box(a, b, c).val()


def l_bracket() -> cq.Shape:
    return (
        cq.Workplane("XY").polyline([(0, 0), (4, 0), (4, 1), (1, 1), (1, 3), (0, 3)]).close().extrude(2)
        .faces(">Z").workplane().center(2.5, 0.5).hole(0.4).val()
    )


def moved(shape: cq.Shape, offset=(3.0, -2.0, 5.0), factor: float = 2.5) -> cq.Shape:
    return shape.translate(cq.Vector(*offset)).scale(factor)


@pytest.mark.parametrize("protocol", g.PROTOCOLS)
def test_identical_is_one(protocol):
    for shape in (box(1, 2, 3), l_bracket()):
        assert g.iou(shape, shape, protocol)["iou"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("protocol", ["aligned", "bbox"])
@pytest.mark.parametrize("fast", [False, True])
def test_translated_scaled_copy_is_one(protocol, fast):
    shape = l_bracket()
    assert g.iou(shape, moved(shape), protocol, fast=fast)["iou"] == pytest.approx(1.0, abs=1e-6)


def test_rotated_copy_is_one_only_when_aligned():
    shape = box(1, 2, 3)
    rotated = shape.rotate(cq.Vector(0, 0, 0), cq.Vector(0, 0, 1), 90)
    assert g.iou(shape, rotated, "aligned")["iou"] == pytest.approx(1.0, abs=1e-9)
    # bbox: (1/3, 2/3, 1) against (2/3, 1/3, 1): overlap 1/3 * 1/3 over union 2*(2/9) - 1/9.
    assert g.iou(shape, rotated, "bbox")["iou"] == pytest.approx((1 / 9) / (4 / 9 - 1 / 9), abs=1e-6)
    bracket = l_bracket()
    turned = bracket.rotate(cq.Vector(0, 0, 0), cq.Vector(1, 1, 0), 90)
    assert g.iou(bracket, turned, "aligned")["iou"] == pytest.approx(1.0, abs=1e-6)
    assert g.iou(bracket, turned, "bbox")["iou"] < 0.9


def _centred_box_iou(d1, d2) -> float:
    inter = np.prod(np.minimum(d1, d2))
    return float(inter / (np.prod(d1) + np.prod(d2) - inter))


@pytest.mark.parametrize("dims", [((1, 2, 3), (1, 2, 3.3)), ((1, 2, 3), (1.5, 2, 3)), ((2, 2, 5), (1, 3, 5))])
def test_box_overlaps_match_analytic_values(dims):
    d1, d2 = (np.array(d, dtype=float) for d in dims)
    a, b = box(*d1), box(*d2)
    # bbox: longest side scaled to 1, centred; the longest side is z in every case above.
    expect_bbox = _centred_box_iou(d1 / d1.max(), d2 / d2.max())
    assert g.iou(a, b, "bbox")["iou"] == pytest.approx(expect_bbox, abs=1e-3)
    # aligned: divide by the radius of gyration sqrt((a^2+b^2+c^2)/12); axes sorted by moment of inertia.
    def aligned_dims(d):
        s = np.sort(d)[::-1]
        return s / math.sqrt((d**2).sum() / 12)

    expect_aligned = _centred_box_iou(aligned_dims(d1), aligned_dims(d2))
    exact = g.iou(a, b, "aligned")["iou"]
    assert exact == pytest.approx(expect_aligned, abs=1e-3)
    assert g.iou(a, b, "aligned", fast=True)["iou"] == pytest.approx(exact, abs=1e-3)


def test_two_offset_boxes_partial_overlap():
    # Same normalisation for both (bbox of each is a unit cube after scaling), offset built into the solid.
    a = cq.Workplane().box(1, 1, 1).union(cq.Workplane().box(1, 1, 1).translate((3, 0, 0))).val()
    b = cq.Workplane().box(1, 1, 1).union(cq.Workplane().box(1, 1, 1).translate((3.5, 0, 0))).val()
    # a spans x in [-0.5, 3.5], b in [-0.5, 4.0]; under bbox each is scaled by its own length.
    na, nb = g.normalize(a, "bbox"), g.normalize(b, "bbox")
    assert na.volume == pytest.approx(2 * (1 / 4) ** 3, rel=1e-6)
    assert nb.volume == pytest.approx(2 * (1 / 4.5) ** 3, rel=1e-6)
    got = g.exact_iou(na, nb)[0]
    assert 0 < got < 1
    assert g.fast_iou(na, nb)[0] == pytest.approx(got, abs=1e-3)


def test_overlapping_solids_are_unioned_first():
    first, second = box(2, 1, 1), box(2, 1, 1).translate(cq.Vector(1, 0, 0))
    compound = cq.Compound.makeCompound([first, second])
    assert sum(s.Volume() for s in compound.Solids()) == pytest.approx(4.0)
    assert g.volume(g.union_solids(compound)) == pytest.approx(3.0)
    fused = box(3, 1, 1)
    assert g.iou(compound, fused, "bbox")["iou"] == pytest.approx(1.0, abs=1e-6)


def test_cylinder_fast_path_close_to_exact():
    a = cq.Workplane().cylinder(2.0, 0.5).val()
    b = cq.Workplane().cylinder(2.4, 0.45).val()
    exact = g.iou(a, b, "aligned")["iou"]
    fast = g.iou(a, b, "aligned", fast=True)
    assert fast["method"] == "fast"
    assert fast["iou"] == pytest.approx(exact, abs=2e-3)


def _direct_mecagent(shape_a: cq.Shape, shape_b: cq.Shape) -> float:
    """The challenge's algorithm written out step by step with trimesh, independently of geometry.py."""

    def to_mesh(shape):
        verts, tris = shape.tessellate(0.1, 0.1)
        mesh = trimesh.Trimesh([(v.x, v.y, v.z) for v in verts], tris)  # process=True merges vertices
        mesh.apply_translation(-mesh.centroid)
        rot = np.eye(4)
        rot[:3, :3] = mesh.principal_inertia_vectors
        mesh.apply_transform(rot)
        mesh.apply_scale(1.0 / mesh.extents.max())
        return mesh

    def cells(mesh):
        return set(map(tuple, np.round(mesh.voxelized(0.05).points / 0.05).astype(int)))

    ma, mb = to_mesh(shape_a), to_mesh(shape_b)
    ca = cells(ma)
    scores = []
    for signs in [(1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)]:
        flipped = mb.copy()
        flipped.vertices = flipped.vertices * np.array(signs)
        cb = cells(flipped)
        scores.append(len(ca & cb) / len(ca | cb))
    return max(scores)


@pytest.mark.parametrize("pair", ["taller", "bracket_vs_box", "cylinder"])
def test_mecagent_matches_direct_computation(pair):
    shapes = {
        "taller": (box(1, 2, 3), box(1, 2, 3.15)),
        "bracket_vs_box": (l_bracket(), box(4, 3, 2)),
        "cylinder": (cq.Workplane().cylinder(2, 0.5).val(), cq.Workplane().cylinder(2, 0.6).val()),
    }[pair]
    assert g.mecagent_iou(*shapes) == pytest.approx(_direct_mecagent(*shapes), abs=1e-9)


def test_chamfer_distance_properties():
    a = g.normalize(l_bracket(), "aligned").shape
    assert g.chamfer_distance(a, a, 512, seed=1) == pytest.approx(0.0, abs=1e-12)
    b = g.normalize(box(4, 3, 2), "aligned").shape
    d1, d2 = g.chamfer_distance(a, b, 512, seed=1), g.chamfer_distance(a, b, 512, seed=1)
    assert d1 == d2 > 0


def test_brep_round_trip_and_score_task():
    ref = g.reference_task(l_bracket())
    assert isinstance(ref, bytes)
    out = g.score_task(moved(l_bracket()), ref, protocol="aligned", chamfer_points=256)
    assert out["iou"] == pytest.approx(1.0, abs=1e-6)
    other = g.score_task(box(4, 3, 2), ref, protocol="aligned", chamfer_points=256)
    # Sampled points differ between two tessellations of the same surface, so only "small" is exact.
    assert out["chamfer"] < 0.05 < other["chamfer"]
    assert other["iou"] < 0.9


def test_unknown_protocol_names_the_choices():
    with pytest.raises(ValueError, match="aligned"):
        g.iou(box(1, 1, 1), box(1, 1, 1), "voxel")
