"""Triangle meshes of B-rep shapes, from OpenCascade's BRepMesh.

Two forms, for two jobs:

* :func:`shape_to_mesh` keeps the B-rep structure: triangles grouped by B-rep face (vertices not
  shared between faces, so normals stay smooth within a face and sharp across edges) plus the B-rep
  edges as polylines taken from the same triangulation. The renderer draws from it.
* :func:`merged_mesh` merges the vertices that neighbouring faces share along their edges, which gives
  a closed (watertight) mesh for a closed solid: the form for mesh booleans, surface sampling and STL.

OpenCascade is imported at module level on purpose: inside the sandbox's jailed worker, modules that a
task imports lazily cannot be found (the worker imports the task's module before it forks and chroots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np
import numpy.ma  # noqa: F401  (np.unique imports it lazily; the jailed sandbox worker could not)

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
    raise ImportError("cadcoder.mesh needs OpenCascade (OCP): pip install cadquery") from _err

__all__ = ["Mesh", "occ_shape", "shape_bounds", "shape_to_mesh", "merged_mesh"]


@dataclass
class Mesh:
    """Triangles of a B-rep solid, grouped by B-rep face, plus its edges as 3D polylines."""

    vertices: np.ndarray  # (N, 3) float64; vertices are not shared between B-rep faces
    triangles: np.ndarray  # (M, 3) int64, counter-clockwise seen from outside
    face_ids: np.ndarray  # (M,) int32, index of the B-rep face of each triangle
    edges: list  # list of (K, 3) float64 polylines, one per B-rep edge use


def occ_shape(shape: Any) -> Any:
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
    BRepBndLib.AddOptimal_s(occ_shape(shape), box, False, False)
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
    occ = occ_shape(shape)
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


def merged_mesh(shape: Any, tolerance: float, angular_tolerance: float) -> Tuple[np.ndarray, np.ndarray]:
    """Tessellate a cadquery shape into one vertex-merged mesh ``(vertices (n, 3) float64, faces (m, 3) int64)``.

    Args:
        shape: a cadquery Shape (its ``tessellate`` does the meshing).
        tolerance: chord tolerance, in model units.
        angular_tolerance: angle between neighbouring segments, in radians.

    Faces that collapse to an edge or a point when their vertices are merged are dropped.
    """
    verts, tris = shape.tessellate(tolerance, angular_tolerance)
    v = np.array([(p.x, p.y, p.z) for p in verts], dtype=np.float64).reshape(-1, 3)
    f = np.array(tris, dtype=np.int64).reshape(-1, 3)
    # Adjacent faces share their edge discretisation, so coincident vertices are equal up to rounding.
    key = np.round(v / max(tolerance * 1e-3, 1e-9)).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    f = inverse.reshape(-1)[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    return v[first], f
