"""The interface every storage backend implements: whole shards in, whole shards out.

A backend only knows how to put one ``ShardBlock`` under a name of a ``Location`` and read
it back; atomicity (temp name + rename), completion markers and the manifest are the
writer's job, so they behave the same for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from storage.location import Location
from storage.manifest import Manifest
from storage.shard_block import ShardBlock


class ShardBackend(ABC):
    """Stores one shard per name. ``suffix`` is appended to the shard's base name."""

    name: str
    suffix: str

    def check_location(self, location: Location) -> None:  # noqa: B027 - an optional hook: most backends accept any location
        """Raise ``ValueError`` if this backend cannot live at ``location`` (default: every location is fine)."""

    @abstractmethod
    def write(self, location: Location, name: str, block: ShardBlock, manifest: Manifest) -> None:
        """Write all of ``block`` under ``name`` (which does not exist yet)."""

    @abstractmethod
    def read_embeddings_into(self, location: Location, name: str, out: np.ndarray,
                             on_rows: Callable[[int], None] | None = None) -> None:
        """Copy the shard's embeddings into ``out`` (shape ``(R, *row_shape)``, C-contiguous).

        ``on_rows(stop)``, if given, may be called whenever rows ``[0, stop)`` of ``out`` are final
        (the reader checks their CRC32C meanwhile); the reader calls it with ``R`` afterwards anyway.
        """

    @abstractmethod
    def read_metadata(self, location: Location, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(index (R,) int64, labels (R,) int64, paths)`` of the shard."""

    @abstractmethod
    def read_column(self, location: Location, name: str, column: str) -> np.ndarray:
        """One extra column, shape ``(R, *spec.shape)``."""

    def read(self, location: Location, name: str, manifest: Manifest, rows: int) -> ShardBlock:
        """The whole shard as a block (used by verification and small reads)."""
        emb = np.empty((rows, *manifest.row_shape), dtype=manifest.dtype)
        self.read_embeddings_into(location, name, emb)
        index, labels, paths = self.read_metadata(location, name)
        columns = {c: self.read_column(location, name, c) for c in manifest.columns}
        return ShardBlock(emb, index, labels, paths, columns)
