"""Deterministic image listings: which images a split holds, in which order, with which label.

Shared by stage 1 (the cache records this order) and stage 2 (which must find the same
images in the same order). Three inputs are understood:

* an ImageFolder-style root with split subfolders: ``DATA/train/<class>/...``, ``DATA/val/<class>/...``;
* a single class-folder root: ``DATA/<class>/...`` (one split, ``train``);
* a text file list: one ``relative/path[ label]`` per line (``#`` comments), relative to ``root``.

Order is fixed: classes sorted by name, files sorted by relative POSIX path within the split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = ("train", "val")


class ImageListError(ValueError):
    """A data root or file list that cannot be turned into an image listing."""


@dataclass(frozen=True)
class ImageList:
    """The images of one split.

    Attributes:
        root: directory the relative paths are resolved against.
        paths: relative POSIX paths, in dataset order (row ``i`` of a cache is image ``i``).
        labels: class index per image, -1 where unknown.
        classes: class names, index = label.
    """

    root: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> str:
        return os.path.join(self.root, *self.paths[i].split("/"))

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the ordered (path, label) pairs: equal iff same images, same order."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            h.update(f"{p}\t{y}\n".encode())
        return "sha256:" + h.hexdigest()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(directory: str, base: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if _is_image(f):
                found.append(os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/"))
    return sorted(found)


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
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = _walk_images(os.path.join(root, cls), root)
        paths += found
        labels += [label] * len(found)
    if not classes:
        paths = _walk_images(root, root)
        labels = [-1] * len(paths)
    if not paths:
        raise ImageListError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return ImageList(os.path.abspath(root), tuple(paths), tuple(labels), tuple(classes))


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


def discover_splits(data: str, root: str | None = None) -> dict[str, ImageList]:
    """All splits of ``data``: ``{"train": ..., "val": ...}`` for a root with split folders,
    ``{"train": ...}`` for a single class-folder root or a file list."""
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
