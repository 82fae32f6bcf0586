"""In-process backend for tests: shards are kept as ``ShardBlock`` copies in a ``MemoryLocation``."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from storage.backends.base import ShardBackend
from storage.location import Location, MemoryLocation
from storage.manifest import Manifest
from storage.shard_block import ShardBlock


class MemoryBackend(ShardBackend):
    name = "memory"
    suffix = ".mem"

    def check_location(self, location: Location) -> None:
        if not isinstance(location, MemoryLocation):
            raise ValueError(f"backend 'memory' needs a memory:// path, got {location.url!r}")

    def _block(self, location: Location, name: str) -> ShardBlock:
        value = location.files.get(name)  # type: ignore[attr-defined]
        if not isinstance(value, ShardBlock):
            raise FileNotFoundError(location.describe(name))
        return value

    def write(self, location: Location, name: str, block: ShardBlock, manifest: Manifest) -> None:
        location.files[name] = copy.deepcopy(block)  # type: ignore[attr-defined]

    def read_embeddings_into(self, location: Location, name: str, out: np.ndarray,
                             on_rows: Callable[[int], None] | None = None) -> None:
        src = self._block(location, name).embeddings
        if src.shape != out.shape:
            raise ValueError(f"{location.describe(name)}: holds shape {src.shape}, expected {out.shape}")
        out[...] = src

    def read_metadata(self, location: Location, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        b = self._block(location, name)
        return b.index.copy(), b.labels.copy(), list(b.paths)

    def read_column(self, location: Location, name: str, column: str) -> np.ndarray:
        return self._block(location, name).columns[column].copy()
