"""The synthetic builder's work folder: a manifest and one parquet shard per chunk of sample indices.

Each chunk's shard is written atomically before the manifest that names it, so an interrupted run loses
no finished chunk and never counts a half-written one; the manifest also records the run's settings, so
a resumed run with other settings is refused.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

WORK_DIR = "_synth_work"
"""The work folder's name inside the output folder."""
MANIFEST = "manifest.json"
"""The manifest's name inside the work folder."""


def open_manifest(work: Path, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """The manifest of the run in ``work``: the saved one when its settings match, else a new one.

    Raises:
        ValueError: ``work`` holds a run made with other settings.
    """
    path = work / MANIFEST
    if not path.exists():
        return {"settings": settings, "next_index": 0, "shards": [], "rejected": {}}
    manifest = json.loads(path.read_text())
    saved = manifest["settings"]
    if saved != settings:
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise ValueError(
            f"{out} holds a synthetic run made with other settings {diff} (saved, requested); "
            "resume with the same settings or choose another --out folder"
        )
    return manifest


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Shards: one parquet file per chunk of indices
# ---------------------------------------------------------------------------------------------
def _shard_schema() -> Any:
    """The columns of a shard: the kept rows with their PNG and dedup keys."""
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("deepcad_id", pa.string()), ("cadquery", pa.string()),
        ("token_count", pa.int64()), ("png", pa.binary()), ("code_key", pa.string()),
        ("geom_key", pa.string()), ("skeleton", pa.string()),
    ])


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write a chunk's kept rows as one parquet shard, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_shard_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_shards(work: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the shards the manifest names, in index order."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for sh in shards:
        rows.extend(pq.read_table(work / sh["file"]).to_pylist())
    return rows


def store_chunk(work: Path, manifest: dict[str, Any], start: int, stop: int, rows: list[dict[str, Any]]) -> None:
    """Write the shard of indices ``start:stop``, then the manifest that names it (so a crash loses no shard)."""
    name = f"shard-{start:09d}-{stop:09d}.parquet"
    write_shard(work / name, rows)
    manifest["shards"].append({"file": name, "start": start, "stop": stop, "kept": len(rows)})
    manifest["next_index"] = stop
    atomic_write_bytes(work / MANIFEST, json.dumps(manifest, indent=1).encode())
