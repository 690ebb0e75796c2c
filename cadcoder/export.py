"""Turn a generated program's solid into files: STEP, STL and a preview, without letting the program write.

Sandboxed programs cannot write files (the worker sets ``RLIMIT_FSIZE=0`` and may run chrooted in an empty
read-only directory), and OpenCascade shapes cannot cross process boundaries. So the work is split:

* inside the sandbox worker, :func:`candidate_task` (render for render-and-compare) and :func:`export_task`
  (STEP text written into memory with OpenCascade's ``STEPControl_Writer.WriteStream``, a triangle mesh
  from ``BRepMesh``, a dataset-style render) return plain picklable values;
* in the caller's process, :func:`write_part_files` writes ``part.py``, ``part.step``, ``part.stl`` and
  ``part_preview.png`` into a folder the caller chose.

Every OpenCascade import is at module level on purpose: the jailed worker imports this module before it
forks and chroots, and cannot import anything afterwards.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:
    import cadquery as cq  # noqa: F401  (loads OCP and its plugins before the worker is jailed)
    from OCP.IFSelect import IFSelect_RetDone
    from OCP.Interface import Interface_Static
    from OCP.STEPControl import STEPControl_AsIs, STEPControl_Writer
except ImportError as _err:  # pragma: no cover - cadquery pulls OCP in
    raise ImportError("cadcoder.export needs CadQuery and OpenCascade: pip install cadquery") from _err

from cadcoder.mesh import merged_mesh
from cadcoder.render import RenderStyle, render_mesh
from cadcoder.sandbox_program import describe_shape

__all__ = [
    "shape_summary",
    "shape_to_step",
    "shape_to_mesh_arrays",
    "candidate_task",
    "export_task",
    "write_part_files",
    "mesh_to_trimesh",
]


def shape_summary(shape: Any) -> dict[str, Any]:
    """Picklable facts about a validated shape: volume, bounding box, solid and face counts.

    The sandbox's default task (:func:`cadcoder.sandbox_program.describe_shape`) without the centre of mass.
    """
    summary = describe_shape(shape)
    summary.pop("center_of_mass", None)
    return summary


def shape_to_step(shape: Any) -> str:
    """Serialise a shape to STEP (AP214) text in memory; no file is touched.

    Raises:
        RuntimeError: OpenCascade refused to transfer or write the shape.
    """
    Interface_Static.SetCVal_s("write.step.schema", "AP214")
    Interface_Static.SetCVal_s("write.step.unit", "MM")
    writer = STEPControl_Writer()
    if writer.Transfer(shape.wrapped, STEPControl_AsIs) != IFSelect_RetDone:
        raise RuntimeError("OpenCascade could not transfer the shape to STEP")
    buf = io.BytesIO()
    if writer.WriteStream(buf) != IFSelect_RetDone:
        raise RuntimeError("OpenCascade could not write the STEP stream")
    return buf.getvalue().decode("utf-8", errors="replace")


def shape_to_mesh_arrays(shape: Any, relative_tolerance: float = 1e-3, angular_tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate a shape into ``(vertices (n, 3) float64, faces (m, 3) int64)``, vertices merged.

    The chord tolerance is ``relative_tolerance`` times the bounding-box diagonal. Neighbouring B-rep faces
    share their edge discretisation, so merging coincident vertices gives a closed mesh for a closed solid.
    """
    diag = float(shape.BoundingBox().DiagonalLength) or 1.0
    return merged_mesh(shape, max(relative_tolerance * diag, 1e-6), angular_tolerance)


def _render(shape: Any, size: int, style: dict[str, Any] | None) -> np.ndarray:
    return render_mesh(shape, int(size), RenderStyle.from_dict(style or {})).image


