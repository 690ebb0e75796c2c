"""Tests of cadcoder.sandbox: policy, OS isolation, hostile programs, lifecycle."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_programs import BENIGN, BENIGN_VOLUME, HOSTILE, TOUCHED_MEMORY_GROWTH  # noqa: E402

from cadcoder.sandbox import FAILURE_REASONS, PolicyViolation, Sandbox, check_policy  # noqa: E402

TIMEOUT = 4.0
IS_ROOT = os.geteuid() == 0


def shape_volume(shape) -> float:
    """Module-level task used by the tests."""
    return float(shape.Volume())


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(num_workers=2, timeout=TIMEOUT, memory_limit_mb=2048) as sb:
        yield sb


@pytest.fixture(scope="module")
def open_sandbox():
    """Policy switched off: tests the OS layer alone. Only meaningful with root (uid drop + chroot)."""
    if not IS_ROOT:
        pytest.skip("the OS-only checks need root (private uid, chroot); the policy layer is tested without it")
    with Sandbox(num_workers=2, timeout=TIMEOUT, memory_limit_mb=2048, enforce_policy=False) as sb:
        yield sb


def _leftover_private_processes(sb: Sandbox) -> list[int]:
    """Processes still running under one of this sandbox's private job uids (200000 + zygote pid)."""
    private = {200_000 + pid for pid in sb.worker_pids()}
    out = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids is not None and uids.real in private:
            out.append(proc.pid)
    return out


@pytest.mark.parametrize(
    "code",
    [
        "import os",
        "from os import path",
        "import cadquery.occ_impl.exporters",
        "x = cq.__dict__",
        "x = ().__class__",
        "exec('1')",
        "f = open('x')",
        "g = getattr(cq, 'Workplane')",
        "h = globals()",
        "def f():\n    yield 1",
        "x = cq.exporters",
        "import numpy as np\nnp.save('a', 1)",
    ],
)
def test_policy_rejects(code):
    with pytest.raises(PolicyViolation):
        check_policy(code)


def test_policy_accepts_ordinary_programs():
    check_policy("import cadquery as cq\nimport math\nimport numpy as np\nsolid = cq.Workplane().box(1, 2, 3)")
    check_policy("from cadquery import Workplane\nr = Workplane('XZ').circle(math.pi).extrude(1)")
    with pytest.raises(SyntaxError):
        check_policy("solid = (")


def test_benign_and_result_choice(sandbox):
    res = sandbox.run(BENIGN)
    assert res.ok, res
    assert res.value["volume"] == pytest.approx(BENIGN_VOLUME)
    assert res.value["n_solids"] == 1
    # `solid` wins over `result`; show_object is the last resort; cq/cadquery are pre-bound.
    res = sandbox.run("result = cq.Workplane().box(1, 1, 1)\nsolid = cadquery.Workplane().box(2, 2, 2)")
    assert res.value["volume"] == pytest.approx(8.0)
    res = sandbox.run("a = cq.Workplane().box(1, 1, 3)\nshow_object(a)", task=shape_volume)
    assert res.ok and res.value == pytest.approx(3.0)


def test_map_keeps_input_order(sandbox):
    codes = [f"solid = cq.Workplane().box(1, 1, {k})" for k in (3, 1, 2)] + ["x ="]
    results = sandbox.map(codes, task=shape_volume)
    assert [r.status for r in results] == ["ok", "ok", "ok", "syntax_error"]
    assert [r.value for r in results[:3]] == pytest.approx([3.0, 1.0, 2.0])
    assert all(r.status in ("ok",) + FAILURE_REASONS for r in results)


def _check_hostile(sb: Sandbox, name: str, code: str, expected: set[str], tmp_path: Path) -> None:
    marker_dir = tmp_path / name
    marker_dir.mkdir()
    os.chmod(marker_dir, 0o777)
    marker = marker_dir / "pwned"
    t0 = time.monotonic()
    res = sb.run(code.replace("{marker}", str(marker)))
    assert res.status in expected, (name, res)
    assert time.monotonic() - t0 < sb.timeout + 15, name
    time.sleep(0.5 if "thread" in name else 0.0)
    assert not marker.exists(), f"{name} left a file behind"
    assert list(marker_dir.iterdir()) == []
    assert _leftover_private_processes(sb) == [], f"{name} left a process behind"
    after = sb.run(BENIGN, task=shape_volume)
    assert after.ok and after.value == pytest.approx(BENIGN_VOLUME), (name, after)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_with_policy(sandbox, name, tmp_path):
    code, expected, _ = HOSTILE[name]
    _check_hostile(sandbox, name, code, expected, tmp_path)


