"""Sharded stores of embeddings (teacher caches and extracted features).

One store holds one split: ``N`` rows of ``D`` (or ``V x D``) float16/float32 values, and per
row the dataset index, label and relative source path. See docs/cache.md ("The store
format").

Typical use::

    writer = create_store("cache/train", n, d, "float16", backend="zarr")
    for shard_id in writer.pending_shards():
        start, stop = writer.shard_rows(shard_id)
        writer.write_shard(shard_id, embeddings[start:stop], index=..., labels=..., paths=...)
    store = writer.finalize(provenance={...})
    rows = open_store("cache/train").load_all()          # (N, D) contiguous numpy array
"""

from storage.backends import BACKENDS, get_backend
from storage.errors import (
    NotAStoreError,
    ShardWriteError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from storage.manifest import FORMAT_VERSION, ColumnSpec, Manifest, ShardRecord
from storage.reader import RowMetadata, Store, open_store
from storage.shard_block import ShardBlock
from storage.verify import VerifyReport, verify
from storage.writer import StoreWriter, create_store

__all__ = [
    "BACKENDS",
    "FORMAT_VERSION",
    "ColumnSpec",
    "Manifest",
    "NotAStoreError",
    "RowMetadata",
    "ShardBlock",
    "ShardRecord",
    "ShardWriteError",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreFormatError",
    "StoreIncompleteError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreWriter",
    "VerifyReport",
    "create_store",
    "get_backend",
    "open_store",
    "verify",
]
