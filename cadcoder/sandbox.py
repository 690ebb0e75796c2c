"""Run untrusted CadQuery source in isolated worker processes and return a solid or a failure reason.

Every program that a model writes goes through this module; nothing else in CadCoder ``exec``\\ s generated
code. Two layers defend the caller:

1. **Policy** (:func:`check_policy`): an AST check of the source. Imports are limited to ``cadquery``,
   ``math`` and ``numpy``; dunder attributes, ``exec``/``eval``/``compile``/``open``/``getattr``/``globals``
   and friends, frame objects and names that lead to the OS (``os``, ``sys``, ``subprocess``...) are refused
   with the reason ``forbidden``.
2. **OS isolation**. One warm *zygote* process per worker slot imports cadquery once (about 1.7 s) with
   OpenCascade's parallel mode switched off, then ``fork``\\ s a fresh child for every program, so no state
   (a monkeypatched cadquery, a leaked global) survives from one program to the next. The child, before
   running anything untrusted:

   * starts its own session / process group (the wall-clock timeout kills the whole group, because
     OpenCascade's C++ code ignores Python signals);
   * sets ``RLIMIT_AS`` (memory -> ``memory_limit``), ``RLIMIT_CPU``, ``RLIMIT_FSIZE=0`` (every file
     write fails, including ``cq.exporters.export``), and ``RLIMIT_CORE=0``;
   * ``chdir``\\ s (as root: ``chroot``\\ s) to an empty read-only scratch directory and sends C-level stdout/stderr to ``/dev/null``;
     Python-level output is captured and capped;
   * when the zygote runs as root, drops to a private unprivileged uid (group ``nogroup``): the program
     can then signal no process but its own (``os.kill(os.getppid(), 9)`` gets ``EPERM``),
     ``RLIMIT_NPROC`` bounds forks and threads, and after the job every process of that uid is killed,
     even one that left the process group;
   * when it is allowed (root, or an unprivileged user namespace), the zygote lives in an empty network
     namespace (``unshare(CLONE_NEWNET)``): only a downed loopback exists, so every connection fails.

   If a zygote dies anyway, the next call respawns it transparently. Results come back pickled over a
   pipe whose size is capped.

**Choosing the result.** After the program ran, the first of these names bound in its namespace wins:
``solid``, ``result``, then :data:`RESULT_NAMES` (``part``, ``shape``, ``model``, ``body``, ``obj``,
``assembly``, ``r``, ``res``, ``out``, ``final``); failing that, the last object passed to
``show_object(...)``. ``cq`` and ``cadquery`` are pre-bound even when the program does not import them.
The value may be a ``cq.Workplane`` (all solids on its stack), a ``cq.Shape``, a ``cq.Assembly`` or a
list of those. It must hold at least one solid, every solid must pass ``isValid()`` (or, failing BRepCheck on
tolerance details as one real GenCAD-Code reference does, be closed: every edge shared by two faces) and
the total volume must be positive, otherwise the status is ``invalid_shape``.

**Tasks.** ``task`` is a module-level function ``task(shape, **kwargs) -> picklable`` (or its
``"module:function"`` name). It runs *inside* the isolated child after validation, because OpenCascade
can segfault on valid solids too (booleans, tessellation, rendering). The default task,
:func:`describe_shape`, returns volume, bounding box and solid count.

Example::

    with Sandbox(num_workers=2, timeout=10) as sb:
        res = sb.run("solid = cq.Workplane().box(1, 2, 3)")
        assert res.ok and abs(res.value["volume"] - 6) < 1e-9
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import gc
import importlib
import io
import os
import pickle
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cadcoder.tasks import DESCRIBE_SHAPE, TaskRef

__all__ = [
    "FAILURE_REASONS",
    "RESULT_NAMES",
    "PolicyViolation",
    "Sandbox",
    "SandboxJob",
    "SandboxResult",
    "borrow_or_open",
    "check_policy",
    "describe_shape",
]

FAILURE_REASONS: tuple[str, ...] = (
    "syntax_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "no_result",
    "invalid_shape",
    "forbidden",
    "crashed",
)
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

ALLOWED_IMPORTS: frozenset[str] = frozenset({"cadquery", "math", "numpy"})
FORBIDDEN_CALLS: frozenset[str] = frozenset(
    {
        "exec", "eval", "compile", "open", "getattr", "setattr", "delattr", "globals", "locals", "vars",
        "__import__", "input", "breakpoint", "help", "memoryview", "exit", "quit", "dir", "type",
        "object", "super", "classmethod", "staticmethod", "property",
    }
)
# Attribute or variable names that lead to the OS, the interpreter's internals or the file system.
FORBIDDEN_NAMES: frozenset[str] = FORBIDDEN_CALLS | frozenset(
    {
        "os", "sys", "subprocess", "socket", "ctypes", "ctypeslib", "importlib", "builtins", "shutil",
        "signal", "threading", "multiprocessing", "pathlib", "io", "tempfile", "pickle", "marshal",
        "system", "popen", "spawn", "fork", "kill", "killpg", "environ", "exporters", "importers",
        "exportStl", "exportStep", "exportBrep", "exportBin", "export", "save", "savetxt", "savez",
        "savez_compressed", "tofile", "fromfile", "load", "loadtxt", "genfromtxt", "memmap", "DataSource",
        "gi_frame", "f_back", "f_globals", "f_locals", "f_builtins", "tb_frame", "cr_frame", "ag_frame",
        "gi_code", "f_code", "func_globals", "mro",
    }
)
_MAX_SOURCE_CHARS = 200_000
_PROTO_HEADER = struct.Struct("!Q")


class PolicyViolation(ValueError):
    """Raised by :func:`check_policy` when the source uses something the sandbox policy forbids."""


def check_policy(code: str) -> None:
    """Check untrusted CadQuery source against the sandbox policy.

    Args:
        code: Python source.

    Raises:
        SyntaxError: the source does not parse.
        PolicyViolation: the source imports something other than cadquery/math/numpy, touches a dunder
            attribute or name, calls ``exec``/``eval``/``open``/``getattr``..., or names an OS-facing
            object (``os``, ``sys``, ``exporters``...). The message names the offending construct.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str of Python source, got {type(code).__name__}")
    if len(code) > _MAX_SOURCE_CHARS:
        raise PolicyViolation(f"source has {len(code)} characters; the limit is {_MAX_SOURCE_CHARS}")
    tree = ast.parse(code, mode="exec")
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    raise PolicyViolation(f"line {line}: relative imports are not allowed")
                modules = [node.module or ""]
                for alias in node.names:
                    if alias.name == "*" or alias.name.startswith("_") or alias.name in FORBIDDEN_NAMES:
                        raise PolicyViolation(f"line {line}: 'from {node.module} import {alias.name}' is not allowed")
            else:
                modules = [alias.name for alias in node.names]
            for mod in modules:
                if mod.split(".")[0] not in ALLOWED_IMPORTS or any(p in FORBIDDEN_NAMES or p.startswith("_") for p in mod.split(".")[1:]):
                    raise PolicyViolation(
                        f"line {line}: import of '{mod}' is not allowed; only {sorted(ALLOWED_IMPORTS)} may be imported"
                    )
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") or node.attr in FORBIDDEN_NAMES:
                raise PolicyViolation(f"line {line}: attribute '.{node.attr}' is not allowed")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__") or node.id in FORBIDDEN_NAMES:
                raise PolicyViolation(f"line {line}: name '{node.id}' is not allowed")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name.startswith("__"):
                raise PolicyViolation(f"line {line}: defining '{node.name}' is not allowed")
        elif isinstance(node, ast.Global | ast.Nonlocal):
            raise PolicyViolation(f"line {line}: 'global'/'nonlocal' statements are not allowed")
        elif isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith | ast.Yield | ast.YieldFrom):
            raise PolicyViolation(f"line {line}: generators and coroutines are not allowed")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("__"):
            raise PolicyViolation(f"line {line}: dunder strings are not allowed")


