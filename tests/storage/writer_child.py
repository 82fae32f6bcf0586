"""Child process for the SIGKILL tests: writes (or resumes) a store, optionally killing itself
with SIGKILL at a chosen point while writing shard ``KILL_SHARD``.

Usage: python -m tests.storage.writer_child PATH BACKEND KILL_POINT
KILL_POINT: none | mid_data | before_rename | before_marker | before_manifest
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from storage import create_store
from storage.backends import get_backend
from storage.location import LocalLocation

N, D, SHARD_SIZE, KILL_SHARD = 5000, 64, 1000, 2


def rows() -> np.ndarray:
    x = np.random.default_rng(42).standard_normal((N, D)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(path: str, backend_name: str, kill_point: str) -> None:
    backend = get_backend(backend_name)
    target = f"shard-{KILL_SHARD:05d}"
    if kill_point == "mid_data":
        original = type(backend).write

        def write_then_truncate(self, location, name, block, manifest):  # type: ignore[no-untyped-def]
            original(self, location, name, block, manifest)
            if name.startswith(target):
                shard_path = location.local_path(name)
                walk = os.walk(shard_path) if os.path.isdir(shard_path) else [("", [], [shard_path])]
                for dirpath, _, files in walk:
                    for f in files:
                        p = os.path.join(dirpath, f)
                        os.truncate(p, os.path.getsize(p) // 2)
                die()

        type(backend).write = write_then_truncate  # type: ignore[method-assign]
    elif kill_point == "before_rename":
        original_rename = LocalLocation.rename

        def rename(self, src, dst):  # type: ignore[no-untyped-def]
            if src.startswith(target):
                die()
            original_rename(self, src, dst)

        LocalLocation.rename = rename  # type: ignore[method-assign]
    elif kill_point in ("before_marker", "before_manifest"):
        original_write = LocalLocation.write_bytes_atomic

        def write_bytes_atomic(self, name, data):  # type: ignore[no-untyped-def]
            if kill_point == "before_marker" and name == f"{target}.done":
                die()
            if kill_point == "before_manifest" and name == "manifest.json" and b'"complete": true' in data:
                die()
            original_write(self, name, data)

        LocalLocation.write_bytes_atomic = write_bytes_atomic  # type: ignore[method-assign]

    x = rows()
    writer = create_store(path, N, D, "float16", backend=backend_name, shard_size=SHARD_SIZE, exist_ok=True, fingerprint="child")
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], labels=np.arange(a, b) % 10, paths=[f"img{i}.png" for i in range(a, b)])
    writer.finalize(provenance={"writer": "child"})


if __name__ == "__main__":
    main(*sys.argv[1:4])
