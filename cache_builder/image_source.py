"""Sharded image inputs (``--data``): where the shards of a split are and how they become local files.

Besides an image folder or a file list (``cache_builder.image_list``), ``--data`` may name

* WebDataset **tar shards** (``cache_builder.tar_source``): a directory of ``.tar`` files, a
  brace pattern ``train-{000000..000127}.tar`` (numeric ranges keep their zero padding; lists
  ``{a,b}`` too), a single ``.tar``, or any of these as an fsspec URL (``file://``,
  ``memory://``, ``s3://``, ``gs://``, ...);
* **Parquet** files (``cache_builder.parquet_source``): the same forms with ``.parquet``.

Splits are as for folders: a location with ``train/`` and/or ``val/`` sub-locations holding
shards has those splits; a location holding shards itself (or a pattern, or one file) is the
``train`` split. Shards are listed sorted by name (a pattern in its expansion order); their
names (the last path component) must be unique within a split, because rows are identified
as ``<shard name>/<key>`` (tar) or ``<file name>#<row>`` (Parquet).

Remote shards (any protocol but ``file``) are copied once into a local cache directory
(fsspec ``filecache``, ``$COMPRESS_HOME/shard-cache`` by default) when the split is listed,
with a logged message stating the disk it takes; every read is then a local read by offset.

``ImageSource`` is what an ``ImageList`` of sharded rows reads through: ``read(path)`` gives
the encoded bytes of a row, ``name(path)`` the name an error gives (``LOCATION/shard/key``),
``identities(paths)`` the per-row ``(size, position)`` pairs stage 2 compares with those
recorded at build time, ``fingerprint()`` the shard listing (names, sizes, member counts).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
SHARD_KINDS = {".tar": "tar", ".parquet": "parquet"}
SPLIT_NAMES = ("train", "val")
CACHE_DIR = "shard-cache"  # under $COMPRESS_HOME: local copies of remote shards


class ShardError(CompressError, ValueError):
    """Sharded input that cannot be listed or read (the message names the shard, and key or row)."""


@dataclass(frozen=True)
class Shard:
    """One shard: ``name`` (its last path component: the row prefix), the ``url`` it was given
    as, the ``local`` file it is read from, and its ``size`` in bytes."""

    name: str
    url: str
    local: str
    size: int


class ImageSource:
    """Rows of one split stored inside shards; subclasses read one kind (module docstring)."""

    kind = ""

    def __init__(self, location: str, shards: Sequence[Shard]) -> None:
        self.location = location
        self.shards = tuple(shards)
        self.by_name = {s.name: s for s in self.shards}

    def paths_and_labels(self) -> tuple[list[str], list[int]]:
        """Every row's identity (``shard/key`` or ``file#row``) and label (-1 unknown), in order."""
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        """The encoded image bytes of row ``path``; ``ShardError`` names shard and key."""
        raise NotImplementedError

    def identities(self, paths: Sequence[str]) -> np.ndarray:
        """int64 ``(len(paths), 2)``: per row (encoded size, position in its shard)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the shard listing: names, sizes in bytes, member (row) counts."""
        raise NotImplementedError

    def name(self, path: str) -> str:
        return f"{self.location.rstrip('/')}/{path}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "shards": len(self.shards), "fingerprint": self.fingerprint()}

    def shard(self, name: str, path: str) -> Shard:
        try:
            return self.by_name[name]
        except KeyError:
            raise ShardError(f"{self.name(path)}: no shard {name!r} in {self.location}") from None


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``[a-000.tar, a-001.tar, a-002.tar]``; ``{x,y}`` lists; several groups."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if int(hi) < int(lo):
            raise ShardError(f"--data {pattern}: empty range {{{body}}}")
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


def is_url(data: str) -> bool:
    return "://" in data


