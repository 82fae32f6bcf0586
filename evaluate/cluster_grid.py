"""An image grid of samples from random clusters (one row per cluster), saved as PNG.

Thumbnails are read from ``data_root`` joined with the store's relative paths; rows that are
not files there (tar-shard members ``split/shard.tar/key``, Parquet rows ``split/file.parquet#i``)
are read through that split's listing (``evaluate.image_folder.list_split``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from evaluate.errors import FeatureError
from evaluate.image_folder import ImageListing, list_split
from storage.atomic import write_atomic


def save_cluster_grid(
    path: str, data_root: str, paths: list[str], clusters: np.ndarray, *, n_clusters: int = 8, per_cluster: int = 8,
    seed: int = 0, thumb: int = 64,
) -> str:
    """Write a ``n_clusters x per_cluster`` grid of thumbnails.

    Args:
        data_root: directory the relative ``paths`` are under.
        paths: N relative image paths (train rows). clusters: ``(N,)`` cluster ids.
    Raises:
        FeatureError: the store holds no image paths.
    """
    from PIL import Image

    if not any(paths):
        raise FeatureError("the train store holds no image paths; a cluster grid needs them")
    read = ThumbnailReader(data_root)
    rng = np.random.default_rng(seed)
    ids = np.unique(clusters)
    chosen = rng.choice(ids, size=min(n_clusters, len(ids)), replace=False)
    grid = Image.new("RGB", (per_cluster * thumb, len(chosen) * thumb), "white")
    for r, c in enumerate(chosen):
        members = np.flatnonzero(clusters == c)
        for j, row in enumerate(rng.choice(members, size=min(per_cluster, len(members)), replace=False)):
            grid.paste(read(paths[row]).resize((thumb, thumb)), (j * thumb, r * thumb))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: grid.save(f, format="PNG"))
    return path


class ThumbnailReader:
    """``reader(path)``: the RGB PIL image at store path ``path`` under ``data_root``: a file, or
    else a row of the split listing its first component names (listed once per split)."""

    def __init__(self, data_root: str) -> None:
        self.data_root = data_root
        self.splits: dict[str, tuple[ImageListing, dict[str, int]]] = {}

    def __call__(self, path: str) -> Any:
        from cache_builder.image_decode import decode_image

        full = os.path.join(self.data_root, path)
        split = path.split("/", 1)[0]
        if os.path.isfile(full) or "/" not in path:
            return decode_image(full)
        if split not in self.splits:
            listing = list_split(self.data_root, split)
            self.splits[split] = listing, {p: i for i, p in enumerate(listing.paths)}
        listing, rows = self.splits[split]
        if path not in rows:
            raise FeatureError(f"{path}: neither a file under {self.data_root} nor an image of its {split} split")
        return listing.decode(rows[path])
