"""A deterministic listing of an ImageFolder-style dataset: ``ROOT/<split>/<class>/<image>``.

Classes are the sorted sub-folders of ``ROOT/train``; images are sorted by relative path.
(To be replaced by the shared lister of ``cache_builder`` once it lands.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageListing:
    """The images of one split.

    Attributes:
        root: dataset root. split: ``"train"`` or ``"val"``.
        classes: class names; label ``i`` is ``classes[i]``.
        paths: image paths relative to ``root`` (``split/class/file``), sorted.
        labels: label of each path.
    """

    root: str
    split: str
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def fingerprint(self) -> str:
        """sha256 over the classes and every (relative path, size in bytes)."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        for p in self.paths:
            h.update(f"\n{p}:{os.path.getsize(os.path.join(self.root, p))}".encode())
        return h.hexdigest()


def list_classes(root: str) -> tuple[str, ...]:
    """Sorted class folders of ``root/train``. Raises ValueError if there are none."""
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise ValueError(f"{root}: expected an ImageFolder-style root with train/ and val/ class folders; no {train}")
    classes = tuple(sorted(e.name for e in os.scandir(train) if e.is_dir()))
    if not classes:
        raise ValueError(f"{train}: no class folders")
    return classes


def list_split(root: str, split: str, classes: tuple[str, ...] | None = None) -> ImageListing:
    """List ``root/split``; labels follow ``classes`` (default: those of ``train``).

    Raises:
        ValueError: missing split folder, a class folder unknown to train, or no images.
    """
    classes = classes or list_classes(root)
    base = os.path.join(root, split)
    if not os.path.isdir(base):
        raise ValueError(f"{root}: no {split}/ folder")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for entry in sorted(e.name for e in os.scandir(base) if e.is_dir()):
        if entry not in index:
            raise ValueError(f"{base}/{entry}: class folder not present in train/ (known: {len(classes)} classes)")
        for dirpath, _, files in os.walk(os.path.join(base, entry)):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(dirpath, f), root))
                    labels.append(index[entry])
    if not paths:
        raise ValueError(f"{base}: the split is empty (no images with extensions {', '.join(IMAGE_EXTENSIONS)})")
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return ImageListing(root, split, classes, tuple(paths[i] for i in order), tuple(labels[i] for i in order))
