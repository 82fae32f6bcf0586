"""WebDataset tar shards as an ``ImageSource``: an offset index per shard, members read by offset.

A shard is an uncompressed tar whose members are grouped into samples by key: the member
``dir/abc.jpg`` has key ``dir/abc`` and extension ``jpg`` (WebDataset's convention: the key is
the path up to the first dot of the file name). A sample's image is its first member with an
image extension (``IMAGE_EXTENSIONS``), its label the integer text of an optional ``.cls``
member (-1 without one). Samples without an image are skipped (counted in a logged message).
Rows are ``<shard name>/<key>``, shards in listing order, samples in tar order.

The index (``TarIndex``): one scan of the shard's headers (``cache_builder.tar_headers``; no member
data is read except the small ``.cls`` texts) gives, per sample, the image member's data offset
and size and the label. A remote shard is scanned where it is, through a seekable fsspec file
(``image_source.open_shard``; fsspec reads ahead in blocks, so for typical sample sizes the
scan transfers about the shard's size, but writes nothing to the shard cache). The index is
persisted as JSON in ``$COMPRESS_HOME/tar-index/``, keyed by the shard's local path or remote
URL, together with its size and change token (``Shard.token``: a local file's mtime, a remote
file's ETag / modification time), and reused while they are unchanged, so a shard is scanned
once, not per listing, process or sample; a remote shard whose filesystem gives no token is
scanned at every listing. Reading a row makes a remote shard local (``local_path``), then is one
``seek`` + ``read`` of the member's bytes in a file handle kept open per process.

``wids`` (webdataset's indexed tar reader) was considered: it rebuilds its index in memory each
time a process opens a shard, wants a shard-list descriptor with the sample count of every
shard up front, and decodes samples itself; what is needed here is a persisted index, the
sample counts found by the scan, and raw bytes for the one decoder (``image_decode``), so this
small reader is written instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_builder.image_source import ImageSource, Shard, ShardError, open_shard
from cache_builder.tar_headers import TarHeaderError, tar_members
from storage.atomic import write_json_atomic

log = logging.getLogger(__name__)
INDEX_FORMAT = "compress-tar-index/2"
INDEX_DIR = "tar-index"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


@dataclass(frozen=True)
class TarIndex:
    """The samples of one shard: ``keys`` (in tar order), the image member's data ``offsets`` and
    ``sizes`` (bytes), ``labels`` (-1 unknown) and ``skipped`` (samples without an image)."""

    keys: tuple[str, ...]
    offsets: np.ndarray
    sizes: np.ndarray
    labels: tuple[int, ...]
    skipped: int = 0


def split_member(name: str) -> tuple[str, str]:
    """``dir/abc.x.jpg`` -> ``("dir/abc", "x.jpg")`` (WebDataset: key up to the first dot of the basename)."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def scan_tar(shard: Shard) -> TarIndex:
    """Index ``shard`` by one pass over its headers; ``ShardError`` names the shard (and key)."""
    keys: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    skipped = 0
    current: dict[str, Any] | None = None

    def close(sample: dict[str, Any] | None) -> None:
        nonlocal skipped
        if sample is None:
            return
        if sample["image"] is None:
            skipped += 1
            return
        keys.append(sample["key"])
        offsets.append(sample["image"][0])
        sizes.append(sample["image"][1])
        labels.append(sample["label"])

    try:
        with open_shard(shard) as stream:
            for name, offset, size in tar_members(stream):
                key, ext = split_member(name)
                if current is None or current["key"] != key:
                    close(current)
                    current = {"key": key, "image": None, "label": -1}
                if ext in IMAGE_EXTENSIONS and current["image"] is None:
                    current["image"] = (offset, size)
                elif ext == "cls":
                    stream.seek(offset)
                    text = stream.read(size).decode("utf-8", "replace").strip()
                    if not text.lstrip("-").isdigit() or int(text) < -1:
                        raise ShardError(f"{shard.url}: sample {key!r}: .cls member holds {text[:20]!r}, not a class index")
                    current["label"] = int(text)
            close(current)
    except (TarHeaderError, OSError, EOFError) as e:
        where = f" after sample {keys[-1]!r}" if keys else ""
        raise ShardError(f"{shard.url}: not a readable tar shard{where} ({type(e).__name__}: {e})") from None
    if skipped:
        log.info("%s: %d samples without an image member skipped", shard.url, skipped)
    return TarIndex(tuple(keys), np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), tuple(labels), skipped)


