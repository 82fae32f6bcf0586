"""``ShardBlock``: the rows of one shard in memory, the unit every backend writes and reads.

The checksums are taken over a canonical byte encoding of the block (each array C-ordered,
little-endian; embeddings, index, labels, paths, extra columns in name order), so they do not
depend on the backend: a zarr and an hdf5 store of the same rows carry the same checksums.
``checksum`` (SHA-256 of everything) is the shard's identity; ``crc32c`` (per array, a list
of CRC32Cs of consecutive blocks of about ``CRC_BLOCK_BYTES``, whole rows each) is what the
reader verifies as it loads each array: blocks let it check in parallel threads, overlapped
with reading the next rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c
import numpy as np

from storage.errors import ShardWriteError
from storage.manifest import Manifest


@dataclass
class ShardBlock:
    """Rows of one shard.

    Attributes:
        embeddings: ``(R, D)`` or ``(R, V, D)`` float16/float32.
        index: ``(R,)`` int64 dataset index of each row.
        labels: ``(R,)`` int64 class label, -1 where unknown.
        paths: ``R`` relative source paths (UTF-8 strings).
        columns: extra per-row arrays, each ``(R, *spec.shape)``.
    """

    embeddings: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    paths: list[str]
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.embeddings.shape[0])

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, canonical array)`` in checksum order: ``embeddings``, ``index``, ``labels``,
        ``path_offsets``, ``path_bytes``, then ``column:<name>`` by name."""
        yield "embeddings", canonical(self.embeddings)
        yield "index", canonical(np.asarray(self.index, dtype=np.int64))
        yield "labels", canonical(np.asarray(self.labels, dtype=np.int64))
        offsets, blob = encode_paths(self.paths)
        yield "path_offsets", canonical(offsets)
        yield "path_bytes", blob
        for name in sorted(self.columns):
            yield f"column:{name}", canonical(self.columns[name])

    def checksum(self) -> str:
        """``"sha256:<hex>"`` of the canonical bytes of this block."""
        h = hashlib.sha256()
        for name, arr in self.arrays():
            if name.startswith("column:"):
                h.update(name.removeprefix("column:").encode())
            h.update(arr.data)
        return "sha256:" + h.hexdigest()

    def crc32c(self) -> dict[str, list[int]]:
        """``crc_blocks`` of each array, by the names of ``arrays``."""
        return {name: crc_blocks(arr) for name, arr in self.arrays()}


CRC_BLOCK_BYTES = 4 << 20


def crc_block_rows(arr: np.ndarray) -> int:
    """Rows per CRC block of ``arr`` (axis 0 = rows): about ``CRC_BLOCK_BYTES``, at least one row."""
    row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    return max(1, CRC_BLOCK_BYTES // max(1, row_bytes))


def crc_blocks(arr: np.ndarray) -> list[int]:
    """CRC32C of each block of ``crc_block_rows(arr)`` consecutive rows of ``arr``'s canonical bytes."""
    rows = crc_block_rows(arr)
    return [crc_of(arr[i:i + rows]) for i in range(0, arr.shape[0], rows)]


def canonical(arr: Any) -> np.ndarray:
    """``arr`` C-contiguous and little-endian (a view when it already is)."""
    a = np.ascontiguousarray(arr)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def crc_of(arr: np.ndarray) -> int:
    """CRC32C of the canonical bytes of ``arr`` (releases the GIL, so threads run in parallel)."""
    a = canonical(arr)
    return int(_crc32c.crc32c(a.reshape(-1).view(np.uint8).data)) if a.size else 0


def encode_paths(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Paths as ``(offsets (R+1,) int64, blob (B,) uint8)``: path i is ``blob[offsets[i]:offsets[i+1]]``."""
    encoded = [p.encode("utf-8") for p in paths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return offsets, blob


def decode_paths(offsets: np.ndarray, blob: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_paths`."""
    raw = blob.tobytes()
    return [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def make_block(
    manifest: Manifest,
    shard_id: int,
    embeddings: np.ndarray,
    index: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    paths: list[str] | None = None,
    columns: dict[str, np.ndarray] | None = None,
) -> ShardBlock:
    """Validate a shard's rows against the manifest and build its block.

    Missing ``index`` defaults to the global row numbers, ``labels`` to -1, ``paths`` to "".
    Raises ``ShardWriteError`` naming the shard and what was expected.
    """
    if not 0 <= shard_id < len(manifest.shards):
        raise ShardWriteError(
            f"shard {shard_id} does not exist: the store has {len(manifest.shards)} shards "
            f"for n={manifest.n} rows (writing past N?)"
        )
    rec = manifest.shards[shard_id]
    where = f"shard {shard_id} (rows {rec.start}-{rec.stop - 1})"
    emb = _to_numpy(embeddings)
    expected_shape = (rec.rows, *manifest.row_shape)
    if emb.shape != expected_shape:
        hint = ""
        if emb.ndim == len(expected_shape) and emb.shape[-1] != manifest.d:
            hint = f": embedding dimension D is {emb.shape[-1]}, the store holds D={manifest.d}"
        elif emb.shape[0] != rec.rows:
            hint = f": got {emb.shape[0]} rows, a shard is written whole"
        raise ShardWriteError(f"{where}: embeddings have shape {tuple(emb.shape)}, expected {expected_shape}{hint}")
    if emb.dtype != np.dtype(manifest.dtype):
        raise ShardWriteError(f"{where}: embeddings have dtype {emb.dtype}, the store holds {manifest.dtype}; cast before writing")
    idx = np.arange(rec.start, rec.stop, dtype=np.int64) if index is None else _int_column(index, rec.rows, "index", where)
    lab = np.full(rec.rows, -1, dtype=np.int64) if labels is None else _int_column(labels, rec.rows, "labels", where)
    pth = [""] * rec.rows if paths is None else [str(p) for p in paths]
    if len(pth) != rec.rows:
        raise ShardWriteError(f"{where}: got {len(pth)} paths for {rec.rows} rows")
    given = dict(columns or {})
    if set(given) != set(manifest.columns):
        raise ShardWriteError(
            f"{where}: columns {sorted(given)} given, the store declares {sorted(manifest.columns)}"
        )
    cols = {}
    for name, spec in manifest.columns.items():
        arr = _to_numpy(given[name])
        if arr.shape != (rec.rows, *spec.shape) or arr.dtype != np.dtype(spec.dtype):
            raise ShardWriteError(
                f"{where}: column {name!r} has shape {arr.shape} dtype {arr.dtype}, "
                f"expected {(rec.rows, *spec.shape)} {spec.dtype}"
            )
        cols[name] = np.ascontiguousarray(arr)
    return ShardBlock(np.ascontiguousarray(emb), idx, lab, pth, cols)


def _to_numpy(x: object) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _int_column(values: object, rows: int, name: str, where: str) -> np.ndarray:
    arr = _to_numpy(values)
    if arr.shape != (rows,) or not np.issubdtype(arr.dtype, np.integer):
        raise ShardWriteError(f"{where}: {name} must be an integer array of shape ({rows},), got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)
