"""``verify(path)``: re-read every shard and check it against the manifest.

Checks, each reported with the shard and its row range: the data file exists with its
recorded byte size and reads; rows, shape and dtype match; the recomputed SHA-256 checksum and
CRC32Cs equal the recorded ones; every value is finite; rows have unit L2 norm when the store says they are normalised; dataset indices are
unique across the store; labels are >= -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.errors import StoreCorruptError
from storage.integrity import REBUILD_HINT, file_problem
from storage.layout import shard_data_name
from storage.reader import open_store
from storage.sharding import format_ranges

NORM_TOLERANCE = {"float16": 5e-3, "float32": 1e-4}


@dataclass
class VerifyReport:
    """Outcome of ``verify``: ``ok`` is True only for a complete store without problems."""

    path: str
    complete: bool
    shards_checked: int
    rows_checked: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and not self.problems

    def summary(self) -> str:
        head = f"{self.path}: {'OK' if self.ok else 'FAILED'} ({self.shards_checked} shards, {self.rows_checked} rows checked)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def verify(path: str, *, norm_tolerance: float | None = None, progress: bool = False) -> VerifyReport:
    """Check a store; never raises for bad data, returns every problem found.

    Args:
        norm_tolerance: allowed ``| ||x|| - 1 |`` for normalised stores (default by dtype).
    """
    store = open_store(path, check_files=False)
    man = store.manifest
    tol = NORM_TOLERANCE[man.dtype] if norm_tolerance is None else norm_tolerance
    report = VerifyReport(path=store.path, complete=man.complete, shards_checked=0, rows_checked=0)
    if not man.complete:
        report.problems.append(f"store is incomplete: shards {format_ranges(man.missing_shards)} are not written")
    expected_start = 0
    for rec in man.shards:
        if rec.start != expected_start or rec.stop <= rec.start:
            report.problems.append(
                f"manifest: shard {rec.shard_id} covers rows {rec.start}-{rec.stop - 1}, expected to start at {expected_start}"
            )
        expected_start = rec.stop
    if expected_start != man.n:
        report.problems.append(f"manifest: shards cover {expected_start} rows, the store has n={man.n}")

    iterator: Any = [r for r in man.shards if r.complete]
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"verify {store.path}", unit="shard")
    all_index = []
    for rec in iterator:
        where = f"shard {rec.shard_id} (rows {rec.start}-{rec.stop - 1})"
        problem = file_problem(store.location, man, rec, store.backend.suffix)
        if problem is not None:
            report.problems.append(f"{where}: {problem}; {REBUILD_HINT}")
            if not store.location.exists(shard_data_name(rec.shard_id, store.backend.suffix)):
                continue
        try:
            block = store.read_shard(rec.shard_id)
        except StoreCorruptError as e:
            report.problems.append(f"{where}: {e}")
            continue
        report.shards_checked += 1
        report.rows_checked += block.rows
        if len(block.index) != rec.rows or len(block.labels) != rec.rows or len(block.paths) != rec.rows:
            sizes = f"{len(block.index)}/{len(block.labels)}/{len(block.paths)}"
            report.problems.append(f"{where}: metadata has {sizes} rows (index/labels/paths), expected {rec.rows}")
        checksum = block.checksum()
        if checksum != rec.checksum:
            report.problems.append(f"{where}: checksum mismatch (recorded {rec.checksum}, data {checksum})")
        crc = block.crc32c()
        bad_crc = sorted(k for k, v in (rec.crc32c or {}).items() if crc.get(k) != v)
        if bad_crc:
            report.problems.append(f"{where}: CRC32C mismatch in {', '.join(bad_crc)}")
        emb = block.embeddings.astype(np.float32)
        finite = np.isfinite(emb).reshape(emb.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            report.problems.append(f"{where}: {bad.size} rows hold NaN/inf, first at row {rec.start + int(bad[0])}")
        if man.normalized and emb.size:
            norms = np.linalg.norm(emb, axis=-1).reshape(emb.shape[0], -1)
            off = (np.abs(norms - 1.0) > tol).any(axis=1) & finite
            if off.any():
                bad = np.flatnonzero(off)
                first = int(bad[0])
                report.problems.append(
                    f"{where}: {bad.size} rows are not unit norm (tolerance {tol:g}), first at row "
                    f"{rec.start + first} with norm {float(norms[first].max()):.4f}"
                )
        if (block.labels < -1).any():
            report.problems.append(f"{where}: labels below -1 (unknown must be -1)")
        all_index.append(block.index)
    if all_index and man.complete:
        index = np.concatenate(all_index)
        uniq, counts = np.unique(index, return_counts=True)
        if (counts > 1).any():
            dup = int(uniq[counts > 1][0])
            report.problems.append(f"dataset index {dup} appears {int(counts[counts > 1][0])} times; every row must trace to one image")
    return report
