"""Child process for the concurrent-writer tests: one writer of a store, the way ``compress-cache
build`` opens it (resume with the same fingerprint; replace a store with no completed shard
that was started with other settings).

Usage: python -m tests.storage.lock_child PATH FINGERPRINT RANK WORLD READY GO
Writes READY once the store is open, waits for the file GO, then writes its shards (rows are a
function of FINGERPRINT) and, as rank 0 of a 1-process world, finalizes. Exits 3 with the
message on stderr when the store is locked by another writer.
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

from storage import StoreLockedError, StoreMismatchError, create_store, open_store

N, D, SHARD_SIZE = 60, 8, 10


def rows(fingerprint: str) -> np.ndarray:
    x = np.random.default_rng(zlib.crc32(fingerprint.encode())).standard_normal((N, D)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def open_like_build(path: str, fingerprint: str):  # type: ignore[no-untyped-def]
    kwargs = dict(backend="zarr", shard_size=SHARD_SIZE, fingerprint=fingerprint)
    try:
        return create_store(path, N, D, "float16", exist_ok=True, **kwargs)  # type: ignore[arg-type]
    except StoreMismatchError:
        if open_store(path).manifest.done_shards:
            raise
        return create_store(path, N, D, "float16", overwrite=True, **kwargs)  # type: ignore[arg-type]


def main(path: str, fingerprint: str, rank: int, world: int, ready: str, go: str) -> None:
    try:
        writer = open_like_build(path, fingerprint)
    except StoreLockedError as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    open(ready, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    x = rows(fingerprint)
    for s in writer.pending_shards(rank, world):
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], labels=np.arange(a, b) % 3)
        time.sleep(0.01)
    if world == 1:
        writer.finalize()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
