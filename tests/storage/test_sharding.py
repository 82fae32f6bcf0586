"""Index arithmetic, checked against the obvious implementation."""

from __future__ import annotations

import numpy as np
import pytest

from storage.sharding import format_ranges, locate, num_shards, shard_range, shard_ranges, shards_for_rank


@pytest.mark.parametrize("n,size", [(0, 5), (1, 5), (10, 5), (11, 5), (7, 100), (1000, 1)])
def test_shard_ranges_partition_the_rows(n, size) -> None:
    ranges = shard_ranges(n, size)
    assert len(ranges) == num_shards(n, size)
    covered = [r for s in ranges for r in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert all(0 < s.rows <= size for s in ranges)


def test_locate_matches_a_linear_scan() -> None:
    n, size = 53, 8
    rows = np.random.default_rng(0).integers(0, n, 200)
    shard, offset = locate(rows, n, size)
    for r, s, o in zip(rows, shard, offset):
        rng = shard_range(n, size, int(s))
        assert rng.start + o == r and rng.start <= r < rng.stop
    with pytest.raises(IndexError, match="row 53 is out of range for a store of 53 rows"):
        locate([1, 53], n, size)


def test_ranks_get_disjoint_covering_round_robin_shards() -> None:
    parts = [shards_for_rank(10, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        shards_for_rank(10, 3, 3)


def test_errors_and_formatting() -> None:
    with pytest.raises(ValueError, match="shard_size must be a positive"):
        num_shards(10, 0)
    with pytest.raises(IndexError, match="shard 4 does not exist: the store has 2 shards"):
        shard_range(10, 5, 4)
    assert format_ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"
    assert format_ranges([]) == "none"