def candidate_task(shape: Any, render_size: int | None = None, style: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sandbox task for one candidate: its :func:`shape_summary`, plus a dataset-style render if asked.

    Args:
        shape: the validated solid (given by the sandbox).
        render_size: side of the render in pixels; ``None`` skips rendering.
        style: :class:`cadcoder.render.RenderStyle` fields as a dict (``None``: the dataset look).

    Returns:
        ``{"summary": dict, "render": (S, S, 3) uint8 array or None}``, plus ``"render_error"`` when the
        render failed (the solid itself is valid, so the candidate is not lost).
    """
    out: dict[str, Any] = {"summary": shape_summary(shape), "render": None}
    if render_size is not None:
        try:
            out["render"] = _render(shape, render_size, style)
        except Exception as exc:  # noqa: BLE001 - OpenCascade tessellation raises assorted types
            out["render_error"] = f"render failed: {type(exc).__name__}: {exc}"[:300]
    return out


def export_task(
    shape: Any,
    step: bool = True,
    mesh: bool = True,
    render_size: int | None = 448,
    style: dict[str, Any] | None = None,
    relative_tolerance: float = 1e-3,
) -> dict[str, Any]:
    """Sandbox task for the chosen program: STEP text, a triangle mesh and a render, all in memory.

    A failure of one export does not lose the others: its error is reported under ``errors``.

    Returns:
        ``{"summary", "step": str|None, "vertices": array|None, "faces": array|None, "render": array|None,
        "errors": {name: message}}``.
    """
    out: dict[str, Any] = {"summary": shape_summary(shape), "step": None, "vertices": None, "faces": None,
                           "render": None, "errors": {}}  # fmt: skip
    jobs = (
        ("step", step, lambda: {"step": shape_to_step(shape)}),
        ("mesh", mesh, lambda: dict(zip(("vertices", "faces"), shape_to_mesh_arrays(shape, relative_tolerance)))),
        ("render", render_size is not None, lambda: {"render": _render(shape, int(render_size or 448), style)}),
    )
    for name, wanted, job in jobs:
        if not wanted:
            continue
        try:
            out.update(job())
        except Exception as exc:  # noqa: BLE001 - OpenCascade raises assorted types; report, keep the rest
            out["errors"][name] = f"{type(exc).__name__}: {exc}"[:300]
    return out


# ----------------------------------------------------------------------------------------------
# Caller side: write files from the values the sandbox returned.
# ----------------------------------------------------------------------------------------------
def mesh_to_trimesh(vertices: np.ndarray, faces: np.ndarray) -> Any:
    """Wrap mesh arrays in a ``trimesh.Trimesh`` (vertices merged, normals made consistent)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=np.asarray(vertices, dtype=np.float64), faces=np.asarray(faces, dtype=np.int64), process=True)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    return mesh


def write_part_files(
    out_dir: str | Path,
    program: str,
    step: str | None = None,
    vertices: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    preview: Image.Image | None = None,
    stem: str = "part",
) -> dict[str, Path]:
    """Write ``part.py`` (always), and ``part.step``, ``part.stl``, ``part_preview.png`` when given.

    Args:
        out_dir: folder to write into (created if missing).
        program: the CadQuery source.
        step: STEP text from :func:`export_task`.
        vertices, faces: mesh arrays from :func:`export_task` (written as binary STL).
        preview: an image to save as PNG.
        stem: file name stem.

    Returns:
        The paths written, keyed ``"program"``, ``"step"``, ``"stl"``, ``"preview"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["program"] = out / f"{stem}.py"
    paths["program"].write_text(program.rstrip() + "\n", encoding="utf-8")
    if step is not None:
        paths["step"] = out / f"{stem}.step"
        paths["step"].write_text(step, encoding="utf-8")
    if vertices is not None and faces is not None:
        paths["stl"] = out / f"{stem}.stl"
        mesh_to_trimesh(vertices, faces).export(paths["stl"], file_type="stl")
    if preview is not None:
        paths["preview"] = out / f"{stem}_preview.png"
        preview.save(paths["preview"])
    return paths
