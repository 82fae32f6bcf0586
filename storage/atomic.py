"""Atomic file writes: a kill at any point leaves the old file or the new one, never a mix.

Every file CompRess writes under its final name goes through ``write_atomic`` (data to
``<path>.tmp-<pid>-<rand>``, flush, fsync, rename, fsync of the directory), or, for data a
library writes itself under a path, ``write_path_atomic``; ``rename_durable`` is the one
rename-into-place (what a shard directory uses).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: str) -> str:
    """A sibling name for ``path`` unique to this process: ``<path>.tmp-<pid>-<8 hex>``."""
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def rename_durable(src: str, dst: str) -> None:
    """Rename ``src`` onto ``dst`` (atomic on POSIX) and fsync the directory so it survives a crash."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def tree_bytes(path: str) -> int:
    """Size of a file, or the sum of the sizes of every file under a directory;
    ``FileNotFoundError`` if ``path`` does not exist."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def write_path_atomic(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` creates the file at a temporary sibling path; it is then fsync'd and
    renamed onto ``path``. On any error the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        rename_durable(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` to a temporary sibling, fsync, rename onto ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """

    def write_file(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()

    write_path_atomic(path, write_file)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    def write(f: BinaryIO) -> None:
        f.write(data)

    write_atomic(path, write)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")
