"""Cheap integrity checks of a store's shards: files present with their recorded size (at open),
CRC32C of each array as it is read (at load). ``verify`` adds the full SHA-256 re-read.

Every message names the shard file, the shard and its rows, and says how to repair it: a
damaged shard is rewritten by rerunning the command that built the store (the writer finds
shards whose files are missing or of the wrong size and writes them again).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from storage.errors import StoreCorruptError
from storage.layout import marker_name, shard_data_name
from storage.location import Location
from storage.manifest import Manifest, ShardRecord
from storage.shard_block import crc_block_rows, crc_blocks, crc_of

REBUILD_HINT = (
    "rerun the `compress-cache build` command that built it (or `compress-eval features` for a "
    "feature store) to rewrite the damaged shard"
)


def where(rec: ShardRecord) -> str:
    """``shard 2 (rows 20-29)``."""
    return f"shard {rec.shard_id} (rows {rec.start}-{rec.stop - 1})"


def file_problem(location: Location, manifest: Manifest, rec: ShardRecord, suffix: str) -> str | None:
    """Why the data of the complete shard ``rec`` cannot be right (missing, or not the recorded
    byte size), or ``None`` when it looks fine (or the location cannot tell sizes)."""
    name = shard_data_name(rec.shard_id, suffix)
    try:
        size = location.size(name)
    except FileNotFoundError:
        return f"{location.describe(name)}: {where(rec)} is missing"
    except OSError as e:
        return f"{location.describe(name)}: {where(rec)} cannot be read ({e})"
    if size is not None and rec.bytes is not None and size != rec.bytes:
        return (f"{location.describe(name)}: {where(rec)} holds {size} bytes, {rec.bytes} were written "
                "(truncated or modified after it was written)")
    return None


def damaged_shards(location: Location, manifest: Manifest, suffix: str) -> dict[int, str]:
    """``{shard_id: problem}`` for every complete shard whose data is missing or of the wrong size."""
    problems = {}
    for rec in manifest.shards:
        if rec.complete:
            problem = file_problem(location, manifest, rec, suffix)
            if problem is not None:
                problems[rec.shard_id] = problem
    return problems


def check_files(location: Location, manifest: Manifest, suffix: str) -> None:
    """Raise ``StoreCorruptError`` for the first complete shard whose data is missing or of the wrong size."""
    for problem in damaged_shards(location, manifest, suffix).values():
        raise StoreCorruptError(f"{problem}; {REBUILD_HINT}")


def crc_mismatch(location: Location, rec: ShardRecord, suffix: str, array: str, block: int, rows: int,
                 actual: int) -> StoreCorruptError | None:
    """The error for CRC block ``block`` (``rows`` rows per block) of ``array`` when it differs from the
    recorded one (``None`` if it matches or nothing was recorded)."""
    recorded = (rec.crc32c or {}).get(array)
    if recorded is None or (block < len(recorded) and recorded[block] == actual):
        return None
    data, marker = shard_data_name(rec.shard_id, suffix), marker_name(rec.shard_id)
    first = block * rows
    span = f"its rows {first}-{first + rows - 1} of the shard" if array not in ("path_bytes",) else f"bytes from {first}"
    want = f"{recorded[block]:08x}" if block < len(recorded) else "none"
    return StoreCorruptError(
        f"{location.describe(data)}: {where(rec)}: the {array!r} array does not match its recorded CRC32C "
        f"({span}: {want} recorded, {actual:08x} read): the shard changed after it was written; delete "
        f"{location.describe(data)} and {marker}, then {REBUILD_HINT}"
    )


def check_array(location: Location, rec: ShardRecord, suffix: str, array: str, data: np.ndarray) -> None:
    """Raise ``StoreCorruptError`` unless ``data`` (one array of the shard, canonical order) has the
    recorded CRC32C blocks."""
    recorded = (rec.crc32c or {}).get(array)
    if recorded is None:
        return
    rows = crc_block_rows(data)
    actual = crc_blocks(data)
    for i, value in enumerate(actual):
        err = crc_mismatch(location, rec, suffix, array, i, rows, value)
        if err is not None:
            raise err
    if len(actual) != len(recorded):
        raise StoreCorruptError(f"{location.describe(shard_data_name(rec.shard_id, suffix))}: {where(rec)}: the {array!r} array "
                                f"has {len(actual)} CRC blocks, {len(recorded)} were recorded; {REBUILD_HINT}")


def crc_workers() -> int:
    """Threads that check CRC32Cs while ``load_all`` reads: up to 4, at most the CPUs there are."""
    return max(1, min(4, os.cpu_count() or 1))


class CrcChecker:
    """Checks CRC32C blocks in worker threads while the caller goes on reading (``crc32c`` releases
    the GIL, and reading from disk does too), so verification overlaps the read.

    ``watch(rec, array, data)`` returns ``on_rows(stop)``, to be called as rows ``[0, stop)`` of
    ``data`` become final (at the latest with ``len(data)``); ``finish()`` waits and raises the
    first mismatch.
    """

    def __init__(self, location: Location, suffix: str, workers: int | None = None) -> None:
        self.location = location
        self.suffix = suffix
        self.pool = ThreadPoolExecutor(max_workers=workers or crc_workers(), thread_name_prefix="crc32c")
        self.pending: list[tuple[ShardRecord, str, int, int, Future[int]]] = []
        self.counts: list[tuple[ShardRecord, str, int]] = []

    def watch(self, rec: ShardRecord, array: str, data: np.ndarray) -> Callable[[int], None]:
        if rec.crc32c is None or array not in rec.crc32c:
            return lambda stop: None
        rows = crc_block_rows(data)
        total = data.shape[0]
        state = [0]  # next block to submit
        self.counts.append((rec, array, -(-total // rows)))

        def on_rows(stop: int) -> None:
            while state[0] * rows < total and ((state[0] + 1) * rows <= stop or stop >= total):
                i = state[0]
                self.pending.append((rec, array, i, rows, self.pool.submit(crc_of, data[i * rows:(i + 1) * rows])))
                state[0] += 1

        return on_rows

    def finish(self) -> None:
        try:
            for rec, array, block, rows, fut in self.pending:
                err = crc_mismatch(self.location, rec, self.suffix, array, block, rows, fut.result())
                if err is not None:
                    raise err
            for rec, array, blocks in self.counts:
                if len((rec.crc32c or {})[array]) != blocks:
                    raise StoreCorruptError(f"{self.location.describe(shard_data_name(rec.shard_id, self.suffix))}: {where(rec)}: "
                                            f"the {array!r} array does not have its recorded CRC blocks; {REBUILD_HINT}")
        finally:
            self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = []
