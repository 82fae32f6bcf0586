"""Fashion-MNIST for the demo: the bundled balanced subset, or the full set when installed.

Fashion-MNIST (Zalando Research, MIT licence; see ``demo/data/LICENSE-fashion-mnist``) is
60k train / 10k test 28x28 grey product photos in 10 classes. The repository bundles a
balanced subset (``demo/data/fashion_mnist_subset.npz``: 1,000 train and 200 test images per
class) so the demo needs no network and no root. The full set is used when the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or a torchvision
``FashionMNIST/raw`` folder is found.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

from storage.errors import CompressError, UsageError


class DemoDataError(CompressError, ValueError):
    """A Fashion-MNIST file is not a complete uint8 IDX file."""

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
SUBSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fashion_mnist_subset.npz")
FULL_SET_DIRS = ("/usr/share/datasets/fashion-mnist",)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte", "val_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Split:
    """``images`` (N, 28, 28) uint8, ``labels`` (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): 2 zero bytes, a dtype byte (0x08 = uint8), the
    number of dims, big-endian uint32 sizes, then the data. Errors name the file."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DemoDataError(f"{path}: not an uint8 IDX file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DemoDataError(f"{path}: header says {dims} = {int(np.prod(dims))} values, file holds {data.size} (truncated?)")
    return data.reshape(dims)


def find_full_set(extra_dirs: tuple[str, ...] = ()) -> str | None:
    """A directory holding the four IDX files (``.gz`` or not), or None."""
    candidates = list(extra_dirs) + list(FULL_SET_DIRS)
    home = os.environ.get("TORCH_HOME") or os.path.expanduser("~/.cache")
    candidates.append(os.path.join(home, "FashionMNIST", "raw"))
    for d in candidates:
        if all(_idx_path(d, name) for name in IDX_FILES.values()):
            return d
    return None


def _idx_path(directory: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def load_full_set(directory: str) -> tuple[Split, Split]:
    """All 60k train and 10k test images from IDX files."""
    arrays = {k: read_idx(_idx_path(directory, v) or "") for k, v in IDX_FILES.items()}
    return (
        Split(arrays["train_images"], arrays["train_labels"].astype(np.int64)),
        Split(arrays["val_images"], arrays["val_labels"].astype(np.int64)),
    )


def load_subset(path: str = SUBSET_PATH) -> tuple[Split, Split]:
    """The bundled balanced subset (10k train / 2k val)."""
    with np.load(path) as z:
        return Split(z["train_images"], z["train_labels"].astype(np.int64)), Split(z["val_images"], z["val_labels"].astype(np.int64))


def balanced_subset(split: Split, per_class: int, seed: int) -> Split:
    """``per_class`` images of each class, seeded, in a fixed (class-interleaved) order."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(split.labels):
        members = np.flatnonzero(split.labels == c)
        if len(members) < per_class:
            raise UsageError(f"--train-per-class/--val-per-class {per_class}: class {c} has {len(members)} images, {per_class} requested")
        picks.append(np.sort(rng.choice(members, per_class, replace=False)))
    order = np.sort(np.concatenate(picks))
    return Split(split.images[order], split.labels[order])
