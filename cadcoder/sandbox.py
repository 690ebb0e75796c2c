"""Run untrusted CadQuery source in isolated worker processes and return a solid or a failure reason.

Every program that a model writes goes through this module; nothing else in CadCoder ``exec``\\ s generated
code. Two layers defend the caller:

1. **Policy** (:func:`check_policy`, in :mod:`cadcoder.sandbox_policy`): an AST check of the source.
   Imports are limited to ``cadquery``, ``math`` and ``numpy``; dunder attributes, ``exec``/``eval``/
   ``compile``/``open``/``getattr``/``globals`` and friends, frame objects and names that lead to the OS
   (``os``, ``sys``, ``subprocess``...) are refused with the reason ``forbidden``.
2. **OS isolation** (:mod:`cadcoder.sandbox_worker`). One warm *zygote* process per worker slot imports
   cadquery once (about 1.7 s) with OpenCascade's parallel mode switched off, then ``fork``\\ s a fresh
   child for every program, so no state (a monkeypatched cadquery, a leaked global) survives from one
   program to the next. The child, before running anything untrusted:

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
   pipe whose size is capped (:mod:`cadcoder.sandbox_protocol`).

**Choosing the result** (:mod:`cadcoder.sandbox_program`). The first of ``solid``, ``result``, then the
other :data:`RESULT_NAMES` bound by the program wins, else the last object passed to ``show_object(...)``.
It must hold at least one valid (or closed) solid of positive volume, otherwise the status is
``invalid_shape``.

**Tasks.** ``task`` is a module-level function ``task(shape, **kwargs) -> picklable`` (or its
``"module:function"`` name; :mod:`cadcoder.tasks` names each of the project's tasks once). It runs
*inside* the isolated child after validation, because OpenCascade can segfault on valid solids too
(booleans, tessellation, rendering). The default task, :func:`describe_shape`, returns volume, bounding
box and solid count.

This module is the caller's side: :class:`Sandbox` (the pool of workers, :meth:`Sandbox.run` and
:meth:`Sandbox.map`), :class:`SandboxResult`, :class:`SandboxJob` and :func:`borrow_or_open`.

Example::

    with Sandbox(num_workers=2, timeout=10) as sb:
        res = sb.run("solid = cq.Workplane().box(1, 2, 3)")
        assert res.ok and abs(res.value["volume"] - 6) < 1e-9
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cadcoder.sandbox_policy import ALLOWED_IMPORTS, FORBIDDEN_CALLS, FORBIDDEN_NAMES, PolicyViolation, check_policy
from cadcoder.sandbox_program import RESULT_NAMES, describe_shape
from cadcoder.sandbox_protocol import recv, send
from cadcoder.sandbox_worker import kill_group, zygote_main
from cadcoder.tasks import DESCRIBE_SHAPE, TaskRef

__all__ = [
    "ALLOWED_IMPORTS",
    "FAILURE_REASONS",
    "FORBIDDEN_CALLS",
    "FORBIDDEN_NAMES",
    "RESULT_NAMES",
    "PolicyViolation",
    "Sandbox",
    "SandboxJob",
    "SandboxResult",
    "borrow_or_open",
    "check_policy",
    "describe_shape",
    "progress_bar",
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
_ZYGOTE_COMMAND = "from cadcoder.sandbox_worker import zygote_main; zygote_main()"


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


def _zygote_env(isolate_network: bool) -> dict[str, str]:
    """Environment of a zygote: the package root and the caller's ``sys.path`` on ``PYTHONPATH``, one BLAS thread."""
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The zygote must import the caller's task modules (tests, scripts), so it inherits sys.path.
    paths = [pkg_root] + [os.path.abspath(p or os.getcwd()) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
    env["CADCODER_SANDBOX_NET"] = "1" if isolate_network else "0"
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


class _Worker:
    """Caller-side handle of one zygote process (:func:`cadcoder.sandbox_worker.zygote_main`)."""

    def __init__(self, env: dict[str, str], start_timeout: float) -> None:
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.child_pid: int | None = None

    def ensure(self) -> None:
        """Start the zygote unless it is running, and wait for its ready message."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_COMMAND],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            close_fds=True,
        )
        try:
            kind, info = recv(self.proc.stdout.fileno(), time.monotonic() + self.start_timeout)
        except (EOFError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(
                "the sandbox worker did not start; check that `python -c 'import cadquery'` works "
                f"in this environment ({type(exc).__name__})"
            ) from None
        self.info = info

    def run(self, job: dict[str, Any]) -> tuple[str, Any, str, str]:
        """Run one job; a zygote found dead before the program started is respawned and the job retried once."""
        for _attempt in range(2):
            started, result = self._run_once(job)
            if started or result[0] != "crashed":
                return result
            # The zygote was already dead before the program started: respawn it and try once more.
        return result

    def _run_once(self, job: dict[str, Any]) -> tuple[bool, tuple[str, Any, str, str]]:
        """Send the job and wait for its result; also says whether the program started."""
        self.ensure()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        out_fd = self.proc.stdout.fileno()
        grace = 10.0
        deadline = time.monotonic() + float(job["limits"]["timeout"]) + grace
        self.child_pid = None
        started = False
        try:
            send(self.proc.stdin.fileno(), job)
            while True:
                kind, payload = recv(out_fd, deadline)
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
            kill_group(self.child_pid)
            self.child_pid = None

    def stop(self) -> None:
        """Kill the running program's group, close the zygote's stdin and wait for it (killing it if it lingers)."""
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
        env = _zygote_env(isolate_network)
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
    def _job(self, code: str, task: TaskRef, task_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The message for the zygote: source, task name, task arguments, limits and the policy switch."""
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
        """Run a job on the next free worker."""
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
        bar = progress_bar(progress, len(jobs))
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
                try:
                    result = self._run_job(job)
                except BaseException as exc:  # a worker that cannot start: re-raised in the caller's thread
                    with lock:
                        errors.append(exc)
                    return
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
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            if bar is not None:
                bar.close()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]


def progress_bar(progress: bool | str, total: int) -> Any:
    """A tqdm bar for ``total`` programs when ``progress`` asks for one (a string is its description), else None."""
    if not progress or not total:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=progress if isinstance(progress, str) else "sandbox", unit="prog")


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
    zygote_main()
