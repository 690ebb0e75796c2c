"""The sandbox's process side: the warm zygote, the isolated child it forks per program, and the cleanup.

:class:`cadcoder.sandbox.Sandbox` starts :func:`zygote_main` in a fresh interpreter
(``python -c "from cadcoder.sandbox_worker import zygote_main; zygote_main()"``, with ``PYTHONPATH`` set
to the package root and the caller's ``sys.path``) and talks to it over stdin/stdout with
:mod:`cadcoder.sandbox_protocol`. The zygote imports cadquery once with OpenCascade's parallel mode
switched off, then per job imports the task's module, forks a child and supervises it
(:func:`supervise`).

The child isolates itself (:func:`limit_child`) before anything untrusted runs: its own session, resource
limits, C-level output to ``/dev/null``, an empty read-only scratch directory (as root a ``chroot`` into it)
and, as root, a private unprivileged uid. After a chroot nothing new can be imported, so everything the
child runs (:mod:`cadcoder.sandbox_program`, the policy, the task's module) is imported by this module or
by the zygote before it forks.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import resource
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cadcoder.sandbox_program import CappedWriter, ProgramError, collect_shape, execute_program
from cadcoder.sandbox_protocol import HEADER, frame_length, recv, send, write_frame

__all__ = ["kill_group", "supervise", "zygote_main"]

_CLONE_NEWNET = 0x40000000
_PR_SET_CHILD_SUBREAPER = 36
_NOGROUP_GID = 65534
_CHILD_NPROC = 64


# ----------------------------------------------------------------------------------------------
# Child: runs inside the forked, limited process.
# ----------------------------------------------------------------------------------------------
def limit_child(limits: dict[str, Any]) -> None:
    """Isolate the forked child: new session, rlimits, output to /dev/null, scratch dir (chroot), private uid.

    Args:
        limits: the job's limits, with ``scratch_dir`` and ``uid`` (or None) filled in by the zygote.
    """
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
            resource.setrlimit(resource.RLIMIT_NPROC, (_CHILD_NPROC, _CHILD_NPROC))
        with contextlib.suppress(OSError):
            os.setgroups([])
        os.setgid(_NOGROUP_GID)
        os.setuid(uid)


def _validated_shape(result_obj: Any) -> Any:
    """:func:`collect_shape`, with any other failure of validation mapped to a sandbox status."""
    try:
        return collect_shape(result_obj)
    except ProgramError:
        raise
    except MemoryError:
        raise ProgramError("memory_limit", "MemoryError while validating the result") from None
    except BaseException as exc:  # noqa: BLE001
        raise ProgramError("invalid_shape", f"{type(exc).__name__}: {exc}"[:500]) from None


def _run_task(task: Callable[..., Any], shape: Any, job: dict[str, Any]) -> Any:
    """Call the task on the shape, mapping its failure to a sandbox status."""
    try:
        return task(shape, **job["task_kwargs"])
    except MemoryError:
        raise ProgramError("memory_limit", "MemoryError inside the task") from None
    except BaseException as exc:  # noqa: BLE001
        hint = ""
        if isinstance(exc, ImportError | OSError) and job["limits"].get("jail", True):
            hint = " (the child may run chrooted in an empty directory: import modules at the top of the task's module)"
        raise ProgramError("runtime_error", f"task failed: {type(exc).__name__}: {exc}"[:400] + hint) from None


def _encode_result(result: tuple[str, Any, str, str], result_limit: int) -> bytes:
    """Pickle the child's result, replaced by a ``runtime_error`` when it does not pickle or is too large."""
    try:
        payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        payload = pickle.dumps(("runtime_error", None, f"task value is not picklable: {exc}"[:500], ""))
    if len(payload) > result_limit:
        payload = pickle.dumps(("runtime_error", None, f"task value is {len(payload)} bytes; over the result limit", ""))
    return payload


def child_main(job: dict[str, Any], task: Callable[..., Any], write_fd: int) -> None:
    """Body of the forked child: isolate, run the program, validate, run the task, write the result. Never returns."""
    status, value, error = "crashed", None, ""
    output = CappedWriter(int(job["limits"]["output_limit"]))
    try:
        try:
            limit_child(job["limits"])
        except Exception as exc:  # noqa: BLE001
            raise ProgramError("crashed", f"could not isolate the child: {exc}") from None
        shape = _validated_shape(execute_program(job["code"], job["enforce_policy"], output))
        value = _run_task(task, shape, job)
        status = "ok"
    except ProgramError as exc:
        status, value, error = exc.status, None, exc.error
    except BaseException as exc:  # noqa: BLE001
        status, value, error = "crashed", None, f"{type(exc).__name__}: {exc}"[:500]
    payload = _encode_result((status, value, error, output.getvalue()), int(job["limits"]["result_limit"]))
    with contextlib.suppress(OSError):
        write_frame(write_fd, payload)
    os._exit(0)


