"""The product's exceptions. Every message names the file, option, key or value at fault.

``CompressError`` is the root of every error CompRess raises on purpose, in every package
(store, listing, checkpoint, teacher, config, run mismatch). The command-line handler
(``storage.cli_errors``) prints such an error as one line and exits with its ``exit_code``:
2 for a usage error (a bad option or config value), 1 for a data error.
"""


class CompressError(Exception):
    """Base class of every error CompRess raises on purpose (exit status 1 on the command line)."""

    exit_code = 1


class UsageError(CompressError, ValueError):
    """An option or config value is invalid (exit status 2); the message names the option."""

    exit_code = 2


class StoreError(CompressError):
    """Base class of every error the store raises on purpose."""


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


class StoreLockedError(StoreError):
    """Another live process holds the store's writer lock."""


class ShardWriteError(StoreError, ValueError):
    """A shard given to the writer has the wrong shape, dtype, row count or shard id."""


def unknown_name(kind: str, name: str, known: "list[str] | tuple[str, ...]") -> str:
    """``unknown <kind> 'name' (did you mean 'x'?); known: a, b, c`` for a name not in ``known``."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}"
