"""Deterministic image listings: which images a split holds, in which order, with which label.

Shared by stage 1 (the cache records this order) and stage 2 (which must find the same
images in the same order). Three inputs are understood:

* an ImageFolder-style root with split subfolders: ``DATA/train/<class>/...``, ``DATA/val/<class>/...``;
* a single class-folder root: ``DATA/<class>/...`` (one split, ``train``);
* a text file list: one ``relative/path[ label]`` per line (``#`` comments), relative to ``root``;
* sharded input, WebDataset tar shards or Parquet files, local or behind an fsspec URL
  (``cache_builder.image_source``): its rows are ``shard/key`` or ``file.parquet#row`` and are
  read through the list's ``source``.

Every reader goes through the list: ``ImageList.decode(i)`` (the one decoder,
``cache_builder.image_decode``), ``read_bytes(i)`` (the encoded file), ``name(i)`` (what an
error names: the file's path, or ``LOCATION/shard/key``).

Order is fixed: classes sorted by name, files sorted by relative POSIX path within the split.

Symbolic links are followed, safely. A directory is walked at most once per split (a set of
real paths): a directory symlink that leads back into the split folder (a loop such as
``ln -s .. train/bag/loop``, or a second name for a folder that is listed at its real place)
or to a folder already walked is skipped with a logged warning, so no image is listed twice or
under another class. Symlinks that lead outside the folder (to a file or a folder) are
followed and recorded in ``ImageList.outside_links``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.errors import CompressError

if TYPE_CHECKING:
    import numpy as np

    from cache_builder.image_decode import DraftFn
    from cache_builder.image_source import ImageSource

# Per-row content identity of the image files, recorded by stage 1 as a store column and checked
# by stage 2 (distill.targets): the file's size in bytes and its mtime in nanoseconds.
IDENTITY_COLUMN = "file_identity"
IDENTITY_COLUMN_SPEC = ((2,), "int64")  # storage.create_store(columns={IDENTITY_COLUMN: IDENTITY_COLUMN_SPEC})
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val")


log = logging.getLogger(__name__)


class ImageListError(CompressError, ValueError):
    """A data root or file list that cannot be turned into an image listing."""


@dataclass(frozen=True)
class ImageList:
    """The images of one split.

    Attributes:
        root: directory the relative paths are resolved against.
        paths: relative POSIX paths, in dataset order (row ``i`` of a cache is image ``i``).
        labels: class index per image, -1 where unknown.
        classes: class names, index = label.
        outside_links: relative paths of the symlinks (to files or folders) that lead outside
            ``root``: followed, and recorded here.
        skipped_links: relative paths of the directory symlinks skipped as loops or duplicates.
        source: for sharded input, the tar or Parquet source the rows are read from (``root``
            is then the split's location); None for files under ``root``.
    """

    root: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...] = ()
    outside_links: tuple[str, ...] = field(default=(), compare=False)
    skipped_links: tuple[str, ...] = field(default=(), compare=False)
    source: ImageSource | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> str:
        """The file of row ``i`` (for sharded input: its name, ``LOCATION/shard/key``)."""
        if self.source is not None:
            return self.source.name(self.paths[i])
        return os.path.join(self.root, *self.paths[i].split("/"))

    def name(self, i: int) -> str:
        """What messages call row ``i``: its file, or ``LOCATION/shard/key``."""
        return self.absolute(i)

    def read_bytes(self, i: int) -> bytes:
        """The encoded image of row ``i``; ``OSError`` (``BadImageError``/``ShardError``) names it."""
        if self.source is not None:
            return self.source.read(self.paths[i])
        from cache_builder.image_decode import BadImageError

        try:
            with open(self.absolute(i), "rb") as f:
                return f.read()
        except OSError as e:
            raise BadImageError(f"{self.absolute(i)}: cannot read file ({e.strerror or e})") from None

    def decode(self, i: int, draft: DraftFn | None = None) -> Any:
        """Row ``i`` as an RGB PIL image (``image_decode.decode_image``; ``draft`` as there)."""
        from cache_builder.image_decode import decode_bytes, decode_image

        if self.source is not None:
            return decode_bytes(self.read_bytes(i), self.name(i), draft)
        return decode_image(self.absolute(i), draft)

    def subset(self, rows: Sequence[int]) -> ImageList:
        """The rows ``rows`` (in that order) of this list, reading from the same place."""
        return ImageList(self.root, tuple(self.paths[i] for i in rows), tuple(self.labels[i] for i in rows), self.classes,
                         source=self.source)

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the ordered (path, label) pairs: equal iff same images, same order;
        for sharded input also of the shard listing (names, sizes, member counts)."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            h.update(f"{p}\t{y}\n".encode())
        if self.source is not None:
            h.update(f"source {self.source.fingerprint()}".encode())
        return "sha256:" + h.hexdigest()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Walker:
    """Lists the images under the class folders of one scan root, following directory symlinks
    safely (module docstring, "Symbolic links"): ``visited`` holds the real path of every
    directory walked, so no directory is listed twice and no loop is followed."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.visited: set[str] = set()
        self.skipped: list[str] = []
        self.outside: list[str] = []

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def _enter(self, path: str, is_link: bool) -> bool:
        """Whether to walk directory ``path``; a skipped one is logged and recorded."""
        real = os.path.realpath(path)
        if real in self.visited or (is_link and _inside(real, self.real_root)):
            loop = _inside(os.path.realpath(os.path.dirname(path)), real)
            why = "a symlink loop" if loop else "a second name for a folder listed once already, under its real or first name"
            log.warning("%s: skipping %s -> %s (%s): its images are listed once", self.root, self._rel(path), real, why)
            self.skipped.append(self._rel(path))
            return False
        if is_link:
            self.outside.append(self._rel(path))
        self.visited.add(real)
        return True

    def walk(self, directory: str) -> list[str]:
        """Relative POSIX paths of the images under ``directory`` (sorted)."""
        found: list[str] = []
        top_is_link = os.path.abspath(directory) != self.root and os.path.islink(directory)  # the root itself may be a link
        if not self._enter(directory, top_is_link):
            return found
        stack = [directory]
        while stack:
            current = stack.pop()
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as e:
                raise ImageListError(f"{current}: cannot list the folder ({e.strerror or e})") from None
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows symlinks
                    if self._enter(entry.path, entry.is_symlink()):
                        subdirs.append(entry.path)
                elif _is_image(entry.name):  # a file, or a broken link (reported when decoded)
                    if entry.is_symlink() and not _inside(os.path.realpath(entry.path), self.real_root):
                        self.outside.append(self._rel(entry.path))
                    found.append(self._rel(entry.path))
            stack.extend(reversed(subdirs))
        return sorted(found)


def _stat_rows(images: ImageList, rows: range) -> list[tuple[int, int]]:
    out = []
    for i in rows:
        try:
            st = os.stat(images.absolute(i))
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return out


def file_identities(images: ImageList, start: int = 0, stop: int | None = None) -> np.ndarray:
    """int64 ``(R, 2)``: ``(size in bytes, mtime in ns)`` of images ``start:stop`` (``(-1, -1)`` for a
    file that cannot be stat'ed): the ``IDENTITY_COLUMN`` rows of a store. One ``stat`` per file
    (a few seconds for a million images; threads overlap them on network file systems).
    Sharded input: ``(encoded size, position in the shard)`` from the source's index."""
    import numpy as np

    stop = len(images) if stop is None else stop
    if images.source is not None:
        return images.source.identities(images.paths[start:stop])
    chunk = 4096
    ranges = [range(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]
    if len(ranges) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            parts = list(pool.map(lambda r: _stat_rows(images, r), ranges))
    else:
        parts = [_stat_rows(images, r) for r in ranges]
    rows = [x for part in parts for x in part]
    return np.array(rows, dtype=np.int64).reshape(len(rows), 2)


def first_changed(images: ImageList, recorded: np.ndarray) -> tuple[int, tuple[int, int], tuple[int, int]] | None:
    """The first row whose file's current ``(size, mtime_ns)`` differs from ``recorded`` (``(N, 2)``
    from ``file_identities`` at build time), as ``(row, recorded, current)``; None when all agree."""
    import numpy as np

    if recorded.shape != (len(images), 2):
        raise ValueError(f"recorded identities have shape {recorded.shape}, expected ({len(images)}, 2)")
    current = file_identities(images)
    diff = np.flatnonzero((current != recorded).any(axis=1))
    if not len(diff):
        return None
    row = int(diff[0])
    return row, (int(recorded[row, 0]), int(recorded[row, 1])), (int(current[row, 0]), int(current[row, 1]))


def content_fingerprint(images: ImageList) -> str:
    """``sha256:<hex>`` of the ordered (path, label, size, mtime_ns) rows: changes when any file
    is replaced, touched, added, removed or relabelled."""
    h = hashlib.sha256()
    for p, y, (size, mtime) in zip(images.paths, images.labels, file_identities(images).tolist()):
        h.update(f"{p}\t{y}\t{size}\t{mtime}\n".encode())
    return "sha256:" + h.hexdigest()


def class_folders(root: str) -> tuple[str, ...]:
    """The class folders of ``root``: its sub-directories not starting with ``.``, sorted by name
    (label ``i`` is the ``i``-th); a directory listing, no walk."""
    return tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")))


def scan_image_folder(root: str) -> ImageList:
    """List a class-folder root (``root/<class>/**/image``); images directly in ``root`` get label -1
    when there are no class folders. Raises ``ImageListError`` when there is no image at all."""
    if not os.path.isdir(root):
        raise ImageListError(f"{root}: not a directory")
    classes = class_folders(root)
    walker = _Walker(root)
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = walker.walk(os.path.join(root, cls))
        paths += found
        labels += [label] * len(found)
    if not classes:
        paths = walker.walk(root)
        labels = [-1] * len(paths)
    if not paths:
        raise ImageListError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if walker.outside:
        log.info("%s: %d symlinks point outside the folder (followed; listed in ImageList.outside_links)", root, len(walker.outside))
    return ImageList(os.path.abspath(root), tuple(paths), tuple(labels), tuple(classes),
                     outside_links=tuple(walker.outside), skipped_links=tuple(walker.skipped))


def read_file_list(list_file: str, root: str | None = None) -> ImageList:
    """Parse ``relative/path[ label]`` lines; ``root`` defaults to the list file's directory.
    Errors name the file and line."""
    base = os.path.abspath(root or os.path.dirname(os.path.abspath(list_file)))
    paths: list[str] = []
    labels: list[int] = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            label = -1
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                line, label = parts[0], int(parts[1])
            if label < -1:
                raise ImageListError(f"{list_file}:{lineno}: label {label} is invalid (use -1 for unknown)")
            paths.append(line.replace(os.sep, "/"))
            labels.append(label)
    if not paths:
        raise ImageListError(f"{list_file}: the file list holds no image paths")
    n_classes = max(labels) + 1
    return ImageList(base, tuple(paths), tuple(labels), tuple(str(c) for c in range(n_classes)))


def discover_splits(data: str, root: str | None = None, image_column: str | None = None,
                    label_column: str | None = None) -> dict[str, ImageList]:
    """All splits of ``data``: ``{"train": ..., "val": ...}`` for a root with split folders (or
    sharded input with ``train``/``val`` sub-locations), ``{"train": ...}`` for a single
    class-folder root, a file list, or shards (``cache_builder.image_source``;
    ``image_column``/``label_column`` for Parquet)."""
    from cache_builder.image_source import open_sharded

    sharded = open_sharded(data, image_column, label_column)
    if sharded is not None:
        return sharded
    if os.path.isfile(data):
        return {"train": read_file_list(data, root)}
    if not os.path.isdir(data):
        raise ImageListError(f"{data}: no such data directory or file list")
    present = [s for s in SPLIT_NAMES if os.path.isdir(os.path.join(data, s))]
    if present:
        splits = {s: scan_image_folder(os.path.join(data, s)) for s in present}
        if "train" in splits and "val" in splits and splits["train"].classes != splits["val"].classes:
            raise ImageListError(
                f"{data}: train and val have different class folders "
                f"({len(splits['train'].classes)} vs {len(splits['val'].classes)}); labels would not match"
            )
        return splits
    return {"train": scan_image_folder(data)}