# ----------------------------------------------------------------------------------------------
# Zygote: a warm process per worker slot; forks one child per job and reports back.
# ----------------------------------------------------------------------------------------------
def _unshare_network() -> bool:
    """Move this process into an empty network namespace; False where the OS does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(_CLONE_NEWNET) == 0
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
    """The task function for a ``"package.module:function"`` name (importing its module), or the function itself."""
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


def _start_zygote() -> tuple[int, int]:
    """Take the protocol pipes off stdin/stdout, become subreaper, isolate the network, load cadquery, say ready.

    Returns:
        The protocol's input and output file descriptors.
    """
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a job come back here
    isolate_network = os.environ.get("CADCODER_SANDBOX_NET", "1") == "1"
    net_isolated = _unshare_network() if isolate_network else False
    _prepare_occ()
    gc.collect()
    gc.freeze()  # objects imported so far are never touched by the children's GC: fewer copy-on-write faults
    send(proto_out, ("ready", {"pid": os.getpid(), "net_isolated": net_isolated}))
    return proto_in, proto_out


def _fork_job(job: dict[str, Any], task: Callable[..., Any], proto_in: int, proto_out: int) -> None:
    """Fork the child for one job in a fresh scratch directory, report its pid, then its supervised result."""
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
            child_main(job, task, write_fd)
        finally:
            os._exit(70)
    os.close(write_fd)
    send(proto_out, ("started", pid))
    send(proto_out, ("done", supervise(pid, read_fd, job["limits"])))
    os.close(read_fd)
    shutil.rmtree(scratch, ignore_errors=True)


def zygote_main() -> None:
    """Entry point of a zygote process: serve jobs from stdin until it closes or a ``None`` job arrives."""
    proto_in, proto_out = _start_zygote()
    while True:
        try:
            job = recv(proto_in)
        except (EOFError, OSError):
            os._exit(0)
        except Exception as exc:  # noqa: BLE001 - an unreadable job must not kill the warm worker
            send(proto_out, ("done", ("runtime_error", None, f"unreadable job: {exc}", "")))
            continue
        if job is None:
            os._exit(0)
        try:
            task = _resolve_task(job["task"])
            gc.freeze()
        except Exception as exc:  # noqa: BLE001
            send(proto_out, ("done", ("runtime_error", None, f"cannot load task {job['task']!r}: {exc}", "")))
            continue
        _fork_job(job, task, proto_in, proto_out)


def _read_result(read_fd: int, deadline: float, cap: int) -> tuple[bytes, bool, bool]:
    """Read the child's result frame until it is complete, the pipe closes, the deadline or the size cap.

    Returns:
        ``(data, timed_out, oversize)``.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True, False
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            return b"".join(chunks), True, False
        chunk = os.read(read_fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), False, False
        size += len(chunk)
        if size > cap:
            return b"".join(chunks), False, True
        chunks.append(chunk)
        # A complete message ends the wait even if a stray fork of the program still holds the pipe.
        total = frame_length(b"".join(chunks))
        if total is not None and size >= total:
            return b"".join(chunks), False, False


def supervise(pid: int, read_fd: int, limits: dict[str, Any]) -> tuple[str, Any, str, str]:
    """Collect the child's result, killing its process group at the deadline, and clean up after it.

    Returns:
        ``(status, value, error, output)`` as the caller's :class:`cadcoder.sandbox.SandboxResult` holds them.
    """
    deadline = time.monotonic() + float(limits["timeout"])
    data, timed_out, oversize = _read_result(read_fd, deadline, int(limits["result_limit"]) + 4096)
    if timed_out or oversize:
        kill_group(pid)
    try:
        _, wait_status = _waitpid_with_deadline(pid, 2.0)
    except TimeoutError:
        kill_group(pid)
        _, wait_status = os.waitpid(pid, 0)
    kill_group(pid)
    if limits.get("uid") is not None:
        _sweep_uid(int(limits["uid"]))
    _reap_orphans()
    if timed_out:
        return ("timeout", None, f"no result within {limits['timeout']} s; process group killed", "")
    if oversize:
        return ("runtime_error", None, "the result exceeded the result size limit", "")
    return _decode_result(data, wait_status)


def _decode_result(data: bytes, wait_status: int) -> tuple[str, Any, str, str]:
    """The child's unpickled result, or a ``crashed``/``timeout`` status from how it ended without one."""
    body = data[HEADER.size :]
    if body:
        try:
            return pickle.loads(body)  # noqa: S301 - produced by our own child code before exit
        except Exception as exc:  # noqa: BLE001
            return ("crashed", None, f"unreadable result: {exc}", "")
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        if sig == signal.SIGXCPU:
            return ("timeout", None, "CPU time limit exceeded (SIGXCPU)", "")
        return ("crashed", None, f"killed by signal {signal.Signals(sig).name}", "")
    return ("crashed", None, f"exited with status {os.WEXITSTATUS(wait_status)} without a result", "")


def _waitpid_with_deadline(pid: int, seconds: float) -> tuple[int, int]:
    """``waitpid`` that raises TimeoutError after ``seconds``."""
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


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``, and the process itself; quiet when it is already gone."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            target()


if __name__ == "__main__":
    zygote_main()
