"""Reading a store: ``open_store(path)`` -> ``Store``.

Training and evaluation read a store once, whole, into one contiguous array
(``Store.load_all``) or a node-wide shared memory map (``Store.load_shared``); they never
gather random rows through zarr/h5py per batch.

Integrity: ``open_store`` refuses a manifest whose shards do not tile ``[0, n)`` and a store
whose complete shards are missing or not their recorded size; ``load_all``/``load_into``,
``load_metadata`` and ``load_column`` verify each array's CRC32C as they read it (``verify=True``
by default; the cost is measured in bench/RESULTS.md) and name the shard on a mismatch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from storage import integrity
from storage.backends import ShardBackend, get_backend
from storage.errors import NotAStoreError, StoreCorruptError, StoreIncompleteError
from storage.integrity import REBUILD_HINT, CrcChecker, check_array, where
from storage.layout import read_manifest, shard_data_name
from storage.location import Location, resolve_location
from storage.manifest import MANIFEST_NAME, Manifest, ShardRecord
from storage.shard_block import ShardBlock, encode_paths
from storage.sharding import format_ranges

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowMetadata:
    """Per-row metadata of a whole store: ``index``/``labels`` are ``(N,)`` int64."""

    index: np.ndarray
    labels: np.ndarray
    paths: list[str]


class Store:
    """A store opened for reading; complete or not (see ``status``)."""

    def __init__(self, location: Location, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest
        self.backend: ShardBackend = get_backend(manifest.backend)

    # ---- description ------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.location.url

    @property
    def n(self) -> int:
        return self.manifest.n

    @property
    def d(self) -> int:
        return self.manifest.d

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest.dtype)

    @property
    def views(self) -> int | None:
        return self.manifest.views

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the full embeddings array: ``(N, D)`` or ``(N, V, D)``."""
        return (self.n, *self.manifest.row_shape)

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    @property
    def provenance(self) -> dict[str, Any]:
        return self.manifest.provenance

    def status(self) -> str:
        """``"complete: 8 shards"`` or ``"incomplete: shards 0-3 done of 8 (missing 4-7)"``."""
        total = len(self.manifest.shards)
        if self.complete:
            return f"complete: {total} shards"
        return (
            f"incomplete: shards {format_ranges(self.manifest.done_shards)} done of {total} "
            f"(missing {format_ranges(self.manifest.missing_shards)})"
        )

    def __repr__(self) -> str:
        return f"Store({self.path!r}, shape={self.shape}, dtype={self.manifest.dtype}, {self.status()})"

    def require_complete(self, purpose: str = "reading") -> None:
        """Raise ``StoreIncompleteError`` unless every shard is written."""
        if not self.complete:
            raise StoreIncompleteError(
                f"{self.path}: store is {self.status()}; {purpose} needs a complete store. "
                "Rerun the command that builds it to resume."
            )

    # ---- shard access -----------------------------------------------------------
    def content_fingerprint(self) -> str:
        """``sha256:<hex>`` identity of a complete store's rows: shape, dtype, views, and every shard's
        row range and checksum.

        Two stores with the same fingerprint hold the same rows in the same order (in any
        backend). Raises ``StoreIncompleteError`` while a shard is unwritten.
        """
        import hashlib

        self.require_complete("fingerprinting")
        m = self.manifest
        h = hashlib.sha256(f"{m.n}:{m.d}:{m.dtype}:{m.views}".encode())
        for rec in m.shards:
            h.update(f"|{rec.start}-{rec.stop}:{rec.checksum}".encode())
        return "sha256:" + h.hexdigest()

    def _shard_name(self, shard_id: int) -> str:
        return shard_data_name(shard_id, self.backend.suffix)

    def _record(self, shard_id: int) -> ShardRecord:
        rec = self.manifest.shards[shard_id]
        if not rec.complete:
            raise StoreIncompleteError(f"{self.path}: shard {shard_id} is not written yet ({self.status()})")
        return rec

    def _corrupt(self, shard_id: int, err: BaseException) -> StoreCorruptError:
        rec = self.manifest.shards[shard_id]
        what = "is missing" if isinstance(err, FileNotFoundError) else f"cannot be read ({err})"
        return StoreCorruptError(f"{self.location.describe(self._shard_name(shard_id))}: {where(rec)} {what}; {REBUILD_HINT}")

    def _check_crc(self, rec: ShardRecord, array: str, data: np.ndarray) -> None:
        check_array(self.location, rec, self.backend.suffix, array, data)

    def read_shard(self, shard_id: int) -> ShardBlock:
        """All data of one complete shard."""
        rec = self._record(shard_id)
        try:
            return self.backend.read(self.location, self._shard_name(shard_id), self.manifest, rec.rows)
        except (OSError, ValueError, KeyError) as e:
            raise self._corrupt(shard_id, e) from None

    def load_into(self, out: np.ndarray, *, allow_incomplete: bool = False, progress: bool = False, verify: bool = True) -> np.ndarray:
        """Copy all embeddings, in row order, into ``out`` of shape ``self.shape``.

        Missing shards (only with ``allow_incomplete``) are left as they are in ``out``. With
        ``verify`` each shard's CRC32C blocks are checked as they are read (in worker threads that
        overlap the reading of the next rows); a mismatch raises ``StoreCorruptError`` naming the shard.
        """
        if not allow_incomplete:
            self.require_complete("loading all rows")
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {self.shape} {self.dtype}, got {out.shape} {out.dtype}")
        shards = [s for s in self.manifest.shards if s.complete]
        iterator: Any = shards
        if progress:
            from tqdm import tqdm

            iterator = tqdm(shards, desc=f"load {self.path}", unit="shard")
        checker = CrcChecker(self.location, self.backend.suffix) if verify else None
        try:
            for rec in iterator:
                part = out[rec.start:rec.stop]
                on_rows = None if checker is None else checker.watch(rec, "embeddings", part)
                try:
                    self.backend.read_embeddings_into(self.location, self._shard_name(rec.shard_id), part, on_rows)
                except (OSError, ValueError, KeyError) as e:
                    raise self._corrupt(rec.shard_id, e) from None
                if on_rows is not None:
                    on_rows(part.shape[0])
            if checker is not None:
                checker.finish()
        finally:
            if checker is not None:
                checker.close()
        return out

    def load_all(
        self,
        kind: Literal["numpy", "torch"] = "numpy",
        *,
        pin_memory: bool = False,
        device: str | torch.device | None = None,
        progress: bool = False,
        verify: bool = True,
    ) -> np.ndarray | torch.Tensor:
        """All embeddings as one contiguous array, shape ``(N, D)`` or ``(N, V, D)``.

        Args:
            kind: ``"numpy"`` or ``"torch"``.
            pin_memory: with ``kind="torch"``, allocate page-locked host memory (needs CUDA;
                ignored with a warning without it).
            device: with ``kind="torch"``, move the tensor there (e.g. ``"cuda"``).
            verify: check every shard's CRC32C as it is read (see ``load_into``).
        """
        if kind == "numpy":
            if pin_memory or device is not None:
                raise ValueError("pin_memory and device need kind='torch'")
            return self.load_into(np.empty(self.shape, dtype=self.dtype), progress=progress, verify=verify)
        if kind != "torch":
            raise ValueError(f"kind must be 'numpy' or 'torch', got {kind!r}")
        import torch

        self.require_complete("loading all rows")
        if pin_memory and not torch.cuda.is_available():
            log.warning("pin_memory=True needs CUDA, which is not available; using pageable memory")
            pin_memory = False
        tensor = torch.empty(self.shape, dtype=getattr(torch, self.manifest.dtype), pin_memory=pin_memory)
        self.load_into(tensor.numpy(), progress=progress, verify=verify)
        if device is not None:
            tensor = tensor.to(device, non_blocking=pin_memory)
        return tensor

    def load_shared(self, cache_dir: str | None = None, kind: Literal["numpy", "torch"] = "numpy") -> np.ndarray | torch.Tensor:
        """All embeddings as a memory map that every process on the node shares (one copy in
        the page cache instead of one per DDP rank). See ``storage.shared_array``."""
        from storage.shared_array import load_shared

        return load_shared(self, cache_dir=cache_dir, kind=kind)

    def load_metadata(self, *, verify: bool = True) -> RowMetadata:
        """Dataset index, label and relative path of every row, in row order (``(N,)`` int64, ``(N,)``
        int64, N strings); with ``verify`` each shard's CRC32Cs are checked."""
        self.require_complete("reading row metadata")
        index = np.empty(self.n, dtype=np.int64)
        labels = np.empty(self.n, dtype=np.int64)
        paths: list[str] = []
        for rec in self.manifest.shards:
            try:
                idx, lab, pth = self.backend.read_metadata(self.location, self._shard_name(rec.shard_id))
            except (OSError, ValueError, KeyError) as e:
                raise self._corrupt(rec.shard_id, e) from None
            if verify:
                offsets, blob = encode_paths(pth)
                for array, data in (("index", idx), ("labels", lab), ("path_offsets", offsets), ("path_bytes", blob)):
                    self._check_crc(rec, array, data)
            index[rec.start:rec.stop] = idx
            labels[rec.start:rec.stop] = lab
            paths.extend(pth)
        return RowMetadata(index, labels, paths)

    def load_column(self, name: str, *, verify: bool = True) -> np.ndarray:
        """An extra column for all rows, shape ``(N, *spec.shape)``; with ``verify`` its CRC32Cs are checked."""
        if name not in self.manifest.columns:
            raise KeyError(f"{self.path}: no column {name!r}; columns: {sorted(self.manifest.columns) or 'none'}")
        self.require_complete(f"reading column {name!r}")
        spec = self.manifest.columns[name]
        out = np.empty((self.n, *spec.shape), dtype=spec.dtype)
        for rec in self.manifest.shards:
            try:
                out[rec.start:rec.stop] = self.backend.read_column(self.location, self._shard_name(rec.shard_id), name)
            except (OSError, ValueError, KeyError) as e:
                raise self._corrupt(rec.shard_id, e) from None
            if verify:
                self._check_crc(rec, f"column:{name}", out[rec.start:rec.stop])
        return out


