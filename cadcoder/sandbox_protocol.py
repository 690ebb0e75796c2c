"""The sandbox's pipe protocol: pickled messages framed by an 8-byte big-endian length.

The caller and its zygote exchange ``("ready", info)``, jobs, ``("started", pid)`` and
``("done", (status, value, error, output))`` this way; a forked child writes its one result frame to its
own pipe. Both ends are processes of our own code, so unpickling is trusted; what the untrusted program
returns is capped in size before it is framed.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
from typing import Any

__all__ = ["HEADER", "frame_length", "recv", "send", "write_frame"]

HEADER = struct.Struct("!Q")
"""The frame header: the body's length in bytes."""


def write_frame(fd: int, body: bytes) -> None:
    """Write ``body`` to ``fd`` behind its length header, all of it."""
    view = memoryview(HEADER.pack(len(body)) + body)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd: int, obj: Any) -> None:
    """Pickle ``obj`` and write it to ``fd`` as one frame."""
    write_frame(fd, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def frame_length(data: bytes) -> int | None:
    """Total length (header included) of the frame that ``data`` starts with; None while the header is incomplete."""
    if len(data) < HEADER.size:
        return None
    return HEADER.size + HEADER.unpack(data[: HEADER.size])[0]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Read exactly ``n`` bytes (None at end of file), raising TimeoutError past the monotonic ``deadline``."""
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


def recv(fd: int, deadline: float | None = None) -> Any:
    """Read one frame from ``fd`` and unpickle it.

    Raises:
        EOFError: the other end closed the pipe.
        TimeoutError: no complete frame before the monotonic ``deadline``.
    """
    header = _recv_exact(fd, HEADER.size, deadline)
    if header is None:
        raise EOFError
    body = _recv_exact(fd, HEADER.unpack(header)[0], deadline)
    if body is None:
        raise EOFError
    return pickle.loads(body)  # noqa: S301 - trusted channel between our own processes