@dataclass
class SandboxResult:
    """Outcome of one program.

    Attributes:
        status: ``"ok"`` or one of :data:`FAILURE_REASONS`.
        value: the task's return value when ``status == "ok"``, else ``None``.
        error: a short human-readable detail (exception text, signal name...); empty when ok.
        seconds: wall-clock seconds spent on the program, as seen by the caller.
        output: the program's captured (and capped) Python-level stdout/stderr.
    """

    status: str
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        """True when the program produced a valid solid and the task succeeded."""
        return self.status == "ok"


@dataclass(frozen=True)
class SandboxJob:
    """One program for :meth:`Sandbox.map` with its own task and task keyword arguments."""

    code: str
    task: TaskRef = DESCRIBE_SHAPE
    kwargs: dict[str, Any] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------------------------
# Child side: runs inside the forked, limited process.
# ----------------------------------------------------------------------------------------------
class _CappedWriter(io.TextIOBase):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, s: str) -> int:
        if self.size < self.limit:
            piece = s[: self.limit - self.size]
            self.parts.append(piece)
            self.size += len(piece)
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


class _ProgramError(Exception):
    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _safe_import_factory(real_import: Callable[..., Any]) -> Callable[..., Any]:
    def safe_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        if level or name.split(".")[0] not in ALLOWED_IMPORTS:
            raise ImportError(f"import of '{name}' is not allowed in the sandbox")
        return real_import(name, globals, locals, fromlist, level)

    return safe_import


