"""Exceptions raised by the store. Every message names the path, shard or value at fault."""


class StoreError(Exception):
    """Base class of every error this package raises on purpose."""


class NotAStoreError(StoreError):
    """The path holds no manifest, or something that is not a CompRess store."""


class StoreFormatError(StoreError):
    """The manifest is unreadable or written by a newer, unknown format version."""


class StoreIncompleteError(StoreError):
    """Rows were asked of a store whose shards are not all written yet."""


class StoreCorruptError(StoreError):
    """A shard file is missing, truncated, or does not match its recorded checksum."""


class StoreMismatchError(StoreError):
    """An existing store differs from what the caller asked to create or resume."""


class ShardWriteError(StoreError, ValueError):
    """A shard given to the writer has the wrong shape, dtype, row count or shard id."""
