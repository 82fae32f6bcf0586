"""Cluster alignment (docs/evaluate.md, "Protocols"): k-means on all train features, clusters matched to
classes by the Hungarian algorithm on train, accuracy of the matched assignment on val.

Defaults follow CompRess: 1000 clusters, 20 iterations, **all** points (FAISS otherwise
subsamples to 256 points per centroid). Backends: FAISS ``Kmeans`` or a torch k-means whose
data stays on one device (GPU-resident when ``device="cuda"``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import numpy as np
import torch

from evaluate.config import SEARCH_BACKENDS as CLUSTER_BACKENDS
from evaluate.config import ClusterConfig
from evaluate.errors import FeatureError
from storage.atomic import write_atomic

__all__ = ["CLUSTER_BACKENDS", "ClusterConfig", "aligned_accuracy", "assign", "cluster", "cluster_alignment", "confusion_matrix",
           "faiss_kmeans", "match_clusters", "torch_kmeans"]


def assign(features: np.ndarray, centroids: np.ndarray, *, device: str = "cpu", block: int = 65536) -> np.ndarray:
    """Nearest centroid (L2) of every row; ties by smaller centroid id.

    Args:
        features: ``(N, D)`` float32. centroids: ``(K, D)`` float32.
    Returns:
        ``(N,)`` int64 cluster ids.
    """
    c = torch.as_tensor(centroids, dtype=torch.float32, device=device)
    c2 = (c * c).sum(1)
    out = np.empty(len(features), dtype=np.int64)
    for s in range(0, len(features), block):
        x = torch.as_tensor(features[s:s + block], dtype=torch.float32, device=device)
        out[s:s + block] = (c2[None, :] - 2 * x @ c.T).argmin(dim=1).cpu().numpy()
    return out


def torch_kmeans(
    features: np.ndarray | torch.Tensor, k: int, *, iterations: int = 20, seed: int = 0, device: str = "cpu", block: int = 65536
) -> np.ndarray:
    """Lloyd's k-means on all rows, data resident on ``device``.

    Initial centroids are ``k`` distinct rows drawn with ``seed``; a cluster that becomes
    empty is re-seeded with a random row (seeded).

    Args:
        features: ``(N, D)``.
    Returns:
        ``(K, D)`` float32 centroids.
    """
    x = torch.as_tensor(features, dtype=torch.float32).to(device)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:k].to(device)].clone()
    labels = torch.empty(n, dtype=torch.long, device=device)
    for _ in range(iterations):
        c2 = (centroids * centroids).sum(1)
        for s in range(0, n, block):
            labels[s:s + block] = (c2[None, :] - 2 * x[s:s + block] @ centroids.T).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = (~nonempty).nonzero().flatten()
        if empty.numel():
            centroids[empty] = x[torch.randint(0, n, (empty.numel(),), generator=gen).to(device)]
    return centroids.cpu().numpy()


def faiss_kmeans(features: np.ndarray, k: int, *, iterations: int = 20, seed: int = 0, use_gpu: bool = False) -> np.ndarray:
    """FAISS k-means on all rows (``max_points_per_centroid`` raised to N so nothing is
    subsampled). Returns ``(K, D)`` float32 centroids."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, gpu=use_gpu,
                      max_points_per_centroid=max(256, -(-x.shape[0] // k) + 1), verbose=False)
    km.train(x)
    assert km.centroids is not None  # set by train()
    return km.centroids.copy()


def match_clusters(train_clusters: np.ndarray, train_labels: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """Hungarian matching of clusters to classes maximising the number of train points whose
    cluster maps to their class (scipy ``linear_sum_assignment``).

    Returns:
        ``(K,)`` int64: the class of each cluster, ``-1`` for clusters left unmatched (when
        K > C); their points count as wrong.
    """
    from scipy.optimize import linear_sum_assignment

    contingency = np.zeros((num_clusters, num_classes), dtype=np.int64)
    np.add.at(contingency, (train_clusters, train_labels), 1)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    mapping = np.full(num_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def aligned_accuracy(clusters: np.ndarray, labels: np.ndarray, mapping: np.ndarray) -> float:
    """Percentage of points whose cluster maps to their label."""
    return 100.0 * float((mapping[clusters] == labels).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C + 1)`` counts, rows = true class, columns = predicted class; the last column
    counts points of unmatched clusters (prediction -1)."""
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(cm, (labels, np.where(predictions < 0, num_classes, predictions)), 1)
    return cm


def cluster_alignment(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
    *, clusters: int = 1000, iterations: int = 20, seed: int = 0, backend: str = "faiss", device: str = "cpu",
) -> dict:
    """k-means on train, Hungarian matching on train, accuracy on val.

    Returns:
        dict with ``metrics`` ({"cluster_acc": val %, "cluster_acc_train": train %}),
        ``mapping`` (K,), ``val_predictions`` (Q,), ``train_clusters``, ``val_clusters``,
        ``timings`` (seconds of kmeans / hungarian).
    Raises:
        FeatureError: more clusters than train points, mismatched dimensions.
    """
    if clusters > len(train_features):
        raise FeatureError(f"clusters = {clusters} is larger than the train set ({len(train_features)} rows)")
    if train_features.shape[1] != val_features.shape[1]:
        raise FeatureError(f"train features have dimension {train_features.shape[1]}, val features {val_features.shape[1]}")
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    t0 = time.perf_counter()
    if backend == "torch":
        centroids = torch_kmeans(train_features, clusters, iterations=iterations, seed=seed, device=device)
    else:
        centroids = faiss_kmeans(train_features, clusters, iterations=iterations, seed=seed, use_gpu=device.startswith("cuda"))
    t1 = time.perf_counter()
    train_clusters = assign(train_features, centroids, device=device)
    val_clusters = assign(val_features, centroids, device=device)
    t2 = time.perf_counter()
    mapping = match_clusters(train_clusters, train_labels, clusters, num_classes)
    t3 = time.perf_counter()
    return {
        "metrics": {"cluster_acc": aligned_accuracy(val_clusters, val_labels, mapping),
                    "cluster_acc_train": aligned_accuracy(train_clusters, train_labels, mapping)},
        "mapping": mapping, "train_clusters": train_clusters, "val_clusters": val_clusters,
        "val_predictions": mapping[val_clusters], "num_classes": num_classes,
        "timings": {"kmeans_s": t1 - t0, "assign_s": t2 - t1, "hungarian_s": t3 - t2},
    }


def cluster(cfg: ClusterConfig) -> dict:
    """Run cluster alignment on a features directory; returns a result record."""
    from distill.topk import resolve_backend
    from evaluate.feature_set import load_feature_set
    from evaluate.results import make_result

    start = time.perf_counter()
    backend, device = resolve_backend(cfg.backend, cfg.device)
    fs = load_feature_set(cfg.features)
    out = cluster_alignment(fs.train.rows, fs.train.labels, fs.val.rows, fs.val.labels,
                            clusters=cfg.clusters, iterations=cfg.iterations, seed=cfg.seed, backend=backend, device=device)
    extra: dict = {"timings": {k: round(v, 4) for k, v in out["timings"].items()}}
    if cfg.confusion:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.confusion)), exist_ok=True)
        matrix = confusion_matrix(fs.val.labels, out["val_predictions"], fs.num_classes)
        write_atomic(cfg.confusion, lambda f: np.save(f, matrix))
        extra["confusion_matrix"] = cfg.confusion
    if cfg.grid and cfg.data_root:  # ClusterConfig.validate: a grid needs data_root
        from evaluate.cluster_grid import save_cluster_grid

        save_cluster_grid(cfg.grid, cfg.data_root, fs.train.paths, out["train_clusters"],
                          n_clusters=cfg.grid_clusters, per_cluster=cfg.grid_samples, seed=cfg.seed)
        extra["grid"] = cfg.grid
    params = {**asdict(cfg), "subsampling": "none (all train points)", "matching": "hungarian on train",
              "distance": "l2"}
    return make_result("cluster", "compress", out["metrics"], params, fs, wall_time=time.perf_counter() - start,
                       backend=f"{backend}:{device}", extra=extra)
