"""Atomic file writes: a kill at any point leaves the old file or the new one, never a mix.

Every file CompRess writes under its final name goes through ``write_atomic`` (data to
``<path>.tmp-<pid>-<rand>``, flush, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, BinaryIO, Callable


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


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` to a temporary sibling, fsync, rename onto ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")
