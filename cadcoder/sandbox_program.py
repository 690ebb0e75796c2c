"""Inside the sandbox's isolated child: run one program, choose its result and validate it as a solid.

Nothing here isolates anything; :mod:`cadcoder.sandbox_worker` calls these functions only in a forked,
limited child. CadQuery is imported inside the functions so that the caller's process never loads it; the
worker imports it before forking, so the chrooted child finds it already loaded.

**Choosing the result.** After the program ran, the first of these names bound in its namespace wins:
``solid``, ``result``, then :data:`RESULT_NAMES` (``part``, ``shape``, ``model``, ``body``, ``obj``,
``assembly``, ``r``, ``res``, ``out``, ``final``); failing that, the last object passed to
``show_object(...)``. ``cq`` and ``cadquery`` are pre-bound even when the program does not import them.
The value may be a ``cq.Workplane`` (all solids on its stack), a ``cq.Shape``, a ``cq.Assembly`` or a
list of those. It must hold at least one solid, every solid must pass ``isValid()`` (or, failing BRepCheck on
tolerance details as one real GenCAD-Code reference does, be closed: every edge shared by two faces) and
the total volume must be positive, otherwise the status is ``invalid_shape``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
from typing import Any

from cadcoder.sandbox_policy import PolicyViolation, check_policy, restricted_builtins

__all__ = ["RESULT_NAMES", "CappedWriter", "ProgramError", "collect_shape", "describe_shape", "execute_program"]

RESULT_NAMES: tuple[str, ...] = (
    "solid",
    "result",
    "part",
    "shape",
    "model",
    "body",
    "obj",
    "assembly",
    "r",
    "res",
    "out",
    "final",
)


class CappedWriter(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it and drops the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, s: str) -> int:
        """Keep what fits under the cap; report the whole string as written."""
        if self.size < self.limit:
            piece = s[: self.limit - self.size]
            self.parts.append(piece)
            self.size += len(piece)
        return len(s)

    def getvalue(self) -> str:
        """The kept text."""
        return "".join(self.parts)


class ProgramError(Exception):
    """A program's failure with its sandbox status (one of ``cadcoder.sandbox.FAILURE_REASONS``) and detail."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def describe_shape(shape: Any) -> dict[str, Any]:
    """Default sandbox task: a small picklable summary of a validated shape.

    Returns:
        ``{"volume": float, "bbox": (xmin, ymin, zmin, xmax, ymax, zmax), "n_solids": int,
        "n_faces": int, "center_of_mass": (x, y, z)}``.
    """
    bb = shape.BoundingBox()
    com = shape.Center() if hasattr(shape, "Center") else None
    return {
        "volume": float(sum(s.Volume() for s in shape.Solids())),
        "bbox": (bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax),
        "n_solids": len(shape.Solids()),
        "n_faces": len(shape.Faces()),
        "center_of_mass": None if com is None else (com.x, com.y, com.z),
    }


def _is_closed(solid: Any) -> bool:
    """True when every non-degenerate edge of the solid borders at least two faces (a closed skin).

    Some real GenCAD-Code references fail ``BRepCheck`` on tolerance details yet bound a volume; they
    are accepted when closed.
    """
    from OCP.BRep import BRep_Tool
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE
    from OCP.TopExp import TopExp
    from OCP.TopoDS import TopoDS
    from OCP.TopTools import TopTools_IndexedDataMapOfShapeListOfShape

    edge_faces = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(solid.wrapped, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    for i in range(1, edge_faces.Extent() + 1):
        if edge_faces.FindFromIndex(i).Size() < 2 and not BRep_Tool.Degenerated_s(TopoDS.Edge_s(edge_faces.FindKey(i))):
            return False
    return edge_faces.Extent() > 0


def collect_shape(value: Any) -> Any:
    """Turn a program's result object into a single cadquery Shape (Solid or Compound).

    Raises:
        ProgramError: ``invalid_shape`` when the value holds no solid, a solid is neither valid nor closed,
            or the total volume is not positive.
    """
    import cadquery as cq

    solids: list[Any] = []

    def visit(v: Any) -> None:
        if isinstance(v, cq.Workplane):
            for item in v.vals():
                visit(item)
        elif isinstance(v, cq.Assembly):
            visit(v.toCompound())
        elif isinstance(v, cq.Shape):
            solids.extend(v.Solids())
        elif isinstance(v, list | tuple):
            for item in v:
                visit(item)
        elif isinstance(v, cq.Sketch):
            raise ProgramError("invalid_shape", "the result is a 2D Sketch, not a solid")

    visit(value)
    if not solids:
        raise ProgramError("invalid_shape", f"the result ({type(value).__name__}) holds no solid")
    for s in solids:
        if not (s.isValid() or _is_closed(s)):
            raise ProgramError("invalid_shape", "a solid of the result is not valid (BRepCheck failed) and not closed")
    volume = sum(s.Volume() for s in solids)
    if not volume > 1e-12:
        raise ProgramError("invalid_shape", f"the result has non-positive volume {volume:.3g}")
    return solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)


def _compile_program(code: str, enforce_policy: bool) -> Any:
    """Policy-check (when enforced) and compile the source, mapping failures to sandbox statuses."""
    try:
        if enforce_policy:
            check_policy(code)
        return compile(code, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        if isinstance(exc, PolicyViolation):
            raise ProgramError("forbidden", str(exc)) from None
        if isinstance(exc, MemoryError):
            raise ProgramError("memory_limit", "MemoryError while parsing") from None
        raise ProgramError("syntax_error", f"{type(exc).__name__}: {exc}") from None


def execute_program(code: str, enforce_policy: bool, output: CappedWriter) -> Any:
    """Run the program with its output captured in ``output`` and return its result object.

    Args:
        code: the untrusted source.
        enforce_policy: check the policy first and run with :func:`restricted_builtins`.
        output: receives the program's Python-level stdout and stderr.

    Raises:
        ProgramError: with the status ``forbidden``, ``syntax_error``, ``memory_limit``, ``runtime_error``
            or ``no_result``.
    """
    import cadquery as cq

    compiled = _compile_program(code, enforce_policy)
    shown: list[Any] = []

    def show_object(obj: Any, *args: Any, **kwargs: Any) -> None:
        shown.append(obj)

    namespace: dict[str, Any] = {
        "__builtins__": restricted_builtins() if enforce_policy else vars(builtins),
        "__name__": "__cadcoder_program__",
        "cq": cq,
        "cadquery": cq,
        "show_object": show_object,
    }
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            exec(compiled, namespace)  # noqa: S102 - the whole point: this is the isolated child
        except MemoryError:
            raise ProgramError("memory_limit", "MemoryError: the program exceeded the memory limit") from None
        except SystemExit as exc:
            raise ProgramError("runtime_error", f"SystemExit({exc.code!r})") from None
        except RecursionError as exc:
            raise ProgramError("runtime_error", f"RecursionError: {exc}") from None
        except BaseException as exc:  # noqa: BLE001 - any program error is a runtime_error
            text = f"{type(exc).__name__}: {exc}"
            if "memory" in text.lower() and ("alloc" in text.lower() or "outofmemory" in text.lower()):
                raise ProgramError("memory_limit", text[:500]) from None
            raise ProgramError("runtime_error", text[:500]) from None
    for name in RESULT_NAMES:
        if name in namespace and namespace[name] is not None:
            return namespace[name]
    if shown:
        return shown[-1]
    raise ProgramError("no_result", f"no variable named one of {RESULT_NAMES[:3]}... and no show_object() call")
