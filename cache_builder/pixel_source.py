"""Reading a pre-resized copy (``cache_builder.pixel_copy``) as an ``ImageSource``.

``--data`` may name a copy wherever images are read: ``OUT/pixels`` (its ``train/`` and ``val/``
splits) or one split's copy ``OUT/pixels/train`` (the ``train`` split, as for a folder of
shards). ``compress-distill run`` picks the copy of its cache by itself (``cache_copy``).

Rows keep the original images' paths, so a cache's path column matches the copy row by row;
a row is read by offset from the copy's tar, with the offset its shard index records (no header
scan). ``fingerprint()`` covers the tars' sha256s, so a run on the copy is a different run from
one on the original files. Opening checks that every shard is complete and that each tar has
its recorded size; ``verify_copy`` re-reads every byte (``compress-cache verify``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache_builder.image_list import ImageList
from cache_builder.image_source import Shard, ShardError
from cache_builder.pixel_copy import (
    MANIFEST_NAME,
    PIXELS_DIR,
    PIXELS_FORMAT,
    PixelCopyError,
    PixelSettings,
    complete_index,
    row_key,
    shard_name,
)
from cache_builder.tar_source import TarIndex, TarSource, scan_tar
from storage.hashing import file_sha256


def is_copy(location: str) -> bool:
    """Whether ``location`` is one split's pre-resized copy (it holds a ``pixels.json``)."""
    return "://" not in location and os.path.isfile(os.path.join(location, MANIFEST_NAME))


