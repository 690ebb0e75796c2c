"""Hostile CadQuery programs for the sandbox tests.

Each entry: name -> (source, expected statuses with the policy on, expected statuses with the policy off).
``{marker}`` in a source is replaced by a path the test watches: nothing may appear there.
``None`` for the policy-off statuses means the program only makes sense against the policy.
"""

TOUCHED_MEMORY_GROWTH = "x = []\nwhile True:\n    x.append(' ' * 10**7)"

BENIGN = "solid = cq.Workplane('XY').box(2, 3, 4)"
BENIGN_VOLUME = 24.0

HOSTILE: dict[str, tuple[str, set[str], set[str] | None]] = {
    "open_write": (
        "f = open('{marker}', 'w')\nf.write('x' * 100)\nf.close()\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"runtime_error"},
    ),
    "exporter_write": (
        "solid = cq.Workplane().box(1, 1, 1)\ncq.exporters.export(solid, '{marker}')",
        {"forbidden"},
        {"runtime_error"},
    ),
    "shape_export_stl": (
        "solid = cq.Workplane().box(1, 1, 1)\nok = solid.val().exportStl('{marker}')\nassert ok, 'export refused'",
        {"forbidden"},
        {"runtime_error"},
    ),
    "os_via_exporters": (
        "cq.exporters.os.system('touch {marker}')\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"ok"},
    ),
    "os_via_exporters_write": (
        "o = cq.exporters.os\nfd = o.open('{marker}', o.O_CREAT | o.O_WRONLY)\no.write(fd, b'x')\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"runtime_error"},
    ),
    "network_connect": (
        "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"runtime_error"},
    ),
    "infinite_loop": ("while True:\n    pass", {"timeout"}, {"timeout"}),
    # bytes(n) is calloc'd and left untouched, so this reaches the address-space limit in well under a second on
    # any machine; growth that writes every page is tested on its own, with a longer timeout
    # (test_sandbox.test_touched_memory_growth_ends_at_the_memory_limit).
    "memory_growth": ("x = []\nwhile True:\n    x.append(bytes(10**8))", {"memory_limit"}, {"memory_limit"}),
    "deep_recursion": ("def f(n):\n    return f(n + 1)\nsolid = f(0)", {"runtime_error"}, {"runtime_error"}),
    "sys_exit": ("import sys\nsys.exit(3)", {"forbidden"}, {"runtime_error"}),
    "raise_system_exit": ("raise SystemExit(0)", {"runtime_error"}, {"runtime_error"}),
    "segfault": ("import ctypes\nctypes.string_at(0)", {"forbidden"}, {"crashed"}),
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)\nsolid = cq.Workplane().box(1, 1, 1)", {"forbidden"}, {"runtime_error", "crashed"}),
    "kill_self": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", {"forbidden"}, {"crashed"}),
    "fork": (
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"ok"},
    ),
    "late_thread": (
        "import threading, time\n"
        "def later():\n    time.sleep(0.3)\n    open('{marker}', 'w').write('late')\n"
        "threading.Thread(target=later).start()\nsolid = cq.Workplane().box(1, 1, 1)",
        {"forbidden"},
        {"ok"},
    ),
    "monkeypatch_cadquery": (
        "cq.Workplane.box = lambda self, *a, **k: self.sphere(0.01)\nsolid = cq.Workplane().box(1, 1, 1)",
        {"ok"},
        {"ok"},
    ),
    "huge_output": ("for i in range(10**6):\n    print('x' * 1000)\nsolid = cq.Workplane().box(1, 1, 1)", {"ok", "timeout"}, {"ok", "timeout"}),
    "dunder_escape": ("solid = ().__class__.__bases__[0].__subclasses__()", {"forbidden"}, None),
    "eval_call": ("solid = eval('cq.Workplane().box(1,1,1)')", {"forbidden"}, None),
    "no_result": ("x = 1", {"no_result"}, {"no_result"}),
    "syntax": ("solid = cq.Workplane(.box(", {"syntax_error"}, {"syntax_error"}),
    "not_a_solid": ("solid = cq.Workplane().rect(1, 1)", {"invalid_shape"}, {"invalid_shape"}),
}
