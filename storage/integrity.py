"""Cheap integrity checks of a store's shards: files present with their recorded size (at open),
CRC32C of each array as it is read (at load). ``verify`` adds the full SHA-256 re-read.

Every message names the shard file, the shard and its rows, and says how to repair it: a
damaged shard is rewritten by rerunning the command that built the store (the writer finds
shards whose files are missing or of the wrong size and writes them again).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from storage.errors import StoreCorruptError
from storage.layout import marker_name, shard_data_name
from storage.location import Location
from storage.manifest import Manifest, ShardRecord
from storage.shard_block import crc_of

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


def crc_mismatch(location: Location, rec: ShardRecord, suffix: str, array: str, actual: int) -> StoreCorruptError | None:
    """The error for a CRC32C of ``array`` that differs from the recorded one (``None`` if it matches
    or nothing was recorded)."""
    recorded = (rec.crc32c or {}).get(array)
    if recorded is None or recorded == actual:
        return None
    data, marker = shard_data_name(rec.shard_id, suffix), marker_name(rec.shard_id)
    return StoreCorruptError(
        f"{location.describe(data)}: {where(rec)}: the {array!r} array does not match its recorded CRC32C "
        f"({recorded:08x} recorded, {actual:08x} read): the shard changed after it was written; delete "
        f"{location.describe(data)} and {marker}, then {REBUILD_HINT}"
    )


class CrcChecker:
    """Checks CRC32Cs in a background thread, so that checking shard k overlaps reading shard k+1.

    ``submit(rec, array, data)`` queues a check; ``finish()`` waits and raises the first mismatch.
    """

    def __init__(self, location: Location, suffix: str) -> None:
        self.location = location
        self.suffix = suffix
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crc32c")
        self.pending: list[tuple[ShardRecord, str, Future[int]]] = []

    def submit(self, rec: ShardRecord, array: str, data: np.ndarray) -> None:
        if rec.crc32c is not None and array in rec.crc32c:
            self.pending.append((rec, array, self.pool.submit(crc_of, data)))

    def finish(self) -> None:
        try:
            for rec, array, fut in self.pending:
                err = crc_mismatch(self.location, rec, self.suffix, array, fut.result())
                if err is not None:
                    raise err
        finally:
            self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending = []
