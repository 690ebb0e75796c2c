"""Where a measurement was taken: machine, library versions and commit, printed by every benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, usable cores, memory, load, library versions and accelerator, as a JSON-ready dict."""
    import torch
    import transformers

    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory_gb,
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def machine_summary() -> str:
    """One line describing the machine for a benchmark's printed header."""
    m = machine_info()
    return (f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, load avg {m['load_average']} at start; "
            f"python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
            f"transformers {m['transformers']}, accelerator {m['cuda'] or 'none'}")


def git_commit(repo: str | Path | None = None) -> dict[str, Any]:
    """The checked-out commit and whether the working tree differs from it (read-only git calls)."""
    cwd = str(repo or Path(__file__).resolve().parents[1])

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def short_commit(repo: str | Path | None = None) -> str:
    """The checkout's short commit (``+dirty`` when tracked files differ), or ``unknown`` outside git."""
    info = git_commit(repo)
    if not info["commit"]:
        return "unknown"
    return info["commit"][:7] + ("+dirty" if info["dirty"] else "")