def open_store(path: str, *, check_files: bool = True) -> Store:
    """Open an existing store (complete or not) for reading.

    Args:
        check_files: check that every complete shard's data exists with its recorded byte size
            (one ``stat`` per file; ``verify`` turns it off to report every problem itself).
    Raises:
        NotAStoreError: nothing there, or no manifest (the message lists split stores
            found below, e.g. ``train``/``val`` of a cache directory).
        StoreFormatError: unreadable or inconsistent manifest (shards that do not tile ``[0, n)``),
            or another format version; the message names the manifest field.
        StoreCorruptError: a complete shard's data is missing or truncated (named, with how to rebuild it).
    """
    location = resolve_location(path)
    try:
        manifest = read_manifest(location)
    except FileNotFoundError:
        if not location.exists():
            raise NotAStoreError(f"{path}: no such store (the path does not exist)") from None
        hint = _split_hint(location)
        raise NotAStoreError(f"{path}: not a CompRess store (no {MANIFEST_NAME}){hint}") from None
    except IsADirectoryError:
        raise NotAStoreError(f"{path}: not a CompRess store ({MANIFEST_NAME} is not a file)") from None
    store = Store(location, manifest)
    if check_files:
        integrity.check_files(location, manifest, store.backend.suffix)
    return store


def _split_hint(location: Location) -> str:
    subs = []
    for entry in location.listdir():
        try:
            if resolve_location(location.describe(entry)).exists(MANIFEST_NAME):
                subs.append(entry)
        except (OSError, ValueError):
            continue
    if subs:
        return f"; it holds the split stores {', '.join(subs)}: open {location.describe(subs[0])}"
    return ""