def index_key(shard: Shard) -> str:
    """What a saved index belongs to: a local shard's absolute path, a remote shard's URL."""
    return os.path.abspath(shard.local) if shard.local is not None else shard.url


def index_path(shard: Shard, index_dir: str | None = None) -> str:
    from cache_builder.home import compress_home

    digest = hashlib.sha256(index_key(shard).encode()).hexdigest()[:32]
    return os.path.join(index_dir or os.path.join(compress_home(), INDEX_DIR), f"{digest}.json")


def load_index(shard: Shard, index_dir: str | None = None) -> TarIndex:
    """The persisted index of ``shard`` if it was saved for the same key, size and change token
    (not None), else a new scan (saved)."""
    path = index_path(shard, index_dir)
    key = index_key(shard)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if (shard.token is not None and saved.get("format") == INDEX_FORMAT and saved["shard"] == key
                and saved["size"] == shard.size and saved["token"] == shard.token):
            return TarIndex(tuple(saved["keys"]), np.asarray(saved["offsets"], np.int64), np.asarray(saved["sizes"], np.int64),
                            tuple(saved["labels"]), int(saved["skipped"]))
    except (OSError, ValueError, KeyError):
        pass  # no index yet, or an unreadable one: scan
    index = scan_tar(shard)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, {"format": INDEX_FORMAT, "shard": key, "size": shard.size, "token": shard.token,
                                 "keys": list(index.keys), "offsets": index.offsets.tolist(), "sizes": index.sizes.tolist(),
                                 "labels": list(index.labels), "skipped": index.skipped})
    except OSError as e:
        log.warning("%s: cannot save the tar index (%s); it will be rebuilt next time", path, e)
    return index


class TarSource(ImageSource):
    """Rows of WebDataset tar shards (module docstring); picklable (file handles reopen per process)."""

    kind = "tar"

    def __init__(self, location: str, shards: Sequence[Shard], index_dir: str | None = None,
                 cache_dir: str | None = None, indexes: dict[str, TarIndex] | None = None) -> None:
        """``indexes``: the shards' indexes when the caller has them (a pre-resized copy), else each
        shard's persisted index or a scan (``load_index``)."""
        super().__init__(location, shards, cache_dir)
        self.indexes = indexes if indexes is not None else {s.name: load_index(s, index_dir) for s in self.shards}
        self._handles: dict[str, Any] = {}

    @functools.cached_property
    def rows(self) -> dict[str, dict[str, int]]:
        """``{shard name: {key: row in the shard}}``, built on the first row lookup (``_locate``)."""
        return {s.name: {k: i for i, k in enumerate(self.indexes[s.name].keys)} for s in self.shards}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def paths_and_labels(self) -> tuple[list[str], list[int]]:
        paths: list[str] = []
        labels: list[int] = []
        for s in self.shards:
            index = self.indexes[s.name]
            paths += [f"{s.name}/{k}" for k in index.keys]
            labels += list(index.labels)
        return paths, labels

    def _locate(self, path: str) -> tuple[Shard, int]:
        name, _, key = path.partition("/")
        shard = self.shard(name, path)
        row = self.rows[name].get(key)
        if row is None:
            raise ShardError(f"{self.name(path)}: shard {shard.url} has no sample {key!r}")
        return shard, row

    def read(self, path: str) -> bytes:
        shard, row = self._locate(path)
        index = self.indexes[shard.name]
        offset, size = int(index.offsets[row]), int(index.sizes[row])
        try:
            f = self._handles.get(shard.name)
            if f is None:
                f = self._handles[shard.name] = open(self.local_path(shard), "rb")
            f.seek(offset)
            data = f.read(size)
        except OSError as e:
            raise ShardError(f"{self.name(path)}: cannot read the member of shard {shard.url} ({e})") from None
        if len(data) != size:
            raise ShardError(f"{self.name(path)}: shard {shard.url} is truncated ({len(data)} of {size} bytes at offset {offset}); "
                             "was it changed since it was indexed?")
        return data

    def identities(self, paths: Sequence[str]) -> np.ndarray:
        out = np.empty((len(paths), 2), np.int64)
        for i, path in enumerate(paths):
            shard, row = self._locate(path)
            index = self.indexes[shard.name]
            out[i] = (index.sizes[row], index.offsets[row])
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"tar")
        for s in self.shards:
            h.update(f"\n{s.name}\t{s.size}\t{len(self.indexes[s.name].keys)}".encode())
        return "sha256:" + h.hexdigest()
