"""An image grid of samples from random clusters (one row per cluster), saved as PNG."""

from __future__ import annotations

import os

import numpy as np

from evaluate.errors import FeatureError
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

    from cache_builder.image_decode import decode_image

    if not any(paths):
        raise FeatureError("the train store holds no image paths; a cluster grid needs them")
    rng = np.random.default_rng(seed)
    ids = np.unique(clusters)
    chosen = rng.choice(ids, size=min(n_clusters, len(ids)), replace=False)
    grid = Image.new("RGB", (per_cluster * thumb, len(chosen) * thumb), "white")
    for r, c in enumerate(chosen):
        members = np.flatnonzero(clusters == c)
        for j, row in enumerate(rng.choice(members, size=min(per_cluster, len(members)), replace=False)):
            grid.paste(decode_image(os.path.join(data_root, paths[row])).resize((thumb, thumb)), (j * thumb, r * thumb))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: grid.save(f, format="PNG"))
    return path
