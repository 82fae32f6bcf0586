"""Cached teacher embeddings for training: loaded once, gathered by dataset row per batch.

The cache's row order must be the dataset's order; ``load_targets`` checks the relative
paths recorded in the store against the listing of ``--data`` and refuses any mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cache_builder.image_list import ImageList, discover_splits
from storage import Store, open_store
from storage.cache_layout import split_store_paths


class CacheMismatchError(ValueError):
    """The cache does not describe the images of ``--data`` in the same order."""


@dataclass
class TeacherTargets:
    """``embeddings`` ``(N, D_t)`` (float16 or float32, on ``device``); row i = image i of ``images``."""

    store: Store
    images: ImageList
    embeddings: torch.Tensor

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """``(B,)`` dataset rows -> ``(B, D_t)`` float32 teacher embeddings."""
        return self.embeddings.index_select(0, rows.to(self.embeddings.device)).float()


def train_store_path(cache: str) -> str:
    """The train split store of a cache directory (or the store itself)."""
    paths = split_store_paths(cache)
    train = [p for p in paths if p.rstrip("/").endswith("/train")]
    return train[0] if train else paths[0]


def load_targets(cache: str, data: str, device: torch.device, shared: bool = False) -> TeacherTargets:
    """Open the train store of ``cache``, check it matches ``data``, load all rows once.

    Args:
        shared: memory-map one node-wide copy (for several DDP ranks on one node) instead of
            a private copy per process.
    """
    store = open_store(train_store_path(cache))
    store.require_complete("distillation")
    if store.views is not None:
        raise ValueError(f"{store.path}: multi-view caches ({store.views} views) are not supported by compress-distill yet")
    splits = discover_splits(data)
    images = splits["train"]
    paths = store.load_metadata().paths
    if len(paths) != len(images) or tuple(paths) != images.paths:
        first = next((i for i, (a, b) in enumerate(zip(paths, images.paths)) if a != b), min(len(paths), len(images)))
        cached = paths[first] if first < len(paths) else "<end>"
        listed = images.paths[first] if first < len(images) else "<end>"
        raise CacheMismatchError(
            f"cache {store.path} ({len(paths)} rows) does not match the images of {data} ({len(images)} images): "
            f"row {first} is {cached!r} in the cache but {listed!r} in the data. Rebuild the cache for this data "
            "or pass the --data it was built from."
        )
    if shared:
        embeddings = store.load_shared(kind="torch")
    else:
        embeddings = store.load_all("torch", pin_memory=device.type == "cuda")
    if device.type == "cuda":
        embeddings = embeddings.to(device, non_blocking=True)
    return TeacherTargets(store, images, embeddings)