def _restricted_builtins() -> dict[str, Any]:
    import builtins

    allowed = {k: v for k, v in vars(builtins).items() if k not in FORBIDDEN_CALLS and not k.startswith("_")}
    allowed["__import__"] = _safe_import_factory(builtins.__import__)
    allowed["__build_class__"] = builtins.__build_class__
    allowed["__name__"] = "builtins"
    return allowed


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


def _collect_shape(value: Any) -> Any:
    """Turn a program's result object into a single cadquery Shape (Solid or Compound) or raise."""
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
            raise _ProgramError("invalid_shape", "the result is a 2D Sketch, not a solid")

    visit(value)
    if not solids:
        raise _ProgramError("invalid_shape", f"the result ({type(value).__name__}) holds no solid")
    for s in solids:
        if not (s.isValid() or _is_closed(s)):
            raise _ProgramError("invalid_shape", "a solid of the result is not valid (BRepCheck failed) and not closed")
    volume = sum(s.Volume() for s in solids)
    if not volume > 1e-12:
        raise _ProgramError("invalid_shape", f"the result has non-positive volume {volume:.3g}")
    return solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)


def _execute_program(code: str, enforce_policy: bool, output: _CappedWriter) -> Any:
    import cadquery as cq

    try:
        if enforce_policy:
            check_policy(code)
        compiled = compile(code, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        if isinstance(exc, PolicyViolation):
            raise _ProgramError("forbidden", str(exc)) from None
        if isinstance(exc, MemoryError):
            raise _ProgramError("memory_limit", "MemoryError while parsing") from None
        raise _ProgramError("syntax_error", f"{type(exc).__name__}: {exc}") from None
    shown: list[Any] = []

    def show_object(obj: Any, *args: Any, **kwargs: Any) -> None:
        shown.append(obj)

    namespace: dict[str, Any] = {
        "__builtins__": _restricted_builtins() if enforce_policy else __builtins__,
        "__name__": "__cadcoder_program__",
        "cq": cq,
        "cadquery": cq,
        "show_object": show_object,
    }
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            exec(compiled, namespace)  # noqa: S102 - the whole point: this is the isolated child
        except MemoryError:
            raise _ProgramError("memory_limit", "MemoryError: the program exceeded the memory limit") from None
        except SystemExit as exc:
            raise _ProgramError("runtime_error", f"SystemExit({exc.code!r})") from None
        except RecursionError as exc:
            raise _ProgramError("runtime_error", f"RecursionError: {exc}") from None
        except BaseException as exc:  # noqa: BLE001 - any program error is a runtime_error
            text = f"{type(exc).__name__}: {exc}"
            if "memory" in text.lower() and ("alloc" in text.lower() or "outofmemory" in text.lower()):
                raise _ProgramError("memory_limit", text[:500]) from None
            raise _ProgramError("runtime_error", text[:500]) from None
    for name in RESULT_NAMES:
        if name in namespace and namespace[name] is not None:
            return namespace[name]
    if shown:
        return shown[-1]
    raise _ProgramError("no_result", f"no variable named one of {RESULT_NAMES[:3]}... and no show_object() call")


def _limit_child(limits: dict[str, Any]) -> None:
    import resource

    os.setsid()
    mem = int(limits["memory_limit_mb"]) * 1024 * 1024
    cpu = max(1, int(limits["cpu_seconds"]))
    for res_, val in (
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (0, 0)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(res_, val)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir(limits["scratch_dir"])
    if os.geteuid() == 0 and limits.get("jail", True):
        os.chroot(limits["scratch_dir"])
        os.chdir("/")
    uid = limits.get("uid")
    if uid is not None:
        # OpenCascade's booleans need a few threads, so fork/threads are bounded, not forbidden; the
        # private uid lets the zygote kill every process the program left behind (see _sweep_uid).
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
        with contextlib.suppress(OSError):
            os.setgroups([])
        os.setgid(65534)
        os.setuid(uid)


def _child_main(job: dict[str, Any], task: Callable[..., Any], write_fd: int) -> None:
    """Body of the forked child. Never returns."""
    status, value, error = "crashed", None, ""
    output = _CappedWriter(int(job["limits"]["output_limit"]))
    try:
        try:
            _limit_child(job["limits"])
        except Exception as exc:  # noqa: BLE001
            raise _ProgramError("crashed", f"could not isolate the child: {exc}") from None
        result_obj = _execute_program(job["code"], job["enforce_policy"], output)
        try:
            shape = _collect_shape(result_obj)
        except _ProgramError:
            raise
        except MemoryError:
            raise _ProgramError("memory_limit", "MemoryError while validating the result") from None
        except BaseException as exc:  # noqa: BLE001
            raise _ProgramError("invalid_shape", f"{type(exc).__name__}: {exc}"[:500]) from None
        try:
            value = task(shape, **job["task_kwargs"])
        except MemoryError:
            raise _ProgramError("memory_limit", "MemoryError inside the task") from None
        except BaseException as exc:  # noqa: BLE001
            hint = ""
            if isinstance(exc, ImportError | OSError) and job["limits"].get("jail", True):
                hint = " (the child may run chrooted in an empty directory: import modules at the top of the task's module)"
            raise _ProgramError("runtime_error", f"task failed: {type(exc).__name__}: {exc}"[:400] + hint) from None
        status = "ok"
    except _ProgramError as exc:
        status, value, error = exc.status, None, exc.error
    except BaseException as exc:  # noqa: BLE001
        status, value, error = "crashed", None, f"{type(exc).__name__}: {exc}"[:500]
    try:
        payload = pickle.dumps((status, value, error, output.getvalue()), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        payload = pickle.dumps(("runtime_error", None, f"task value is not picklable: {exc}"[:500], ""))
    if len(payload) > int(job["limits"]["result_limit"]):
        payload = pickle.dumps(("runtime_error", None, f"task value is {len(payload)} bytes; over the result limit", ""))
    payload = _PROTO_HEADER.pack(len(payload)) + payload
    with contextlib.suppress(OSError):
        view = memoryview(payload)
        while view:
            n = os.write(write_fd, view)
            view = view[n:]
    os._exit(0)


# ----------------------------------------------------------------------------------------------
# Zygote: a warm process per worker slot; forks one child per job and reports back.
# ----------------------------------------------------------------------------------------------
def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = _PROTO_HEADER.pack(len(data)) + data
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks = []
    while n > 0:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None) -> Any:
    header = _recv_exact(fd, _PROTO_HEADER.size, deadline)
    if header is None:
        raise EOFError
    body = _recv_exact(fd, _PROTO_HEADER.unpack(header)[0], deadline)
    if body is None:
        raise EOFError
    return pickle.loads(body)  # noqa: S301 - trusted channel between our own processes


def _unshare_network() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(0x40000000) == 0  # CLONE_NEWNET
    except Exception:  # noqa: BLE001
        return False


def _prepare_occ() -> None:
    """Import cadquery and switch OpenCascade's thread pools off: forking after parallel work deadlocks."""
    import cadquery  # noqa: F401
    from OCP.BOPAlgo import BOPAlgo_Options
    from OCP.BRepMesh import BRepMesh_IncrementalMesh

    BOPAlgo_Options.SetParallelMode_s(False)
    BRepMesh_IncrementalMesh.SetParallelDefault_s(False)


def _resolve_task(task: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(task):
        return task
    module, _, name = task.partition(":")
    if not name:
        raise ValueError(f"task {task!r} must look like 'package.module:function'")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _private_uid() -> int:
    """An unprivileged uid no other live zygote uses (derived from this zygote's pid)."""
    return 200_000 + os.getpid()


def _zygote_main() -> None:
    """Entry point of a zygote process (``python -m cadcoder.sandbox --zygote``)."""
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of a job come back here
    isolate_network = os.environ.get("CADCODER_SANDBOX_NET", "1") == "1"
    net_isolated = _unshare_network() if isolate_network else False
    _prepare_occ()
    gc.collect()
    gc.freeze()  # objects imported so far are never touched by the children's GC: fewer copy-on-write faults
    _send(proto_out, ("ready", {"pid": os.getpid(), "net_isolated": net_isolated}))
    while True:
        try:
            job = _recv(proto_in)
        except (EOFError, OSError):
            os._exit(0)
        except Exception as exc:  # noqa: BLE001 - an unreadable job must not kill the warm worker
            _send(proto_out, ("done", ("runtime_error", None, f"unreadable job: {exc}", "")))
            continue
        if job is None:
            os._exit(0)
        try:
            task = _resolve_task(job["task"])
            gc.freeze()
        except Exception as exc:  # noqa: BLE001
            _send(proto_out, ("done", ("runtime_error", None, f"cannot load task {job['task']!r}: {exc}", "")))
            continue
        scratch = tempfile.mkdtemp(prefix="cadcoder-sbx-")
        os.chmod(scratch, 0o555)  # the unprivileged child may not write here either
        job["limits"]["scratch_dir"] = scratch
        job["limits"]["uid"] = _private_uid() if os.geteuid() == 0 and job["limits"].get("drop_privileges") else None
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                os.close(proto_in)
                os.close(proto_out)
                _child_main(job, task, write_fd)
            finally:
                os._exit(70)
        os.close(write_fd)
        _send(proto_out, ("started", pid))
        _send(proto_out, ("done", _supervise(pid, read_fd, job["limits"])))
        os.close(read_fd)
        shutil.rmtree(scratch, ignore_errors=True)


def _supervise(pid: int, read_fd: int, limits: dict[str, Any]) -> tuple[str, Any, str, str]:
    """Collect the child's result, killing its process group at the deadline."""
    deadline = time.monotonic() + float(limits["timeout"])
    cap = int(limits["result_limit"]) + 4096
    chunks: list[bytes] = []
    size = 0
    timed_out = oversize = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            timed_out = True
            break
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            oversize = True
            break
        chunks.append(chunk)
        # A complete message ends the wait even if a stray fork of the program still holds the pipe.
        if size >= _PROTO_HEADER.size and size >= _PROTO_HEADER.size + _PROTO_HEADER.unpack(b"".join(chunks)[: _PROTO_HEADER.size])[0]:
            break
    if timed_out or oversize:
        _kill_group(pid)
    try:
        _, wait_status = _waitpid_with_deadline(pid, 2.0)
    except TimeoutError:
        _kill_group(pid)
        _, wait_status = os.waitpid(pid, 0)
    _kill_group(pid)
    if limits.get("uid") is not None:
        _sweep_uid(int(limits["uid"]))
    _reap_orphans()
    if timed_out:
        return ("timeout", None, f"no result within {limits['timeout']} s; process group killed", "")
    if oversize:
        return ("runtime_error", None, "the result exceeded the result size limit", "")
    data = b"".join(chunks)[_PROTO_HEADER.size :]
    if data:
        try:
            return pickle.loads(data)  # noqa: S301 - produced by our own child code before exit
        except Exception as exc:  # noqa: BLE001
            return ("crashed", None, f"unreadable result: {exc}", "")
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig == signal.SIGXCPU:
            return ("timeout", None, "CPU time limit exceeded (SIGXCPU)", "")
        return ("crashed", None, f"killed by signal {signal.Signals(sig).name}", "")
    return ("crashed", None, f"exited with status {os.WEXITSTATUS(wait_status)} without a result", "")


def _waitpid_with_deadline(pid: int, seconds: float) -> tuple[int, int]:
    end = time.monotonic() + seconds
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return got, status
        if time.monotonic() > end:
            raise TimeoutError
        time.sleep(0.002)


def _reap_orphans(seconds: float = 2.0) -> None:
    """Reap killed strays: the zygote is their subreaper, so they come back to it as children."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not got:
            time.sleep(0.002)


def _sweep_uid(uid: int) -> None:
    """Kill every process owned by the job's private uid (forks that left the process group).

    Scans ``/proc`` (cheaper than forking a helper from this large process); repeats until a pass finds
    nothing, because a stray may fork while it is being killed (``RLIMIT_NPROC`` bounds how often).
    """
    for _ in range(100):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                os.kill(int(name), signal.SIGKILL)
                found = True
            except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
                continue
        if not found:
            return
        _reap_orphans(0.2)


def _kill_group(pid: int) -> None:
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            target()


# ----------------------------------------------------------------------------------------------
# Caller side.
# ----------------------------------------------------------------------------------------------
class _Worker:
    """Caller-side handle of one zygote process."""

    def __init__(self, env: dict[str, str], start_timeout: float) -> None:
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.child_pid: int | None = None

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cadcoder.sandbox import _zygote_main; _zygote_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            close_fds=True,
        )
        try:
            kind, info = _recv(self.proc.stdout.fileno(), time.monotonic() + self.start_timeout)
        except (EOFError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(
                "the sandbox worker did not start; check that `python -c 'import cadquery'` works "
                f"in this environment ({type(exc).__name__})"
            ) from None
        self.info = info

    def run(self, job: dict[str, Any]) -> tuple[str, Any, str, str]:
        for _attempt in range(2):
            started, result = self._run_once(job)
            if started or result[0] != "crashed":
                return result
            # The zygote was already dead before the program started: respawn it and try once more.
        return result

    def _run_once(self, job: dict[str, Any]) -> tuple[bool, tuple[str, Any, str, str]]:
        self.ensure()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        out_fd = self.proc.stdout.fileno()
        grace = 10.0
        deadline = time.monotonic() + float(job["limits"]["timeout"]) + grace
        self.child_pid = None
        started = False
        try:
            _send(self.proc.stdin.fileno(), job)
            while True:
                kind, payload = _recv(out_fd, deadline)
                if kind == "started":
                    self.child_pid = payload
                    started = True
                elif kind == "done":
                    self.child_pid = None
                    return True, payload
        except TimeoutError:
            self._kill_child()
            self.stop()
            return True, ("timeout", None, "the worker did not answer in time; it was restarted", "")
        except (EOFError, OSError, BrokenPipeError):
            self._kill_child()
            self.stop()
            return started, ("crashed", None, "the sandbox worker died while running the program; it was restarted", "")

    def _kill_child(self) -> None:
        if self.child_pid is not None:
            _kill_group(self.child_pid)
            self.child_pid = None

    def stop(self) -> None:
        self._kill_child()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            proc.stdout.close()


class Sandbox:
    """Pool of isolated CadQuery workers.

    Args:
        num_workers: parallel worker slots (default: ``os.cpu_count()``, at most 8).
        timeout: wall-clock seconds per program, task included.
        memory_limit_mb: address-space limit of each program's process (cadquery alone maps ~1 GB).
        output_limit: characters of Python-level output kept per program.
        result_limit: bytes of pickled task result accepted per program.
        isolate_network: run workers in an empty network namespace when the OS allows it.
        drop_privileges: when running as root, run programs under a private unprivileged uid.
        jail: when running as root, ``chroot`` each program's process into its empty, read-only scratch
            directory, so not even an empty file can be created. The task's module is imported in the warm
            worker before forking; modules a task imports lazily inside the function are then unreachable,
            so tasks must import what they need at module level.
        enforce_policy: apply :func:`check_policy` and restricted builtins. Only tests of the OS layer
            itself should switch this off.
        start_timeout: seconds allowed for a worker to start (import cadquery).

    Use as a context manager, or call :meth:`close`; workers start lazily on first use.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout: float = 10.0,
        memory_limit_mb: int = 3072,
        output_limit: int = 20_000,
        result_limit: int = 64 * 1024 * 1024,
        isolate_network: bool = True,
        drop_privileges: bool = True,
        jail: bool = True,
        enforce_policy: bool = True,
        start_timeout: float = 120.0,
    ) -> None:
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.num_workers = int(num_workers)
        self.timeout = float(timeout)
        self.limits = {
            "timeout": self.timeout,
            "cpu_seconds": int(self.timeout) + 2,
            "memory_limit_mb": int(memory_limit_mb),
            "output_limit": int(output_limit),
            "result_limit": int(result_limit),
            "drop_privileges": bool(drop_privileges),
            "jail": bool(jail),
        }
        self.enforce_policy = bool(enforce_policy)
        env = dict(os.environ)
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The zygote must import the caller's task modules (tests, scripts), so it inherits sys.path.
        paths = [pkg_root] + [os.path.abspath(p or os.getcwd()) for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
        env["CADCODER_SANDBOX_NET"] = "1" if isolate_network else "0"
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        self._workers = [_Worker(env, start_timeout) for _ in range(self.num_workers)]
        self._free: queue.Queue[_Worker] = queue.Queue()
        for w in self._workers:
            self._free.put(w)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop every worker process. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for w in self._workers:
            w.stop()

    def worker_pids(self) -> list[int]:
        """Process ids of the running zygotes (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    @property
    def network_isolated(self) -> bool | None:
        """Whether started workers run in an empty network namespace (None before any worker started)."""
        infos = [w.info for w in self._workers if w.info]
        return all(i.get("net_isolated") for i in infos) if infos else None

    # -- running ---------------------------------------------------------------------------------
    def _job(self, code: str, task: str | Callable[..., Any], task_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise RuntimeError("this Sandbox is closed; create a new one")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str of CadQuery source, got {type(code).__name__}")
        if callable(task) and (getattr(task, "__qualname__", "").find("<") >= 0 or not getattr(task, "__module__", None)):
            raise ValueError("task must be a module-level function (picklable by reference), or 'module:function'")
        if callable(task):
            task = f"{task.__module__}:{task.__qualname__}"
        return {
            "code": code,
            "task": task,
            "task_kwargs": task_kwargs,
            "limits": dict(self.limits),
            "enforce_policy": self.enforce_policy,
        }

    def _run_job(self, job: dict[str, Any]) -> SandboxResult:
        worker = self._free.get()
        t0 = time.monotonic()
        try:
            status, value, error, output = worker.run(job)
        finally:
            self._free.put(worker)
        return SandboxResult(status=status, value=value, error=error, seconds=time.monotonic() - t0, output=output)

    def run(self, code: str, task: TaskRef = DESCRIBE_SHAPE, **task_kwargs: Any) -> SandboxResult:
        """Run one program and the task on its result.

        Args:
            code: CadQuery source (untrusted).
            task: module-level function ``task(shape, **task_kwargs)`` or its ``"module:function"`` name,
                run inside the isolated child on the validated shape.
            **task_kwargs: picklable keyword arguments for the task.

        Returns:
            A :class:`SandboxResult`; failures are reported in ``status``, never raised.
        """
        return self._run_job(self._job(code, task, task_kwargs))

    def map(
        self,
        codes: Sequence[str | SandboxJob],
        task: TaskRef = DESCRIBE_SHAPE,
        progress: bool | str = False,
        on_result: Callable[[int, SandboxResult], None] | None = None,
        **task_kwargs: Any,
    ) -> list[SandboxResult]:
        """Run many programs in parallel over the worker slots; results come back in input order.

        Args:
            codes: CadQuery sources, each run with ``task`` and ``task_kwargs``, or :class:`SandboxJob` items
                that carry their own task and keyword arguments (the two may be mixed).
            task: the task for plain sources (see :meth:`run`).
            progress: show a tqdm bar; a string is used as its description.
            on_result: called as ``on_result(index, result)`` as each job finishes, from the calling
                thread's pool, one call at a time (write partial results or checkpoints here).
            **task_kwargs: keyword arguments for the task of plain sources.

        Returns:
            One :class:`SandboxResult` per input, in input order; failures are reported, never raised.
        """
        jobs = [
            self._job(c.code, c.task, dict(c.kwargs)) if isinstance(c, SandboxJob) else self._job(c, task, task_kwargs)
            for c in codes
        ]
        results: list[SandboxResult | None] = [None] * len(jobs)
        bar = None
        if progress and jobs:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc=progress if isinstance(progress, str) else "sandbox", unit="prog")
        lock = threading.Lock()
        it = iter(enumerate(jobs))
        errors: list[BaseException] = []

        def loop() -> None:
            while True:
                with lock:
                    nxt = None if errors else next(it, None)
                if nxt is None:
                    return
                i, job = nxt
                result = self._run_job(job)
                results[i] = result
                with lock:
                    if bar is not None:
                        bar.update(1)
                    if on_result is not None and not errors:
                        try:
                            on_result(i, result)
                        except BaseException as exc:  # re-raised in the caller's thread below
                            errors.append(exc)

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(min(self.num_workers, len(jobs)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if bar is not None:
            bar.close()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]


@contextlib.contextmanager
def borrow_or_open(
    sandbox: Sandbox | None = None, num_workers: int | None = None, timeout: float = 10.0
) -> Iterator[Sandbox]:
    """Use the caller's sandbox when one is given (left open), or open one for the block and close it after.

    Args:
        sandbox: an open :class:`Sandbox` to borrow, or ``None``.
        num_workers, timeout: settings of the sandbox opened when none is given.
    """
    if sandbox is not None:
        yield sandbox
        return
    with Sandbox(num_workers=num_workers, timeout=timeout) as opened:
        yield opened

if __name__ == "__main__":
    _zygote_main()
