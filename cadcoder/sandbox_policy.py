"""The sandbox's first layer: a static policy on untrusted CadQuery source, and the builtins it runs with.

:func:`check_policy` walks the AST of a program before it runs. Imports are limited to
:data:`ALLOWED_IMPORTS` (``cadquery``, ``math``, ``numpy``); dunder attributes, names and strings,
``exec``/``eval``/``compile``/``open``/``getattr``/``globals`` and friends (:data:`FORBIDDEN_CALLS`), frame
objects and names that lead to the OS (``os``, ``sys``, ``subprocess``, ``exporters``...:
:data:`FORBIDDEN_NAMES`) are refused; the sandbox reports such a program as ``forbidden``.
:func:`restricted_builtins` is the ``__builtins__`` a policed program sees: the forbidden calls removed and
``__import__`` limited to the allowed modules.

The policy is one layer of two; the OS layer (:mod:`cadcoder.sandbox_worker`) holds even when a program
gets past it.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from typing import Any

__all__ = [
    "ALLOWED_IMPORTS",
    "FORBIDDEN_CALLS",
    "FORBIDDEN_NAMES",
    "MAX_SOURCE_CHARS",
    "PolicyViolation",
    "check_policy",
    "restricted_builtins",
]

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
MAX_SOURCE_CHARS = 200_000
"""Longest source the policy accepts, in characters."""


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
    if len(code) > MAX_SOURCE_CHARS:
        raise PolicyViolation(f"source has {len(code)} characters; the limit is {MAX_SOURCE_CHARS}")
    tree = ast.parse(code, mode="exec")
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            _check_import(node, line)
        else:
            _check_node(node, line)


def _check_import(node: ast.Import | ast.ImportFrom, line: int | str) -> None:
    """Refuse relative imports, private or forbidden imported names and modules outside the allowed set."""
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
        parts = mod.split(".")
        if parts[0] not in ALLOWED_IMPORTS or any(p in FORBIDDEN_NAMES or p.startswith("_") for p in parts[1:]):
            raise PolicyViolation(
                f"line {line}: import of '{mod}' is not allowed; only {sorted(ALLOWED_IMPORTS)} may be imported"
            )


def _check_node(node: ast.AST, line: int | str) -> None:
    """Refuse one non-import node: dunders, forbidden names, global/nonlocal, generators and coroutines."""
    if isinstance(node, ast.Attribute):
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


def _safe_import_factory(real_import: Callable[..., Any]) -> Callable[..., Any]:
    """An ``__import__`` that lets through only absolute imports of the allowed modules."""

    def safe_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        if level or name.split(".")[0] not in ALLOWED_IMPORTS:
            raise ImportError(f"import of '{name}' is not allowed in the sandbox")
        return real_import(name, globals, locals, fromlist, level)

    return safe_import


def restricted_builtins() -> dict[str, Any]:
    """The ``__builtins__`` of a policed program: no forbidden calls, no private names, a limited ``__import__``."""
    allowed = {k: v for k, v in vars(builtins).items() if k not in FORBIDDEN_CALLS and not k.startswith("_")}
    allowed["__import__"] = _safe_import_factory(builtins.__import__)
    allowed["__build_class__"] = builtins.__build_class__
    allowed["__name__"] = "builtins"
    return allowed
