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

Remote shards (any protocol but ``file``) are not copied when a split is listed: the listing
takes each shard's size and change token from the filesystem's ``info()`` (``list_shards``),
Parquet reads only its footer and label column through a seekable fsspec file
(``open_shard``), and a tar shard's header scan streams it the same way once, its index then
being persisted under the URL, size and token (``cache_builder.tar_source``). The first row
read from a remote shard makes it local (``ImageSource.local_path``): fsspec's ``filecache``
copies it whole into ``$COMPRESS_HOME/shard-cache`` (reused by later processes; a copy whose
remote file changed since is fetched again), once per process; every read is then a local read
by offset. A split with remote shards logs their count, total size and that directory once,
when it is listed. The copy is made under an exclusive ``flock`` of ``<cache dir>/.lock``: the
DataLoader workers and ranks of a host that want a shard at the same time download it once
(fsspec writes the copy under its final name and rewrites one metadata file shared by all
shards without a lock of its own, so concurrent copies, even of different shards, could
otherwise truncate a file another process reads, or forget a copy).

``ImageSource`` is what an ``ImageList`` of sharded rows reads through: ``read(path)`` gives
the encoded bytes of a row, ``name(path)`` the name an error gives (``LOCATION/shard/key``),
``identities(paths)`` the per-row ``(size, position)`` pairs stage 2 compares with those
recorded at build time, ``fingerprint()`` the shard listing (names, sizes, member counts),
``local_path(shard)`` the local file a shard's rows are read from. A source is picklable
(DataLoader workers): open files are reopened per process, local copies already made are kept.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from storage.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
SHARD_KINDS = {".tar": "tar", ".parquet": "parquet"}
SPLIT_NAMES = ("train", "val")
CACHE_DIR = "shard-cache"  # under $COMPRESS_HOME: local copies of remote shards
CACHE_LOCK = ".lock"  # in the cache directory: held while a shard is copied (module docstring)
# info() fields that change when a remote file is rewritten (ETag, generation, times), by filesystem
TOKEN_FIELDS = ("ETag", "etag", "md5Hash", "crc32c", "generation", "version_id", "LastModified", "last_modified",
                "mtime", "modified", "updated", "created")


class ShardError(CompressError, ValueError):
    """Sharded input that cannot be listed or read (the message names the shard, and key or row)."""


@dataclass(frozen=True)
class Shard:
    """One shard: ``name`` (its last path component: the row prefix), the ``url`` it was given
    as, the ``local`` file it is read from (the file itself for a local shard; None for a remote
    one, whose local copy ``ImageSource.local_path`` makes on first read), its ``size`` in bytes
    and its change ``token`` (``mtime_ns=...`` of a local file, the ETag / modification time
    fields a remote filesystem's ``info()`` gives; None when it gives none)."""

    name: str
    url: str
    local: str | None
    size: int
    token: str | None = None


class ImageSource:
    """Rows of one split stored inside shards; subclasses read one kind (module docstring)."""

    kind = ""

    def __init__(self, location: str, shards: Sequence[Shard], cache_dir: str | None = None) -> None:
        self.location = location
        self.shards = tuple(shards)
        self.by_name = {s.name: s for s in self.shards}
        self.cache_dir = cache_dir or default_cache_dir()  # fixed here, so every worker uses the same one
        self._local: dict[str, str] = {}  # remote shard name -> its local copy, made in this process

    def local_path(self, shard: Shard) -> str:
        """The local file ``shard`` is read from: a local shard itself; for a remote one, its copy
        in ``cache_dir``, made (or found) on the first call of the process (module docstring).
        ``ShardError`` names the shard when it cannot be copied or changed since it was listed."""
        if shard.local is not None:
            return shard.local
        path = self._local.get(shard.name)
        if path is None:
            path = self._local[shard.name] = local_copy(shard, self.cache_dir)
        return path

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


def default_cache_dir() -> str:
    """``$COMPRESS_HOME/shard-cache``: where remote shards are copied."""
    from cache_builder.home import compress_home

    return os.path.join(compress_home(), CACHE_DIR)


