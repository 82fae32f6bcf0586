"""An exclusive ``flock`` held for the duration of a ``with`` block, across processes of one host.

Used where several processes (DataLoader workers, DDP ranks on a node) may create the same
file at once and exactly one must do it: the node-shared copy of a store
(``storage.shared_array``), the local copies of remote shards
(``cache_builder.image_source``). The lock file is created if missing and left in place
(removing it would let a waiting process lock a file nobody else sees). The kernel drops the
lock when its holder dies, so a killed process never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; its directory must exist)."""
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