@dataclass
class PixelCopy:
    """The copy of one split, as written: ``manifest`` (``pixels.json``) and the index of every
    complete shard (``indexes[shard_id]``; missing shards are listed in ``missing``)."""

    location: str
    manifest: dict[str, Any]
    indexes: dict[int, dict[str, Any]] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, location: str) -> PixelCopy:
        """Read the manifest and the shard indexes; ``PixelCopyError`` for an unknown format."""
        path = os.path.join(location, MANIFEST_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise PixelCopyError(f"{path}: cannot read the pre-resized copy's manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != PIXELS_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise PixelCopyError(f"{path}: format {found!r} is not {PIXELS_FORMAT!r}; rebuild it with compress-cache build --pixels")
        copy = cls(location, manifest)
        for sid in range(len(manifest["shards"])):
            index = complete_index(location, sid)
            if index is None:
                copy.missing.append(sid)
            else:
                copy.indexes[sid] = index
        return copy

    @property
    def settings(self) -> PixelSettings:
        return PixelSettings(**self.manifest["settings"])

    @property
    def complete(self) -> bool:
        return not self.missing

    def require_complete(self) -> None:
        if self.missing:
            raise PixelCopyError(f"{self.location}: the pre-resized copy is incomplete ({len(self.missing)} of "
                                 f"{len(self.manifest['shards'])} shards missing, first {shard_name(self.missing[0])}); rerun "
                                 "compress-cache build with --pixels to finish it, or pass --data with the original images")

    def rows(self, key: str) -> np.ndarray:
        """A per-row field of the shard indexes (``source_hw``, ``hw``, ...) in row order."""
        self.require_complete()
        return np.concatenate([np.asarray(self.indexes[s][key]) for s in range(len(self.indexes))])

    def image_list(self) -> ImageList:
        """The split as an ``ImageList`` reading through a ``PixelSource`` (complete copies only)."""
        self.require_complete()
        source = PixelSource(self)
        paths, labels = source.paths_and_labels()
        return ImageList(self.location, tuple(paths), tuple(labels), tuple(self.manifest["classes"]), source=source)

    def map_crops(self, crops: np.ndarray) -> np.ndarray:
        """``(N, K, 5)`` view boxes (``transforms.CROP_COLUMNS``) in the original images' pixels ->
        the same boxes in the copy's pixels, rounded edge by edge so they stay inside each image."""
        src, dst = self.rows("source_hw").astype(np.float64), self.rows("hw").astype(np.float64)
        if len(src) != len(crops):
            raise PixelCopyError(f"{self.location}: {len(src)} rows, but the cache's crops column has {len(crops)}")
        out = crops.astype(np.float32, copy=True)
        for axis, (pos, extent) in enumerate(((0, 2), (1, 3))):  # (top, height) by the row scale, (left, width) by the column scale
            scale = (dst[:, axis] / src[:, axis])[:, None]
            first = np.rint(crops[..., pos] * scale)
            last = np.minimum(np.rint((crops[..., pos] + crops[..., extent]) * scale), dst[:, axis][:, None])
            out[..., pos], out[..., extent] = first, np.maximum(last - first, 1)
        return out

    def check_store(self, fingerprint: str | None, store_path: str) -> None:
        """Refuse a copy written for another store than the one at ``store_path`` (``fingerprint``)."""
        if self.manifest.get("store_fingerprint") != fingerprint:
            raise PixelCopyError(f"{self.location}: the pre-resized copy was written for another build of {store_path}; rebuild "
                                 "it with compress-cache build --pixels, or pass --data with the original images")


class PixelSource(TarSource):
    """Rows of a complete ``PixelCopy``, named by the original images' paths (module docstring);
    rows are found through ``located`` (``TarSource.rows``, keyed by tar key, is never built)."""

    kind = "pixels"

    def __init__(self, copy: PixelCopy) -> None:
        n = len(copy.manifest["shards"])
        shards = [Shard(shard_name(s), os.path.join(copy.location, shard_name(s)), os.path.join(copy.location, shard_name(s)),
                        int(copy.indexes[s]["bytes"])) for s in range(n)]
        indexes = {}
        for s in range(n):
            ix = copy.indexes[s]
            indexes[shard_name(s)] = TarIndex(tuple(row_key(r) for r in range(ix["start"], ix["stop"])),
                                              np.asarray(ix["offsets"], np.int64), np.asarray(ix["sizes"], np.int64),
                                              tuple(ix["labels"]))
        super().__init__(copy.location, shards, indexes=indexes)
        self.original_paths = [p for s in range(n) for p in copy.indexes[s]["paths"]]
        self.located = {p: (shard_name(s), i) for s in range(n) for i, p in enumerate(copy.indexes[s]["paths"])}
        self.sha256s = tuple(str(copy.indexes[s]["sha256"]) for s in range(n))
        self.copy = copy

    def paths_and_labels(self) -> tuple[list[str], list[int]]:
        labels = [y for s in self.shards for y in self.indexes[s.name].labels]
        return list(self.original_paths), labels

    def _locate(self, path: str) -> tuple[Shard, int]:
        try:
            name, row = self.located[path]
        except KeyError:
            raise ShardError(f"{self.location}: the pre-resized copy has no row for {path!r}") from None
        return self.by_name[name], row

    def name(self, path: str) -> str:
        shard, row = self._locate(path)
        return f"{shard.local} member {self.indexes[shard.name].keys[row]} (the copy of {path})"

    def fingerprint(self) -> str:
        h = hashlib.sha256(PIXELS_FORMAT.encode())
        for digest in self.sha256s:
            h.update(f"\n{digest}".encode())
        return "sha256:" + h.hexdigest()


def open_copies(data: str) -> dict[str, ImageList] | None:
    """``{split: ImageList}`` when ``data`` is a copy (``OUT/pixels`` or ``OUT/pixels/<split>``), else None."""
    if is_copy(data):
        return {"train": PixelCopy.open(data).image_list()}
    splits = {s: os.path.join(data, s) for s in ("train", "val")} if "://" not in data and os.path.isdir(data) else {}
    found = {s: PixelCopy.open(p).image_list() for s, p in splits.items() if is_copy(p)}
    return found or None


def copy_of(store_path: str) -> str | None:
    """The location of the pre-resized copy of the split store at ``store_path``, if it has one."""
    path = os.path.abspath(store_path).rstrip("/")
    location = os.path.join(os.path.dirname(path), PIXELS_DIR, os.path.basename(path))
    return location if is_copy(location) else None


def cache_copy(store_path: str, fingerprint: str | None) -> tuple[str | None, str]:
    """``(data, why)``: the copies root ``OUT/pixels`` when the cache of train store ``store_path``
    has a complete copy written for that store (and every other split's copy there is complete,
    since the run lists them all), else ``(None, why not)`` (empty when there is none)."""
    location = copy_of(store_path)
    if location is None:
        return None, ""
    root = os.path.dirname(location)
    try:
        copy = PixelCopy.open(location)
        copy.check_store(fingerprint, store_path)
        for split in ("train", "val"):
            if is_copy(os.path.join(root, split)):
                PixelCopy.open(os.path.join(root, split)).require_complete()
    except PixelCopyError as e:
        return None, str(e)
    return root, f"the cache's pre-resized copy ({copy.settings.describe()}); --data overrides"


def verify_copy(location: str, fingerprint: str | None = None, progress: bool = False) -> list[str]:
    """Every problem of the copy at ``location``: missing shards, a tar whose sha256 or members
    differ from its index, and (given the store's ``fingerprint``) a copy of another store."""
    try:
        copy = PixelCopy.open(location)
    except PixelCopyError as e:
        return [str(e)]
    problems = [f"{shard_name(s)}: missing or unfinished" for s in copy.missing]
    if fingerprint is not None and copy.manifest.get("store_fingerprint") != fingerprint:
        problems.append("written for another build of the store beside it (store fingerprint differs)")
    shards = sorted(copy.indexes.items())
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, desc=f"verify {location}", unit="shard")
    for sid, index in shards:
        tar = os.path.join(location, shard_name(sid))
        if file_sha256(tar) != index["sha256"]:
            problems.append(f"{shard_name(sid)} (rows {index['start']}-{index['stop'] - 1}): sha256 differs from its index")
            continue
        try:
            scanned = scan_tar(Shard(shard_name(sid), tar, tar, index["bytes"]))
        except ShardError as e:
            problems.append(str(e))
            continue
        expected = [row_key(r) for r in range(index["start"], index["stop"])]
        if list(scanned.keys) != expected or scanned.offsets.tolist() != index["offsets"] or scanned.sizes.tolist() != index["sizes"]:
            problems.append(f"{shard_name(sid)}: its members differ from its index")
    return problems

