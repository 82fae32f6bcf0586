"""Small feature stores for tests."""

from __future__ import annotations

import os

import numpy as np

from storage import create_store


def write_store(path: str, features: np.ndarray, labels: np.ndarray | None = None, *, shard_size: int = 64,
                finalize: bool = True, paths: list[str] | None = None, provenance: dict | None = None) -> None:
    writer = create_store(path, features.shape[0], features.shape[1], "float32", shard_size=shard_size)
    for shard in writer.pending_shards():
        start, stop = writer.shard_rows(shard)
        writer.write_shard(shard, features[start:stop].astype(np.float32),
                           labels=None if labels is None else labels[start:stop],
                           paths=None if paths is None else paths[start:stop])
        if not finalize:
            return
    writer.finalize(provenance={"test": True} if provenance is None else provenance)


def write_feature_dir(root: str, seed: int = 0, n_train: int = 120, n_val: int = 30, d: int = 8, classes: int = 4) -> str:
    """Separable blobs: class c centred on axis c."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("val", n_val)):
        labels = rng.integers(0, classes, n)
        x = np.eye(classes, d, dtype=np.float32)[labels] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
        write_store(os.path.join(root, name), x, labels)
    return root
