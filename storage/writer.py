"""Creating and writing a store: ``create_store(...)`` -> ``StoreWriter``.

Write protocol, per shard (one writer per shard; several ranks may write disjoint shards):
  1. validate the rows against the manifest (shape, dtype, row count);
  2. write the data under a temporary name, then rename it into place;
  3. write the completion marker (with the checksum) atomically.
A kill at any point leaves either no marker (the shard is rewritten on resume) or a
complete shard. The manifest is written at creation and rewritten last by ``finalize``.
Completed shards are never rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from storage.backends import get_backend
from storage.errors import NotAStoreError, ShardWriteError, StoreError, StoreIncompleteError, StoreMismatchError
from storage.layout import TMP_INFIX, marker_name, read_manifest, shard_base, shard_data_name, write_manifest
from storage.location import Location, MemoryLocation, resolve_location
from storage.manifest import MANIFEST_NAME, ColumnSpec, Manifest, ShardRecord
from storage.reader import Store, open_store
from storage.shard_block import make_block
from storage.sharding import format_ranges, shards_for_rank

DEFAULT_SHARD_BYTES = 64 << 20


def default_shard_size(row_bytes: int) -> int:
    """Rows per shard so that one shard holds about 64 MiB of embeddings."""
    return max(1, DEFAULT_SHARD_BYTES // max(1, row_bytes))


class StoreWriter:
    """Writes the shards of one store. Get one from ``create_store``."""

    def __init__(self, location: Location, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest
        self.backend = get_backend(manifest.backend)

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

    def write_shard(
        self,
        shard_id: int,
        embeddings: np.ndarray,
        index: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        paths: list[str] | None = None,
        columns: dict[str, np.ndarray] | None = None,
    ) -> ShardRecord:
        """Write one whole shard atomically and mark it complete.

        Args:
            embeddings: ``(R, D)`` or ``(R, V, D)`` in the store's dtype, R = the shard's rows.
            index: ``(R,)`` dataset indices (default: the global row numbers).
            labels: ``(R,)`` labels (default -1).
            paths: R relative source paths (default "").
            columns: every extra column the store declares, each ``(R, *shape)``.
        Raises:
            ShardWriteError: wrong shape/dtype/rows, unknown shard, or shard already complete.
        """
        block = make_block(self.manifest, shard_id, embeddings, index, labels, paths, columns)
        if self.location.exists(marker_name(shard_id)):
            raise ShardWriteError(
                f"{self.path}: shard {shard_id} is already complete; completed shards are never rewritten"
            )
        final = shard_data_name(shard_id, self.backend.suffix)
        self._remove_leftovers(shard_id, final)
        tmp = f"{final}{TMP_INFIX}{os.getpid()}"
        self.backend.write(self.location, tmp, block, self.manifest)
        self.location.rename(tmp, final)
        rec = self.manifest.shards[shard_id]
        checksum = block.checksum()
        marker = {"shard_id": shard_id, "start": rec.start, "stop": rec.stop, "checksum": checksum}
        self.location.write_bytes_atomic(marker_name(shard_id), json.dumps(marker).encode())
        done = ShardRecord(shard_id, rec.start, rec.stop, True, checksum)
        self.manifest = self.manifest.with_shard(done)
        return done

    def _remove_leftovers(self, shard_id: int, final: str) -> None:
        """Remove what a killed earlier attempt at this shard left (temp data, or data
        renamed into place whose marker was never written)."""
        base = shard_base(shard_id)
        for entry in self.location.listdir():
            if entry.startswith(base) and (TMP_INFIX in entry or entry == final):
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
            (a different one raises ``StoreMismatchError`` listing the differences).
        overwrite: delete an existing store at ``path`` first.
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
    if location.exists(MANIFEST_NAME):
        if overwrite:
            _clear_store(location)
        elif exist_ok:
            existing = read_manifest(location)
            _check_same_layout(str(path), existing, wanted)
            return StoreWriter(location, existing)
        else:
            raise StoreError(f"{path}: a store already exists here; resume it (exist_ok) or overwrite it")
    elif location.listdir():
        raise NotAStoreError(f"{path}: directory is not empty and holds no CompRess store; refusing to write into it")
    location.makedirs()
    write_manifest(location, wanted)
    return StoreWriter(location, wanted)


def _check_same_layout(path: str, existing: Manifest, wanted: Manifest) -> None:
    old, new = existing.layout(), wanted.layout()
    diffs = [f"{k}: existing {old[k]!r}, requested {new[k]!r}" for k in new if old[k] != new[k]]
    if diffs:
        raise StoreMismatchError(
            f"{path}: the existing store differs from what was asked ({'; '.join(diffs)}); "
            "use a new path or overwrite it"
        )


def _clear_store(location: Location) -> None:
    """Delete a store's files (only entries a store owns; the manifest goes last)."""
    for entry in location.listdir():
        if entry.startswith("shard-") or entry.startswith("rows-"):
            location.remove(entry)
    location.remove(MANIFEST_NAME)
