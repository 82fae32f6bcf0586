"""Pure index arithmetic: global rows <-> shards, and shards <-> ranks.

A store of ``n`` rows is cut into ``ceil(n / shard_size)`` shards; shard ``s`` holds
rows ``[s * shard_size, min((s + 1) * shard_size, n))``. Nothing here touches disk.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ShardRange(NamedTuple):
    """Half-open global row range ``[start, stop)`` of shard ``shard_id``."""

    shard_id: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _check_sizes(n: int, shard_size: int) -> None:
    if n < 0:
        raise ValueError(f"number of rows must be >= 0, got n={n}")
    if shard_size <= 0:
        raise ValueError(f"shard_size must be a positive number of rows, got {shard_size}")


def num_shards(n: int, shard_size: int) -> int:
    """Number of shards needed for ``n`` rows (0 for an empty store)."""
    _check_sizes(n, shard_size)
    return -(-n // shard_size)


def shard_ranges(n: int, shard_size: int) -> list[ShardRange]:
    """All shards of an ``n``-row store, in order; the last one may be short."""
    return [
        ShardRange(s, s * shard_size, min((s + 1) * shard_size, n))
        for s in range(num_shards(n, shard_size))
    ]


def shard_range(n: int, shard_size: int, shard_id: int) -> ShardRange:
    """The row range of one shard; ``IndexError`` naming the shard when it does not exist."""
    count = num_shards(n, shard_size)
    if not 0 <= shard_id < count:
        raise IndexError(f"shard {shard_id} does not exist: the store has {count} shards (0..{count - 1})")
    return ShardRange(shard_id, shard_id * shard_size, min((shard_id + 1) * shard_size, n))


def locate(rows: np.ndarray | int, n: int, shard_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Map global row numbers to ``(shard_id, offset_in_shard)`` arrays.

    Args:
        rows: int or int array of shape ``(R,)``, each in ``[0, n)``.
    Returns:
        Two int64 arrays of shape ``(R,)``.
    """
    _check_sizes(n, shard_size)
    rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        bad = rows[(rows < 0) | (rows >= n)][0]
        raise IndexError(f"row {bad} is out of range for a store of {n} rows")
    return rows // shard_size, rows % shard_size


def shards_for_rank(total_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards written by ``rank`` of ``world_size`` writers: round-robin, so that ranks
    finish at about the same time and every shard has exactly one writer."""
    if world_size <= 0:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(range(rank, total_shards, world_size))


def format_ranges(shard_ids: list[int]) -> str:
    """Compact human form of a set of shard ids: ``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    ids = sorted(set(shard_ids))
    if not ids:
        return "none"
    parts: list[str] = []
    start = prev = ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)