def test_touched_memory_growth_ends_at_the_memory_limit(tmp_path):
    """A program that writes every page it grows is stopped by the memory limit, not left to the wall clock.

    Writing ~1 GB of fresh pages took 2-3 s on a warm worker of a 2-core VM and over 10 s on a cold one, so the
    timeout here is generous: the test is about which limit ends the program, not how fast pages fault in.
    """
    with Sandbox(num_workers=1, timeout=60.0, memory_limit_mb=2048) as sb:
        _check_hostile(sb, "touched_memory_growth", TOUCHED_MEMORY_GROWTH, {"memory_limit"}, tmp_path)


@pytest.mark.parametrize("name", sorted(n for n, v in HOSTILE.items() if v[2] is not None))
def test_hostile_os_layer_only(open_sandbox, name, tmp_path):
    code, _, expected = HOSTILE[name]
    _check_hostile(open_sandbox, name, code, expected, tmp_path)


def test_network_isolated_when_possible(open_sandbox):
    res = open_sandbox.run(HOSTILE["network_connect"][0])
    assert res.status == "runtime_error"
    assert "OSError" in res.error or "unreachable" in res.error.lower() or "timed out" in res.error.lower()
    if open_sandbox.network_isolated:
        assert "unreachable" in res.error.lower()


def test_segfault_and_parent_kill_do_not_hurt_caller(open_sandbox):
    pids = set(open_sandbox.worker_pids())
    assert open_sandbox.run(HOSTILE["segfault"][0]).status == "crashed"
    assert open_sandbox.run(HOSTILE["kill_parent"][0]).status in {"runtime_error", "crashed"}
    assert open_sandbox.run(BENIGN).ok
    assert pids <= set(open_sandbox.worker_pids()) or open_sandbox.worker_pids()


def test_dead_worker_is_respawned():
    with Sandbox(num_workers=1, timeout=TIMEOUT) as sb:
        assert sb.run(BENIGN).ok
        (pid,) = sb.worker_pids()
        os.kill(pid, 9)
        res = sb.run(BENIGN)
        assert res.ok, res
        assert sb.worker_pids() and sb.worker_pids()[0] != pid


def test_close_leaves_no_process():
    sb = Sandbox(num_workers=2, timeout=TIMEOUT)
    sb.map([BENIGN, BENIGN])
    pids = sb.worker_pids()
    assert len(pids) == 2
    sb.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(RuntimeError, match="closed"):
        sb.run(BENIGN)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_workers"):
        Sandbox(num_workers=0)
    with Sandbox(num_workers=1) as sb:
        with pytest.raises(ValueError, match="module-level"):
            sb.run(BENIGN, task=lambda s: 1)


def test_every_named_task_resolves_to_a_function():
    """Each task constant in cadcoder.tasks names an importable module-level function."""
    import importlib

    from cadcoder import tasks

    for ref in tasks.ALL_TASKS:
        module, _, name = ref.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), ref


def test_map_mixes_jobs_and_reports_each_result_once(sandbox):
    """map accepts plain sources and SandboxJob items, keeps input order and calls on_result per job."""
    from cadcoder.sandbox import SandboxJob
    from cadcoder.tasks import DESCRIBE_SHAPE

    seen = []
    codes = ["import cadquery as cq\nsolid = cq.Workplane().box(1, 2, 3)", SandboxJob("solid = 1/0", DESCRIBE_SHAPE)]
    results = sandbox.map(codes, on_result=lambda i, r: seen.append((i, r.status)))
    assert [r.status for r in results] == ["ok", "runtime_error"]
    assert sorted(seen) == [(0, "ok"), (1, "runtime_error")]


def test_borrow_or_open_leaves_a_borrowed_sandbox_open(sandbox):
    """A borrowed sandbox stays usable after the block; an opened one is closed."""
    from cadcoder.sandbox import borrow_or_open

    with borrow_or_open(sandbox) as sb:
        assert sb is sandbox
    assert sandbox.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)").ok
    with borrow_or_open(None, num_workers=1, timeout=5) as opened:
        assert opened is not sandbox
    assert opened._closed


def test_map_raises_when_a_worker_cannot_start():
    """A worker that fails to start is an error of map, as it is of run, not a missing result."""
    with Sandbox(num_workers=1, timeout=TIMEOUT, start_timeout=0.001) as sb:
        with pytest.raises(RuntimeError, match="did not start"):
            sb.run(BENIGN)
        with pytest.raises(RuntimeError, match="did not start"):
            sb.map([BENIGN, BENIGN])


def test_worker_entry_point_and_public_names():
    """The zygote's entry point imports in a fresh interpreter; the public names stay in cadcoder.sandbox."""
    import subprocess

    import cadcoder.sandbox as sandbox_module
    from cadcoder.sandbox import _ZYGOTE_COMMAND

    probe = _ZYGOTE_COMMAND.split(";")[0] + "; import sys; assert 'cadquery' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
    for name in ("ALLOWED_IMPORTS", "FORBIDDEN_CALLS", "FORBIDDEN_NAMES", "RESULT_NAMES", "describe_shape"):
        assert name in sandbox_module.__all__ and getattr(sandbox_module, name) is not None
