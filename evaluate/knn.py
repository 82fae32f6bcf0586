"""k-nearest-neighbour classification of val features by train features (docs/evaluate.md, "Protocols").

Protocols (they are not interchangeable; every result records its protocol):

* ``compress`` (CompRess, ISD, MSF): L2 distance, unweighted majority vote, k = 1 ("NN") and
  20. **Tie-break** (``--tie-break``): ``random`` (default, the official CompRess ``faiss_knn``
  rule): among the classes with the most votes one is drawn uniformly at random, seeded
  (``--seed``), the same on every backend; ``nearest``: the class of the nearest neighbour
  among them. Neighbours themselves are ordered by distance, then by smaller train index.
* ``dino`` (DINO, solo-learn): cosine similarity, votes weighted by ``exp(sim / T)`` with
  T = 0.07, k in {10, 20, 100, 200}; top-1 and top-5. Classes with equal weight are ranked by
  smaller class id.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from distill.knn_vote import TIE_BREAKS, majority_vote, weighted_vote
from distill.topk import resolve_backend, search
from evaluate.config import PROTOCOLS, KnnConfig
from evaluate.errors import FeatureError
from storage.errors import UsageError, unknown_name

__all__ = ["PROTOCOLS", "TIE_BREAKS", "KnnConfig", "knn", "knn_classify", "majority_vote", "score_neighbours", "weighted_vote"]


def knn_classify(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    protocol: str = "compress",
    ks: tuple[int, ...] = (),
    temperature: float = 0.07,
    tie_break: str = "random",
    seed: int = 0,
    backend: str = "auto",
    device: str | None = None,
    query_block: int | None = None,
    database_block: int = 131072,
) -> dict[str, float]:
    """kNN accuracies of ``val`` against ``train`` under a protocol.

    Args:
        train_features: ``(N, D)`` float32. train_labels: ``(N,)`` int64.
        val_features: ``(Q, D)`` float32. val_labels: ``(Q,)`` int64.
    Returns:
        ``compress``: ``{"nn": top-1 % with k=1, "knn20": ...}`` (``knn{k}`` for k > 1);
        ``dino``: ``{"knn{k}_top1": ..., "knn{k}_top5": ...}``.
    Raises:
        UsageError: an unknown protocol.
        FeatureError: mismatched dimensions or lengths, k larger than the train set.
    """
    if protocol not in PROTOCOLS:
        raise UsageError("--protocol: " + unknown_name("protocol", protocol, list(PROTOCOLS)))
    spec = PROTOCOLS[protocol]
    ks = tuple(sorted(ks)) if ks else spec["ks"]
    if train_features.shape[1] != val_features.shape[1]:
        raise FeatureError(f"train features have dimension {train_features.shape[1]}, val features {val_features.shape[1]}")
    if len(train_labels) != len(train_features) or len(val_labels) != len(val_features):
        raise FeatureError("each split needs one label per feature row")
    if max(ks) > len(train_features):
        raise FeatureError(f"k = {max(ks)} is larger than the train set ({len(train_features)} rows)")
    sims, idx = search(
        val_features, train_features, max(ks), metric=spec["metric"], backend=backend, device=device,
        query_block=query_block, database_block=database_block,
    )
    return score_neighbours(sims, idx, train_labels, val_labels, protocol=protocol, ks=ks, temperature=temperature,
                            tie_break=tie_break, seed=seed)


def score_neighbours(
    sims: np.ndarray, idx: np.ndarray, train_labels: np.ndarray, val_labels: np.ndarray, *, protocol: str,
    ks: tuple[int, ...], temperature: float = 0.07, tie_break: str = "random", seed: int = 0,
) -> dict[str, float]:
    """Accuracies from the neighbours ``(Q, max(ks))`` (scores and train indices, nearest
    first) of every val row; see ``knn_classify`` for the metric names. ``tie_break`` /
    ``seed``: the majority vote's rule (``distill.knn_vote``); every k uses the same seed."""
    spec = PROTOCOLS[protocol]
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    neighbour_labels = np.asarray(train_labels)[idx]
    metrics: dict[str, float] = {}
    for k in ks:
        if spec["vote"] == "majority":
            pred = majority_vote(neighbour_labels[:, :k], num_classes, tie_break=tie_break, seed=seed)
            metrics["nn" if k == 1 else f"knn{k}"] = 100.0 * float((pred == val_labels).mean())
        else:
            ranked = weighted_vote(neighbour_labels[:, :k], sims[:, :k], num_classes, temperature)
            metrics[f"knn{k}_top1"] = 100.0 * float((ranked[:, 0] == val_labels).mean())
            metrics[f"knn{k}_top5"] = 100.0 * float((ranked == val_labels[:, None]).any(axis=1).mean())
    return metrics


