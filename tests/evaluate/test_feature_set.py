"""Loading features from stores: clear errors for everything that cannot be evaluated."""

from __future__ import annotations

import os

import numpy as np
import pytest

from evaluate.feature_set import FeatureError, load_feature_set
from storage import NotAStoreError, StoreIncompleteError
from tests.evaluate.stores import write_feature_dir, write_store


def test_loads_normalised_features_labels_and_fingerprint(tmp_path) -> None:
    root = write_feature_dir(str(tmp_path / "f"))
    fs = load_feature_set(root)
    assert fs.train.features.shape == (120, 8) and fs.val.n == 30
    np.testing.assert_allclose(np.linalg.norm(fs.train.features, axis=1), 1.0, atol=1e-5)
    assert fs.num_classes == 4 and fs.train.fingerprint.startswith("sha256:") and len(fs.train.fingerprint) == 71
    assert fs.train.fingerprint != fs.val.fingerprint
    assert load_feature_set(root).train.fingerprint == fs.train.fingerprint


def test_mismatched_train_val_dims(tmp_path) -> None:
    write_store(str(tmp_path / "train"), np.ones((10, 4)), np.zeros(10, int))
    write_store(str(tmp_path / "val"), np.ones((5, 6)), np.zeros(5, int))
    with pytest.raises(FeatureError, match="train features have dimension 4 but val features have 6"):
        load_feature_set(str(tmp_path))


def test_missing_labels(tmp_path) -> None:
    write_store(str(tmp_path / "train"), np.ones((10, 4)))  # labels default to -1
    write_store(str(tmp_path / "val"), np.ones((5, 4)), np.zeros(5, int))
    with pytest.raises(FeatureError, match=r"train: no labels \(every label is -1\)"):
        load_feature_set(str(tmp_path))


def test_empty_split(tmp_path) -> None:
    write_store(str(tmp_path / "train"), np.ones((10, 4)), np.zeros(10, int))
    write_store(str(tmp_path / "val"), np.ones((0, 4)), np.zeros(0, int))
    with pytest.raises(FeatureError, match=r"val: the split is empty \(0 rows\)"):
        load_feature_set(str(tmp_path))


def test_incomplete_store(tmp_path) -> None:
    write_store(str(tmp_path / "train"), np.ones((100, 4)), np.zeros(100, int), shard_size=10, finalize=False)
    write_store(str(tmp_path / "val"), np.ones((5, 4)), np.zeros(5, int))
    with pytest.raises(StoreIncompleteError, match="incomplete: shards 0 done of 10"):
        load_feature_set(str(tmp_path))


def test_missing_split(tmp_path) -> None:
    write_store(str(tmp_path / "train"), np.ones((10, 4)), np.zeros(10, int))
    with pytest.raises(NotAStoreError, match="no val split"):
        load_feature_set(str(tmp_path))
    assert not os.path.exists(tmp_path / "val")


def test_streamed_store_blocks_give_the_same_neighbours(tmp_path) -> None:
    from distill.topk import search
    from evaluate.feature_set import iter_store_blocks, load_split

    rng = np.random.default_rng(0)
    write_store(str(tmp_path / "db"), rng.standard_normal((100, 6)), np.zeros(100, int), shard_size=16)
    q = rng.standard_normal((9, 6)).astype(np.float32)
    whole = load_split(str(tmp_path / "db")).features
    for backend in ("torch", "faiss"):
        streamed = search(q, iter_store_blocks(str(tmp_path / "db")), 20, backend=backend, device="cpu")
        np.testing.assert_array_equal(streamed[1], search(q, whole, 20, backend=backend, device="cpu")[1])
