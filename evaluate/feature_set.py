"""Evaluation inputs: the train and val features (and labels) read from a features directory.

A features directory is what ``compress-cache`` or ``compress-eval features`` writes: one store
per split, ``DIR/train`` and ``DIR/val``. Each split is read once, whole, into RAM
(``Store.load_all``), L2-normalised in float32, and checked: complete store, non-empty,
labelled, same dimension in train and val, and from the same model with val labels known to
train (``evaluate.provenance``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill.topk import l2_normalize
from evaluate.errors import FeatureError

__all__ = ["FeatureError", "FeatureSet", "FeatureSplit", "iter_store_blocks", "l2_normalize", "load_feature_set", "load_split"]


@dataclass(frozen=True)
class FeatureSplit:
    """One split of evaluation features.

    Attributes:
        features: ``(N, D)`` float32, rows L2-normalised; None for a split streamed from its
            store (``open_split(..., load=False)``).
        labels: ``(N,)`` int64 class ids (``-1`` = unknown).
        paths: N relative image paths (empty strings when the store has none).
        source: the store path it was read from.
        fingerprint: the store's content fingerprint (``Store.content_fingerprint``, ``sha256:<hex>``).
        provenance: the store manifest's provenance (which model and data computed the rows).
    """

    features: np.ndarray | None
    labels: np.ndarray
    paths: list[str]
    source: str
    fingerprint: str
    shape: tuple[int, int] = (0, 0)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.shape[0])

    @property
    def rows(self) -> np.ndarray:
        """``features`` of a split loaded into RAM, ``(N, D)`` float32.

        Raises:
            FeatureError: the split was opened for streaming (``load=False``).
        """
        if self.features is None:
            raise FeatureError(f"{self.source}: the split was opened for streaming; its rows are not in memory")
        return self.features

    @property
    def d(self) -> int:
        return int(self.shape[1])

    def describe(self) -> dict:
        """JSON-ready summary: path, size, dimension, fingerprint."""
        return {"path": self.source, "n": self.n, "d": self.d, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class FeatureSet:
    """Train and val splits of one features directory."""

    train: FeatureSplit
    val: FeatureSplit
    root: str

    @property
    def num_classes(self) -> int:
        """``1 + max label`` over both splits."""
        return int(max(self.train.labels.max(), self.val.labels.max())) + 1

    def describe(self) -> dict:
        return {"dir": self.root, "train": self.train.describe(), "val": self.val.describe()}


def load_split(path: str, *, require_labels: bool = True, load: bool = True) -> FeatureSplit:
    """Read one split store whole into RAM.

    Args:
        path: a store directory (e.g. ``cache/train``).
        require_labels: refuse a split whose labels are all ``-1``.
        load: False reads only labels and paths (``features`` is None; stream the rows with
            ``iter_store_blocks``).
    Raises:
        storage.StoreIncompleteError: the store has missing shards.
        FeatureError: empty store, multi-view store, or no labels.
    """
    from storage import open_store

    store = open_store(path)
    store.require_complete("evaluation")
    if store.n == 0:
        raise FeatureError(f"{path}: the split is empty (0 rows); nothing to evaluate")
    if store.views is not None:
        raise FeatureError(f"{path}: a multi-view store {store.shape} cannot be evaluated; expected (N, D) rows")
    features = l2_normalize(np.asarray(store.load_all())) if load else None
    meta = store.load_metadata()
    if require_labels and bool((meta.labels < 0).all()):
        raise FeatureError(
            f"{path}: no labels (every label is -1); evaluation needs a labelled split "
            "(build the cache from an ImageFolder-style dataset)"
        )
    return FeatureSplit(features, meta.labels.astype(np.int64), list(meta.paths), path, store.content_fingerprint(),
                        (store.n, store.d), dict(store.provenance))


def load_feature_set(root: str, *, load_train: bool = True) -> FeatureSet:
    """Read ``root/train`` and ``root/val``.

    Args:
        load_train: False leaves the train rows in the store (``train.features`` is None) to
            be streamed with ``iter_store_blocks``.

    Raises:
        storage.NotAStoreError: a split store is missing.
        FeatureError: a split is empty or unlabelled, or train and val dimensions differ.
        ProvenanceMismatchError: train and val come from different models, or val has labels
            train does not know.
    """
    from evaluate.provenance import check_same_model, check_val_labels
    from storage import NotAStoreError, open_store

    paths = {name: os.path.join(root, name) for name in ("train", "val")}
    for name, path in paths.items():
        if not os.path.isdir(path):
            raise NotAStoreError(f"{root}: no {name} split (expected a store at {path})")
    # before reading any rows: the two stores must come from the same model
    check_same_model(paths["train"], open_store(paths["train"]).provenance, paths["val"], open_store(paths["val"]).provenance)
    train = load_split(paths["train"], load=load_train)
    val = load_split(paths["val"])
    if train.d != val.d:
        raise FeatureError(
            f"{root}: train features have dimension {train.d} but val features have {val.d}; "
            "both splits must come from the same model"
        )
    check_val_labels(train.source, train.provenance, train.labels, val.source, val.provenance, val.labels)
    return FeatureSet(train, val, root)


def iter_store_blocks(path: str):
    """Stream a complete store shard by shard, for a kNN database that does not fit in RAM.

    Yields:
        ``(offset, rows)``: the shard's first global row and its ``(R, D)`` float32
        L2-normalised rows, in row order (the block form ``distill.topk.search`` accepts).
    Raises:
        storage.StoreIncompleteError: the store has missing shards.
        FeatureError: the store is empty.
    """
    from storage import open_store

    store = open_store(path)
    store.require_complete("streaming evaluation")
    if store.n == 0:
        raise FeatureError(f"{path}: the split is empty (0 rows); nothing to evaluate")
    for rec in store.manifest.shards:
        yield rec.start, l2_normalize(store.read_shard(rec.shard_id).embeddings)