def knn(cfg: KnnConfig) -> dict:
    """Run a kNN evaluation on a features directory; returns a result record (see
    ``evaluate.results``)."""
    from evaluate.feature_set import iter_store_blocks, load_feature_set
    from evaluate.label_subset import select_train_rows
    from evaluate.results import make_result

    start = time.perf_counter()
    backend, device = resolve_backend(cfg.backend, cfg.device, k=max(cfg.resolved_ks))
    fs = load_feature_set(cfg.features, load_train=not cfg.stream)
    few = any(v is not None for v in (cfg.fraction, cfg.shots, cfg.subset_file))
    subset_record = None
    train_labels = fs.train.labels
    rows = None
    if few:
        rows, subset_record = select_train_rows(fs.train.labels, fs.train.paths, fraction=cfg.fraction, shots=cfg.shots,
                                                subset_file=cfg.subset_file, seed=cfg.seed)
        train_labels = fs.train.labels[rows]
    if cfg.stream:
        if max(cfg.resolved_ks) > len(train_labels):
            raise FeatureError(f"k = {max(cfg.resolved_ks)} is larger than the train set ({len(train_labels)} rows)")
        blocks = iter_store_blocks(fs.train.source) if rows is None else _subset_blocks(iter_store_blocks(fs.train.source), rows)
        sims, idx = search(fs.val.rows, blocks, max(cfg.resolved_ks),
                           metric=PROTOCOLS[cfg.protocol]["metric"], backend=backend, device=device, query_block=cfg.query_block)
        metrics = score_neighbours(sims, idx, train_labels, fs.val.labels, protocol=cfg.protocol,
                                   ks=cfg.resolved_ks, temperature=cfg.temperature, tie_break=cfg.tie_break, seed=cfg.seed)
    else:
        train_rows = fs.train.rows if rows is None else fs.train.rows[rows]
        metrics = knn_classify(
            train_rows, train_labels, fs.val.rows, fs.val.labels,
            protocol=cfg.protocol, ks=cfg.resolved_ks, temperature=cfg.temperature, tie_break=cfg.tie_break, seed=cfg.seed,
            backend=backend, device=device,
            query_block=cfg.query_block, database_block=cfg.database_block,
        )
    params = {**PROTOCOLS[cfg.protocol], **asdict(cfg), "tie_break_rule": tie_break_rule(cfg.protocol, cfg.tie_break)}
    if cfg.protocol != "dino":
        params.pop("temperature")
    else:
        params.pop("tie_break")
    params["ks"] = list(cfg.resolved_ks)
    params["train_rows_used"] = int(len(train_labels))
    if subset_record is not None:
        params["label_subset"] = subset_record
    return make_result("knn", cfg.protocol, metrics, params, fs, wall_time=time.perf_counter() - start, backend=f"{backend}:{device}")


def _subset_blocks(blocks, rows: np.ndarray):
    """Streamed ``(offset, rows)`` blocks restricted to the sorted train ``rows``, renumbered
    ``0..M-1`` (the search's indices then index ``train_labels[rows]``)."""
    done = 0
    for offset, block in blocks:
        lo, hi = np.searchsorted(rows, [offset, offset + len(block)])
        if hi > lo:
            yield done, block[rows[lo:hi] - offset]
            done += int(hi - lo)


TIE_BREAK = {
    "random": "neighbours by (distance, train index); majority ties -> a class drawn uniformly at random "
              "among the top-voted (numpy default_rng(seed), one draw per query in val order)",
    "nearest": "neighbours by (distance, train index); majority ties -> class of the nearest neighbour",
    "dino": "neighbours by (similarity desc, train index); equal class weights -> smaller class id",
}


def tie_break_rule(protocol: str, tie_break: str) -> str:
    """The recorded description of a protocol's tie rule."""
    return TIE_BREAK["dino"] if PROTOCOLS[protocol]["vote"] == "weighted" else TIE_BREAK[tie_break]