def _fs(location: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(location)


def _kind(urls: Sequence[str], where: str) -> str | None:
    kinds = {SHARD_KINDS.get(os.path.splitext(u)[1].lower()) for u in urls} - {None}
    if len(kinds) > 1:
        raise ShardError(f"--data {where}: holds both tar shards and Parquet files; use one kind per location")
    return next(iter(kinds)) if kinds else None


def _shards_in(location: str) -> list[str]:
    """The shard URLs (``.tar``/``.parquet``) directly in directory ``location``, sorted by name."""
    fs, path = _fs(location)
    if not fs.isdir(path):
        return []
    names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    return [f"{location.rstrip('/')}/{n}" for n in names if os.path.splitext(n)[1].lower() in SHARD_KINDS]


def sharded_splits(data: str) -> dict[str, tuple[str, list[str]]] | None:
    """``{split: (location, [shard URL, ...])}`` when ``data`` names sharded input (module
    docstring), else None (an image folder or a file list)."""
    if "{" in data:
        urls = expand_braces(data)
        return {"train": (data, urls)} if _kind(urls, data) else None
    if not is_url(data) and not os.path.exists(data):
        return None
    if _kind([data], data):
        return {"train": (data, [data])}
    splits = {s: (f"{data.rstrip('/')}/{s}", _shards_in(f"{data.rstrip('/')}/{s}")) for s in SPLIT_NAMES}
    splits = {s: v for s, v in splits.items() if v[1]}
    if not splits:
        urls = _shards_in(data)
        splits = {"train": (data, urls)} if urls else {}
    for location, urls in splits.values():
        _kind(urls, location)
    if not splits and is_url(data):
        raise ShardError(f"--data {data}: no .tar or .parquet shards there (nor in train/ or val/)")
    return splits or None


def location_exists(data: str) -> bool:
    """Whether ``--data`` names something that can be listed: a local path, a pattern or a URL."""
    return os.path.exists(data) or is_url(data) or "{" in data


def local_shards(urls: Sequence[str], cache_dir: str | None = None) -> list[Shard]:
    """The shards ``urls`` as local files: local paths and ``file://`` URLs as they are, other
    protocols copied once into ``cache_dir`` (default ``$COMPRESS_HOME/shard-cache``) through
    fsspec's ``filecache``, with a message stating the disk that takes."""
    import fsspec

    from cache_builder.home import compress_home

    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ShardError(f"shard names must be unique within a split (rows are named <shard>/<key>): {', '.join(dupes[:3])}")
    out: list[Shard | None] = [None] * len(urls)
    remote = []
    for i, (name, url) in enumerate(zip(names, urls)):
        fs, path = _fs(url)
        if "file" in fs.protocol or "local" in fs.protocol:
            if not os.path.isfile(path):
                raise ShardError(f"shard {url}: no such file")
            out[i] = Shard(name, url, path, os.path.getsize(path))
        else:
            if not fs.exists(path):
                raise ShardError(f"shard {url}: no such file")
            remote.append((i, name, url, int(fs.size(path))))
    if remote:
        cache = cache_dir or os.path.join(compress_home(), CACHE_DIR)
        total = sum(r[3] for r in remote)
        log.warning("caching %d remote shards (%.3f GB) in %s on first read; delete that directory to free the disk",
                    len(remote), total / 1e9, cache)
        for i, name, url, size in remote:
            local = fsspec.open_local(f"filecache::{url}", filecache={"cache_storage": cache})
            out[i] = Shard(name, url, str(local), size)
    return [s for s in out if s is not None]


def open_sharded(data: str, image_column: str | None = None, label_column: str | None = None) -> dict[str, Any] | None:
    """``{split: ImageList}`` reading through a tar or Parquet ``ImageSource``, or None when
    ``data`` is an image folder or a file list."""
    from cache_builder.image_list import ImageList
    from cache_builder.pixel_source import open_copies

    copies = open_copies(data)  # a pre-resized copy (compress-cache build --pixels) is read through its own indexes
    if copies is not None:
        return copies
    splits = sharded_splits(data)
    if splits is None:
        return None
    out = {}
    for split, (location, urls) in splits.items():
        shards = local_shards(urls)
        source: ImageSource
        if _kind(urls, location) == "tar":
            from cache_builder.tar_source import TarSource

            source = TarSource(location, shards)
        else:
            from cache_builder.parquet_source import ParquetSource

            source = ParquetSource(location, shards, image_column, label_column)
        paths, labels = source.paths_and_labels()
        if not paths:
            raise ShardError(f"--data {location}: the shards hold no images")
        classes = tuple(str(c) for c in range(max(labels) + 1))
        out[split] = ImageList(location, tuple(paths), tuple(labels), classes, source=source)
    return out
