"""Evaluation listings of an ImageFolder-style dataset: ``ROOT/<split>/<class>/<image>``.

The images of a split, and their order, are those of ``cache_builder.image_list`` (the lister
stage 1 records in the cache and stage 2 checks against), so features, caches and runs of one
dataset always agree row by row. What evaluation adds: paths relative to ``ROOT`` (with the
split prefix, as the feature stores record them), labels that follow the classes of
``ROOT/train`` in every split (a val split may hold fewer classes, never unknown ones), and a
fingerprint that also covers file sizes.

Sharded input (tar shards or Parquet files with ``train``/``val`` sub-locations,
``cache_builder.image_source``) is listed by ``cache_builder.image_list.discover_splits``: labels
are the class indices the shards record (classes ``"0".."K-1"``), paths ``split/shard/key`` or
``split/file.parquet#row``, and the fingerprint covers the shard listing (names, sizes, member
counts). Every reader goes through ``ImageListing.images`` (``ImageList.decode``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field

from cache_builder.image_list import ImageList, ImageListError, class_folders, scan_image_folder


@dataclass(frozen=True)
class ImageListing:
    """The images of one split.

    Attributes:
        root: dataset root. split: ``"train"`` or ``"val"``.
        classes: class names; label ``i`` is ``classes[i]``.
        paths: image paths relative to ``root`` (``split/class/file``), in dataset order.
        labels: label of each path.
        images: the split's ``ImageList`` (row ``i`` = ``paths[i]``), which reads the images.
    """

    root: str
    split: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    images: ImageList | None = field(default=None, compare=False, repr=False)

    def fingerprint(self) -> str:
        """sha256 over the classes and every (relative path, size in bytes); sharded input: over
        the classes, the paths and the shard listing."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        if self.images is not None and self.images.source is not None:
            h.update("\n".join(self.paths).encode())
            h.update(f"\nsource {self.images.source.fingerprint()}".encode())
            return h.hexdigest()
        for p in self.paths:
            h.update(f"\n{p}:{os.path.getsize(os.path.join(self.root, p))}".encode())
        return h.hexdigest()

    def decode(self, row: int) -> object:
        """Row ``row`` as an RGB PIL image (errors name the file, or shard and key)."""
        if self.images is None:
            from cache_builder.image_decode import decode_image

            return decode_image(os.path.join(self.root, self.paths[row]))
        return self.images.decode(row)


@functools.lru_cache(maxsize=4)
def _sharded(root: str, image_column: str | None = None, label_column: str | None = None) -> dict[str, ImageList] | None:
    """The splits of sharded input at ``root`` (listed, and indexed, once per process), else None;
    ``image_column``/``label_column`` for Parquet (``cache_builder.parquet_source``)."""
    from cache_builder.image_source import open_sharded

    return open_sharded(root, image_column, label_column)


def list_classes(root: str, image_column: str | None = None, label_column: str | None = None) -> tuple[str, ...]:
    """Sorted class folders of ``root/train`` (sharded input: ``"0".."K-1"`` of its train labels).
    Raises ImageListError if there are none."""
    sharded = _sharded(root, image_column, label_column)
    if sharded is not None:
        if "train" not in sharded:
            raise ImageListError(f"{root}: expected train/ and val/ sub-locations of shards; no train/")
        return sharded["train"].classes
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise ImageListError(f"{root}: expected an ImageFolder-style root with train/ and val/ class folders; no {train}")
    classes = class_folders(train)
    if not classes:
        raise ImageListError(f"{train}: no class folders")
    return classes


def list_split(root: str, split: str, classes: tuple[str, ...] | None = None, image_column: str | None = None,
               label_column: str | None = None) -> ImageListing:
    """List ``root/split``; labels follow ``classes`` (default: those of ``train``).

    Raises:
        ImageListError: missing split folder, a class folder unknown to train, or no images.
    """
    classes = classes or list_classes(root, image_column, label_column)
    sharded = _sharded(root, image_column, label_column)
    if sharded is not None:
        if split not in sharded:
            raise ImageListError(f"{root}: no {split}/ sub-location of shards")
        images = sharded[split]
        if max(images.labels) >= len(classes):
            raise ImageListError(f"{images.root}: class index {max(images.labels)} not present in train/ "
                                 f"(known: {len(classes)} classes)")
        return ImageListing(root, split, classes, tuple(f"{split}/{p}" for p in images.paths), images.labels, images)
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        raise ImageListError(f"{root}: no {split}/ folder")
    index = {c: i for i, c in enumerate(classes)}
    for name in class_folders(base):
        if name not in index:
            raise ImageListError(f"{base}/{name}: class folder not present in train/ (known: {len(classes)} classes)")
    try:
        listing = scan_image_folder(base)
    except ImageListError:
        raise ImageListError(f"{base}: the split is empty (no images in its class folders)") from None
    if not listing.classes:  # images directly in the split folder, no class folders
        raise ImageListError(f"{base}: no class folders (expected {split}/<class>/<image>)")
    paths = tuple(f"{split}/{p}" for p in listing.paths)
    labels = tuple(index[listing.classes[label]] for label in listing.labels)
    return ImageListing(root, split, classes, paths, labels, listing)
