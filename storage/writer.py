"""Creating and writing a store: ``create_store(...)`` -> ``StoreWriter``.

Write protocol, per shard (one writer per shard; several ranks may write disjoint shards):
  1. validate the rows against the manifest (shape, dtype, row count);
  2. write the data under a temporary name, then rename it into place;
  3. write the completion marker (fingerprint, checksums, byte size) atomically.
A kill at any point leaves either no marker (the shard is rewritten on resume) or a
complete shard. The manifest is written at creation and rewritten last by ``finalize``.
Completed shards are never rewritten, except that resuming rewrites a shard whose data was
since deleted or truncated.

Every writer of a local store holds its writer lock (``writer_lock.py``) from ``create_store``
to ``finalize``/``close``: ranks of one job share it, any other writer is refused, and
``overwrite`` never replaces a store another live process is writing. The first writer of a
run removes the temporary files that dead writers left.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from storage.backends import get_backend
from storage.errors import NotAStoreError, ShardWriteError, StoreError, StoreIncompleteError, StoreMismatchError
from storage.integrity import damaged_shards
from storage.layout import (
    TMP_INFIX,
    make_marker,
    marker_name,
    marker_record,
    read_manifest,
    shard_base,
    shard_data_name,
    tmp_pid,
    write_manifest,
)
from storage.location import Location, MemoryLocation, resolve_location
from storage.manifest import MANIFEST_NAME, ColumnSpec, Manifest, ShardRecord
from storage.reader import Store, open_store
from storage.shard_block import make_block
from storage.sharding import format_ranges, shards_for_rank
from storage.writer_lock import LOCK_FILES, WriterLock, pid_alive

DEFAULT_SHARD_BYTES = 64 << 20
log = logging.getLogger(__name__)


def default_shard_size(row_bytes: int) -> int:
    """Rows per shard so that one shard holds about 64 MiB of embeddings."""
    return max(1, DEFAULT_SHARD_BYTES // max(1, row_bytes))


class StoreWriter:
    """Writes the shards of one store. Get one from ``create_store``."""

    def __init__(self, location: Location, manifest: Manifest, lock: WriterLock | None = None) -> None:
        self.location = location
        self.manifest = manifest
        self.backend = get_backend(manifest.backend)
        self.lock = lock

    def close(self) -> None:
        """Release the writer lock (``finalize`` does it too); the writer must not write afterwards."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        return self.location.url

    def refresh(self) -> Manifest:
        """Re-read which shards are complete (other ranks may have written some)."""
        self.manifest = read_manifest(self.location)
        return self.manifest

    @property
    def done_shards(self) -> list[int]:
        return self.manifest.done_shards

    def pending_shards(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Shards this rank still has to write (round-robin split; see ``sharding``)."""
        mine = shards_for_rank(len(self.manifest.shards), rank, world_size)
        return [s for s in mine if not self.manifest.shards[s].complete]

    def shard_rows(self, shard_id: int) -> tuple[int, int]:
        """Global row range ``[start, stop)`` of ``shard_id``."""
        rec = self.manifest.shards[shard_id]
        return rec.start, rec.stop

    def write_shard(self, shard_id: int, embeddings: np.ndarray, **rows: Any) -> ShardRecord:
        """Write one whole shard atomically and mark it complete.

        Args:
            embeddings: ``(R, D)`` or ``(R, V, D)`` in the store's dtype, R = the shard's rows.
            rows: ``index``, ``labels``, ``paths``, ``columns`` of the shard, as ``shard_block.make_block``
                takes them (defaults: global row numbers, -1, "", none).
        Raises:
            ShardWriteError: wrong shape/dtype/rows, unknown shard, or shard already complete.
        """
        block = make_block(self.manifest, shard_id, embeddings, **rows)
        if self._marker(shard_id) is not None:
            raise ShardWriteError(
                f"{self.path}: shard {shard_id} is already complete; completed shards are never rewritten"
            )
        final = shard_data_name(shard_id, self.backend.suffix)
        self._remove_leftovers(shard_id, final)
        tmp = f"{final}{TMP_INFIX}{os.getpid()}"
        self.backend.write(self.location, tmp, block, self.manifest)
        self.location.rename(tmp, final)
        rec = self.manifest.shards[shard_id]
        done = ShardRecord(shard_id, rec.start, rec.stop, True, block.checksum(), self.location.size(final), block.crc32c())
        self.location.write_bytes_atomic(marker_name(shard_id), json.dumps(make_marker(self.manifest, done)).encode())
        self.manifest = self.manifest.with_shard(done)
        return done

    def _marker(self, shard_id: int) -> ShardRecord | None:
        """The shard's completion marker if it is one of this store (same rows and fingerprint)."""
        try:
            return marker_record(self.manifest, json.loads(self.location.read_bytes(marker_name(shard_id))))
        except (FileNotFoundError, IsADirectoryError, ValueError):
            return None

    def _remove_leftovers(self, shard_id: int, final: str) -> None:
        """Remove what an earlier attempt at this shard left: temp data, data renamed into place
        whose marker was never written, or a marker that is not this store's."""
        base = shard_base(shard_id)
        for entry in self.location.listdir():
            if entry.startswith(base) and (TMP_INFIX in entry or entry in (final, marker_name(shard_id))):
                self.location.remove(entry)

    def finalize(self, provenance: dict[str, Any] | None = None) -> Store:
        """Write the final manifest (all shards complete) and return the opened store.

        Args:
            provenance: entries merged into the manifest's provenance.
        Raises:
            StoreIncompleteError: some shards are still missing.
        """
        manifest = self.refresh()
        if not manifest.complete:
            raise StoreIncompleteError(
                f"{self.path}: cannot finalize, shards {format_ranges(manifest.missing_shards)} are not written"
            )
        if provenance:
            manifest = dataclasses.replace(manifest, provenance={**manifest.provenance, **provenance})
        write_manifest(self.location, manifest)
        self.manifest = manifest
        self.close()
        return open_store(self.path)


def create_store(
    path: str | os.PathLike[str],
    n: int,
    d: int,
    dtype: str = "float16",
    *,
    backend: str | None = None,
    shard_size: int | None = None,
    views: int | None = None,
    normalized: bool = True,
    columns: dict[str, tuple[tuple[int, ...], str]] | None = None,
    fingerprint: str | None = None,
    provenance: dict[str, Any] | None = None,
    exist_ok: bool = False,
    overwrite: bool = False,
) -> StoreWriter:
    """Create a store of ``n`` rows of dimension ``d`` (or resume one) and return its writer.

    Args:
        path: local directory, fsspec URL (zarr only) or ``memory://name``.
        backend: ``"zarr"`` (default), ``"hdf5"`` or ``"memory"`` (default for memory:// paths).
        shard_size: rows per shard (default: about 64 MiB of embeddings per shard).
        views: ``None`` for ``(N, D)`` rows, ``V`` for ``(N, V, D)``.
        columns: extra per-row columns, ``{name: (shape, dtype)}``.
        fingerprint: identity of what is being written; resuming requires the same.
        exist_ok: resume an existing store with the same layout and fingerprint
            (a different one raises ``StoreMismatchError`` listing the differences); complete
            shards whose data is missing or truncated are rewritten.
        overwrite: delete an existing store at ``path`` first (never one another process is writing).
    Raises:
        StoreLockedError: another live process (not a rank of this job with this fingerprint)
            is writing the store.
    """
    location = resolve_location(path)
    if backend is None:
        backend = "memory" if isinstance(location, MemoryLocation) else "zarr"
    get_backend(backend).check_location(location)
    if views is not None:
        views = int(views)
    row_bytes = int(d) * (views or 1) * np.dtype(dtype).itemsize if dtype in ("float16", "float32") else 1
    wanted = Manifest.new(
        n=int(n), d=int(d), dtype=dtype, backend=backend,
        shard_size=int(shard_size) if shard_size is not None else default_shard_size(row_bytes),
        normalized=normalized, views=views,
        columns={k: ColumnSpec(tuple(int(x) for x in shape), str(np.dtype(dt))) for k, (shape, dt) in (columns or {}).items()},
        fingerprint=fingerprint, provenance=provenance,
    )
    _refuse_foreign_directory(location, str(path))
    location.makedirs()
    root = location.local_path()
    lock = None if root is None else WriterLock(root, str(path), fingerprint, exclusive=overwrite)
    try:
        _refuse_foreign_directory(location, str(path))  # decided again under the lock
        if lock is not None and lock.first:
            _remove_dead_temporaries(location)
        if location.exists(MANIFEST_NAME):
            if overwrite:
                _clear_store(location)
            elif exist_ok:
                existing = read_manifest(location)
                _check_same_layout(str(path), existing, wanted)
                return StoreWriter(location, _repair(location, existing), lock)
            else:
                raise StoreError(f"{path}: a store already exists here; resume it (exist_ok) or overwrite it")
        write_manifest(location, wanted)
        return StoreWriter(location, wanted, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _refuse_foreign_directory(location: Location, path: str) -> None:
    if not location.exists(MANIFEST_NAME) and [e for e in location.listdir() if e not in LOCK_FILES]:
        raise NotAStoreError(f"{path}: directory is not empty and holds no CompRess store; refusing to write into it")


def _remove_dead_temporaries(location: Location) -> None:
    """Remove ``*.tmp-PID*`` entries whose writer process is no longer alive on this host."""
    for entry in location.listdir():
        pid = tmp_pid(entry)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            log.info("%s: removing %s left by dead writer pid %d", location.url, entry, pid)
            location.remove(entry)


def _repair(location: Location, manifest: Manifest) -> Manifest:
    """The manifest with every complete shard whose data is missing or of the wrong size marked
    incomplete again (its data and marker removed, the manifest rewritten), so it is rewritten."""
    damaged = damaged_shards(location, manifest, get_backend(manifest.backend).suffix)
    if not damaged:
        return manifest
    for shard_id, problem in damaged.items():
        log.warning("%s; it will be written again", problem)
        rec = manifest.shards[shard_id]
        location.remove(marker_name(shard_id))
        location.remove(shard_data_name(shard_id, get_backend(manifest.backend).suffix))
        manifest = manifest.with_shard(ShardRecord(shard_id, rec.start, rec.stop))
    write_manifest(location, manifest)
    return manifest


def _check_same_layout(path: str, existing: Manifest, wanted: Manifest) -> None:
    old, new = existing.layout(), wanted.layout()
    diffs = [f"{k}: existing {old[k]!r}, requested {new[k]!r}" for k in new if old[k] != new[k]]
    if diffs:
        raise StoreMismatchError(
            f"{path}: the existing store differs from what was asked ({'; '.join(diffs)}); "
            "use a new path or overwrite it"
        )


def _clear_store(location: Location) -> None:
    """Delete a store's files (only entries a store owns, not its lock; the manifest goes last)."""
    for entry in location.listdir():
        if entry.startswith("shard-") or entry.startswith("rows-") or (entry.startswith(MANIFEST_NAME) and entry != MANIFEST_NAME):
            location.remove(entry)
    location.remove(MANIFEST_NAME)
