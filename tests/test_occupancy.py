"""Tests of cadcoder.occupancy (the voxel estimate that steers the fast rotation search) and of the fast
IoU on solids without a watertight tessellation.

The shapes are built here by trusted test code, so they are handled in-process.
"""

from __future__ import annotations

import math

import cadquery as cq
import numpy as np
import pytest

from cadcoder import geometry as g
from cadcoder.occupancy import OccupancyIoU, occupancy


def _mesh(shape: cq.Shape) -> tuple[np.ndarray, np.ndarray]:
    return g.mesh_arrays(shape)


def _volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    occ = occupancy(vertices, faces)
    assert occ is not None
    return float(occ.inside.sum()) * occ.pitch**3


def test_box_and_cylinder_volumes():
    box = cq.Workplane().box(3.0, 2.0, 1.0).val()
    assert _volume(*_mesh(box)) == pytest.approx(6.0, rel=0.03)
    cylinder = cq.Workplane().cylinder(2.0, 0.5).val()
    assert _volume(*_mesh(cylinder)) == pytest.approx(math.pi * 0.25 * 2.0, rel=0.03)


def test_occupancy_survives_a_cracked_mesh():
    """A mesh with triangles missing (what a BRepCheck-invalid solid tessellates into) still voxelises."""
    vertices, faces = _mesh(cq.Workplane().cylinder(2.0, 0.5).val())
    cracked = np.delete(faces, np.arange(0, len(faces), 17), axis=0)
    assert _volume(vertices, cracked) == pytest.approx(math.pi * 0.25 * 2.0, rel=0.05)


def test_empty_mesh_has_no_occupancy():
    assert occupancy(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)) is None


def test_estimate_tracks_the_mesh_iou_over_rotations():
    a = g.normalize(cq.Workplane().box(3.0, 1.5, 0.6).val())
    b = g.normalize(cq.Workplane().box(2.6, 1.7, 0.5).edges("|Z").fillet(0.3).val())
    (arr_a, ma), (arr_b, mb) = g._mesh_of(a), g._mesh_of(b)
    estimate = OccupancyIoU(occupancy(*arr_a), occupancy(*arr_b), a.volume, b.volume)
    exact = g._mesh_iou_fn(ma, mb)
    for angle in (0.0, 0.4, 1.2, math.pi / 2):
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        assert estimate(rotation) == pytest.approx(exact(rotation), abs=0.03)
    assert estimate(np.eye(3)) > estimate(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])) + 0.1


def test_fast_iou_on_a_solid_without_watertight_mesh_stays_close_to_exact():
    """A hole circle that crosses the outline gives a closed but BRepCheck-invalid solid; manifold3d refuses its
    tessellation, and fast mode takes exact booleans at the rotations the voxel estimate ranks best."""
    broken = cq.Workplane("XY").polygon(6, 40).circle(19.5).extrude(5).val()
    assert not broken.isValid()
    assert g._mesh_of(g.normalize(broken))[1] is None
    reference = cq.Workplane("XY").polygon(6, 40).extrude(5).val()
    fast = g.iou(broken, reference, fast=True)
    exact = g.iou(broken, reference, fast=False)
    assert fast["method"].startswith("exact")
    assert 0.2 < exact["iou"] < 0.9
    assert fast["iou"] == pytest.approx(exact["iou"], abs=0.03)