def change_token(info: dict[str, Any]) -> str | None:
    """The ``TOKEN_FIELDS`` of an fsspec ``info()`` that it has, as one string (None: none)."""
    parts = [f"{k}={info[k]}" for k in TOKEN_FIELDS if info.get(k) not in (None, "")]
    return ";".join(parts) or None


def list_shards(urls: Sequence[str], cache_dir: str | None = None) -> list[Shard]:
    """The ``Shard`` of each of ``urls`` (names must be unique), reading no shard data: a local
    path or ``file://`` URL is stat'ed; another protocol's ``info()`` gives size and token. When
    there are remote shards, one warning states their count, total size and ``cache_dir``
    (default ``$COMPRESS_HOME/shard-cache``), where they are copied as they are first read."""
    names = [u.rstrip("/").rsplit("/", 1)[-1] for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ShardError(f"shard names must be unique within a split (rows are named <shard>/<key>): {', '.join(dupes[:3])}")
    out: list[Shard] = []
    for name, url in zip(names, urls):
        fs, path = _fs(url)
        if "file" in fs.protocol or "local" in fs.protocol:
            if not os.path.isfile(path):
                raise ShardError(f"shard {url}: no such file")
            st = os.stat(path)
            out.append(Shard(name, url, path, st.st_size, f"mtime_ns={st.st_mtime_ns}"))
            continue
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise ShardError(f"shard {url}: no such file") from None
        if info.get("type", "file") != "file":
            raise ShardError(f"shard {url}: not a file ({info.get('type')})")
        out.append(Shard(name, url, None, int(info["size"]), change_token(info)))
    remote = [s for s in out if s.local is None]
    if remote:
        log.warning("%d remote shards (%.3f GB) are copied into %s as they are first read; delete that directory to free "
                    "the disk", len(remote), sum(s.size for s in remote) / 1e9, cache_dir or default_cache_dir())
    return out


def open_shard(shard: Shard) -> BinaryIO:
    """A seekable binary file reading ``shard`` where it is (a remote one through fsspec, in
    blocks, without a copy): what listing reads (tar headers, Parquet footers) goes through it."""
    if shard.local is not None:
        return open(shard.local, "rb")
    fs, path = _fs(shard.url)
    return fs.open(path, "rb")


def local_copy(shard: Shard, cache_dir: str) -> str:
    """The local copy of remote ``shard`` in ``cache_dir``, through fsspec's ``filecache``
    (``check_files``: a copy of a remote file that changed since is fetched again; metadata
    reread every call, so another process's copy is seen), under the directory's lock (module
    docstring). ``ShardError`` when the copy fails or its size is not the listed one."""
    import fsspec

    from storage.file_lock import exclusive_lock

    options = {"cache_storage": cache_dir, "check_files": True, "cache_check": 1e-9}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with exclusive_lock(os.path.join(cache_dir, CACHE_LOCK)):
            local = str(fsspec.open_local(f"filecache::{shard.url}", filecache=options))
        size = os.path.getsize(local)
    except (OSError, ValueError) as e:
        raise ShardError(f"shard {shard.url}: cannot copy it into {cache_dir} ({type(e).__name__}: {e})") from None
    if size != shard.size:
        raise ShardError(f"shard {shard.url}: {size} bytes now, {shard.size} when the split was listed; it changed "
                         "since: list the split again")
    return local


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
    cache = default_cache_dir()
    for split, (location, urls) in splits.items():
        shards = list_shards(urls, cache)
        source: ImageSource
        if _kind(urls, location) == "tar":
            from cache_builder.tar_source import TarSource

            source = TarSource(location, shards, cache_dir=cache)
        else:
            from cache_builder.parquet_source import ParquetSource

            source = ParquetSource(location, shards, image_column, label_column, cache_dir=cache)
        paths, labels = source.paths_and_labels()
        if not paths:
            raise ShardError(f"--data {location}: the shards hold no images")
        classes = tuple(str(c) for c in range(max(labels) + 1))
        out[split] = ImageList(location, tuple(paths), tuple(labels), classes, source=source)
    return out
