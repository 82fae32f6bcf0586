"""Storage backends, by name. ``get_backend`` fails with the list of known names."""

from __future__ import annotations

from storage.backends.base import ShardBackend
from storage.backends.hdf5_backend import HDF5Backend
from storage.backends.memory_backend import MemoryBackend
from storage.backends.zarr_backend import ZarrBackend

BACKENDS: dict[str, ShardBackend] = {b.name: b for b in (ZarrBackend(), HDF5Backend(), MemoryBackend())}


def get_backend(name: str) -> ShardBackend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown storage backend {name!r}; known backends: {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "ShardBackend", "get_backend"]
