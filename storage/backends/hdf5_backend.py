"""HDF5 backend (h5py): one ``.h5`` file per shard, contiguous uncompressed datasets.

Contiguous layout lets ``read_direct`` copy the embeddings straight into the caller's
buffer, close to raw disk speed. HDF5 needs a local path: use zarr for remote URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from storage.backends.base import ShardBackend
from storage.location import Location
from storage.manifest import Manifest
from storage.shard_block import ShardBlock, decode_paths, encode_paths

READ_BLOCK_BYTES = 16 << 20


class HDF5Backend(ShardBackend):
    name = "hdf5"
    suffix = ".h5"

    def check_location(self, location: Location) -> None:
        if location.local_path() is None:
            raise ValueError(f"backend 'hdf5' needs a local path, got {location.url!r}; use backend 'zarr' for URLs")

    def _path(self, location: Location, name: str) -> str:
        path = location.local_path(name)
        assert path is not None
        return path

    def write(self, location: Location, name: str, block: ShardBlock, manifest: Manifest) -> None:
        import h5py

        offsets, blob = encode_paths(block.paths)
        with h5py.File(self._path(location, name), "w") as f:
            f.create_dataset("embeddings", data=block.embeddings)
            f.create_dataset("index", data=block.index)
            f.create_dataset("label", data=block.labels)
            f.create_dataset("path_offsets", data=offsets)
            f.create_dataset("path_bytes", data=blob, shape=blob.shape, dtype=np.uint8)
            for col, arr in block.columns.items():
                f.create_dataset(f"columns/{col}", data=arr)
            f.flush()

    def _open(self, location: Location, name: str) -> Any:
        import h5py

        path = self._path(location, name)
        try:
            return h5py.File(path, "r")
        except FileNotFoundError:
            raise
        except OSError as e:
            raise OSError(f"{path}: cannot be read as HDF5 (truncated or corrupt?): {e}") from None

    def read_embeddings_into(self, location: Location, name: str, out: np.ndarray,
                             on_rows: Callable[[int], None] | None = None) -> None:
        with self._open(location, name) as f:
            ds = f["embeddings"]
            if ds.shape != out.shape or ds.dtype != out.dtype:
                raise ValueError(f"{self._path(location, name)}: holds {ds.shape} {ds.dtype}, expected {out.shape} {out.dtype}")
            if not out.size:
                return
            if on_rows is None:
                ds.read_direct(out)
                return
            step = max(1, READ_BLOCK_BYTES // max(1, out[0].nbytes))  # blocks, so checks overlap the read
            for start in range(0, out.shape[0], step):
                stop = min(start + step, out.shape[0])
                ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
                on_rows(stop)

    def read_metadata(self, location: Location, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        with self._open(location, name) as f:
            paths = decode_paths(f["path_offsets"][()], f["path_bytes"][()])
            return f["index"][()].astype(np.int64), f["label"][()].astype(np.int64), paths

    def read_column(self, location: Location, name: str, column: str) -> np.ndarray:
        with self._open(location, name) as f:
            return f[f"columns/{column}"][()]
