"""Where a store lives: a local directory, an fsspec URL, or an in-process memory area.

A ``Location`` offers the handful of file operations the store needs, each relative to the
store root: atomic small-file writes (temp name + rename), existence, listing, rename,
removal. Backends put their shard data through it (or through ``local_path`` /
``zarr_store`` where a library needs its own handle).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from typing import Any

from storage.atomic import rename_durable, tree_bytes, write_bytes_atomic

MEMORY_SCHEME = "memory://"


class Location(ABC):
    """A store root. ``url`` is what the user passed (used in messages)."""

    url: str

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """Contents of ``name``; ``FileNotFoundError`` if absent."""

    @abstractmethod
    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        """Write ``name`` so that a reader sees either the old file or the whole new one."""

    @abstractmethod
    def exists(self, name: str = "") -> bool: ...

    @abstractmethod
    def listdir(self) -> list[str]:
        """Entry names directly under the root (files and directories)."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None: ...

    @abstractmethod
    def remove(self, name: str) -> None:
        """Remove a file or a directory tree; no error if absent."""

    @abstractmethod
    def makedirs(self) -> None:
        """Create the root if needed."""

    def size(self, name: str) -> int | None:
        """Bytes ``name`` occupies (a file's size, or the sum over a directory tree); ``None``
        where the location cannot tell; ``FileNotFoundError`` if absent."""
        return None

    def local_path(self, name: str = "") -> str | None:
        """A local filesystem path for ``name`` when the location is on local disk."""
        return None

    def zarr_store(self, name: str) -> Any:
        """A zarr v3 store rooted at ``name``."""
        raise NotImplementedError(f"{self.url}: zarr is not available on this location")

    def describe(self, name: str = "") -> str:
        return self.url.rstrip("/") + ("/" + name if name else "")


class LocalLocation(Location):
    """A directory on local disk. Writes are fsync'd before the rename."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.url = os.fspath(path)

    def _p(self, name: str) -> str:
        return os.path.join(self.root, name) if name else self.root

    def read_bytes(self, name: str) -> bytes:
        with open(self._p(name), "rb") as f:
            return f.read()

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        write_bytes_atomic(self._p(name), data)

    def exists(self, name: str = "") -> bool:
        return os.path.exists(self._p(name))

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []

    def rename(self, src: str, dst: str) -> None:
        rename_durable(self._p(src), self._p(dst))

    def size(self, name: str) -> int:
        return tree_bytes(self._p(name))

    def remove(self, name: str) -> None:
        p = self._p(name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)

    def makedirs(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def local_path(self, name: str = "") -> str:
        return self._p(name)

    def zarr_store(self, name: str) -> Any:
        import zarr.storage

        return zarr.storage.LocalStore(self._p(name))


class FsspecLocation(Location):
    """Any fsspec URL (``file://``, ``s3://``, ``gs://``, ...). On object stores a rename
    is a copy; completion is still only declared by the marker written after the data."""

    def __init__(self, url: str) -> None:
        import fsspec.core

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._p(name))

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        tmp = f"{self._p(name)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self._p(name))

    def exists(self, name: str = "") -> bool:
        return bool(self.fs.exists(self._p(name)))

    def listdir(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))

    def rename(self, src: str, dst: str) -> None:
        self.fs.mv(self._p(src), self._p(dst), recursive=True)

    def size(self, name: str) -> int:
        if not self.fs.exists(self._p(name)):
            raise FileNotFoundError(self.describe(name))
        return int(self.fs.du(self._p(name), total=True))

    def remove(self, name: str) -> None:
        if self.fs.exists(self._p(name)):
            self.fs.rm(self._p(name), recursive=True)

    def makedirs(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def local_path(self, name: str = "") -> str | None:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return self._p(name) if protocol in ("file", "local") else None

    def zarr_store(self, name: str) -> Any:
        import zarr.storage

        options = {"auto_mkdir": True} if self.local_path() is not None else None
        return zarr.storage.FsspecStore.from_url(self.describe(name), storage_options=options)


class MemoryLocation(Location):
    """A process-global dict keyed by ``memory://name``: for tests and throwaway stores.
    Values are ``bytes`` (small files) or backend objects (shard data)."""

    _areas: dict[str, dict[str, Any]] = {}
    _lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url
        with self._lock:
            self.files = self._areas.setdefault(url.rstrip("/"), {})

    def read_bytes(self, name: str) -> bytes:
        try:
            value = self.files[name]
        except KeyError:
            raise FileNotFoundError(self.describe(name)) from None
        if not isinstance(value, bytes):
            raise IsADirectoryError(self.describe(name))
        return value

    def write_bytes_atomic(self, name: str, data: bytes) -> None:
        self.files[name] = bytes(data)

    def exists(self, name: str = "") -> bool:
        return (not name and bool(self.files)) or name in self.files

    def listdir(self) -> list[str]:
        return sorted(self.files)

    def rename(self, src: str, dst: str) -> None:
        self.files[dst] = self.files.pop(src)

    def remove(self, name: str) -> None:
        self.files.pop(name, None)

    def makedirs(self) -> None:
        pass

    @classmethod
    def discard(cls, url: str) -> None:
        """Forget a memory store entirely."""
        with cls._lock:
            cls._areas.pop(url.rstrip("/"), None)


def resolve_location(path: str | os.PathLike[str]) -> Location:
    """``memory://x`` -> memory, ``scheme://...`` -> fsspec, anything else -> local directory."""
    text = os.fspath(path)
    if text.startswith(MEMORY_SCHEME):
        return MemoryLocation(text)
    if "://" in text:
        return FsspecLocation(text)
    return LocalLocation(text)
