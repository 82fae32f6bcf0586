"""Image retrieval: the metric-learning protocol of the paper's CUB-200 / Cars196 numbers
(docs/evaluate.md, "Retrieval").

Query set = gallery = one split (after ``--classes``). Features are L2-normalised, similarity is
cosine (inner product), neighbours are ordered by (similarity desc, gallery index asc) by the
blockwise search of ``distill.topk`` (never an N x N matrix: memory is ``N x (k_max + 1)``).
Each query's own row is removed from its list; another row that is an exact duplicate of the
query is a normal gallery item (it counts when it has the query's class).

Metrics, in %, averaged over the queries that have at least one other image of their class
(``R_i`` = that number; queries without one are counted and left out):

* ``recall@K``: share of queries with at least one same-class image among their K nearest;
* ``r_precision``: same-class share of the ``R_i`` nearest;
* ``map@r``: mean over queries of ``(1 / R_i) * sum_{j <= R_i} rel_j * precision@j``
  (Musgrave et al., "A Metric Learning Reality Check"; pytorch-metric-learning's
  ``mean_average_precision_at_r``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from distill.topk import resolve_backend, search
from evaluate.config import RetrievalConfig, parse_class_range
from evaluate.errors import FeatureError

__all__ = ["RetrievalConfig", "exclude_self", "retrieval", "retrieval_metrics"]


def exclude_self(idx: np.ndarray) -> np.ndarray:
    """Drop each query's own index from its neighbour list.

    Args:
        idx: ``(Q, k + 1)`` neighbour indices of queries ``0..Q-1`` in the same gallery.
    Returns:
        ``(Q, k)``: the row without the query's index, or, where it is absent (more than ``k``
        other rows at least as similar), the first ``k``.
    """
    q, k1 = idx.shape
    is_self = idx == np.arange(q)[:, None]
    drop = is_self.copy()
    drop[~is_self.any(axis=1), k1 - 1] = True
    return idx[~drop].reshape(q, k1 - 1)


def retrieval_metrics(features: np.ndarray, labels: np.ndarray, ks: tuple[int, ...], *, backend: str = "auto",
                      device: str | None = None, query_block: int | None = None, database_block: int = 131072) -> dict[str, Any]:
    """Recall@K, MAP@R and R-precision of every row against all the others.

    Args:
        features: ``(N, D)`` float32, L2-normalised. labels: ``(N,)`` int64.
        ks: Recall@K cut-offs.
    Returns:
        ``{"metrics": {"recall@K": %, ..., "map@r": %, "r_precision": %}, "queries": M,
        "queries_without_positive": N - M, "k_searched": k}``.
    Raises:
        FeatureError: fewer than 2 rows, or no query with another image of its class.
    """
    n = len(features)
    if n < 2:
        raise FeatureError(f"retrieval needs at least 2 images, got {n}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1  # (N,) other same-class rows per query
    valid = r > 0
    if not valid.any():
        raise FeatureError("retrieval: no image has another image of its class in the gallery")
    k = int(min(n - 1, max(max(ks), int(r.max()))))
    _, idx = search(features, features, k + 1, metric="ip", backend=backend, device=device,
                    query_block=query_block, database_block=database_block)
    match = labels[exclude_self(idx)] == labels[:, None]  # (N, k)
    match, r_v = match[valid], r[valid]
    metrics: dict[str, float] = {}
    for kk in sorted(set(ks)):
        metrics[f"recall@{kk}"] = 100.0 * float(match[:, :kk].any(axis=1).mean())
    within = np.arange(k)[None, :] < r_v[:, None]  # positions j < R_i
    hits = match & within
    precision_at = np.cumsum(match, axis=1) / np.arange(1, k + 1)[None, :]
    metrics["map@r"] = 100.0 * float(((precision_at * hits).sum(axis=1) / r_v).mean())
    metrics["r_precision"] = 100.0 * float((hits.sum(axis=1) / r_v).mean())
    return {"metrics": metrics, "queries": int(valid.sum()), "queries_without_positive": int((~valid).sum()), "k_searched": k}


@dataclass(frozen=True)
class _Gallery:
    """The evaluated split as ``make_result`` describes it."""

    root: str
    split: Any
    classes: int

    def describe(self) -> dict:
        return {"dir": self.root, self.split_name: self.split.describe()}

    @property
    def split_name(self) -> str:
        return str(self.split.source).rstrip("/").rsplit("/", 1)[-1]


def retrieval(cfg: RetrievalConfig) -> dict:
    """Run the retrieval protocol on ``cfg.features/<split>``; returns a result record."""
    import os

    from evaluate.feature_set import load_split
    from evaluate.results import make_result

    start = time.perf_counter()
    backend, device = resolve_backend(cfg.backend, cfg.device)
    split = load_split(os.path.join(cfg.features, cfg.split))
    rows = np.flatnonzero(split.labels >= 0)
    class_range = parse_class_range(cfg.classes)
    if class_range is not None:
        lo, hi = class_range
        rows = rows[(split.labels[rows] >= lo) & (split.labels[rows] < hi)]
        if len(rows) == 0:
            raise FeatureError(f"--classes {cfg.classes}: no {cfg.split} image has a class in [{lo}, {hi})")
    labels = split.labels[rows]
    out = retrieval_metrics(split.rows[rows], labels, cfg.ks, backend=backend, device=device,
                            query_block=cfg.query_block, database_block=cfg.database_block)
    gallery = _Gallery(cfg.features, split, int(len(np.unique(labels))))
    params = {**asdict(cfg), "ks": list(cfg.ks), "metric": "cosine (inner product of L2-normalised features)",
              "query_set": f"{cfg.split} = gallery, each query's own image excluded (other exact duplicates count)",
              "class_range": list(class_range) if class_range else None, "order": "similarity desc, gallery index asc",
              **{key: out[key] for key in ("queries", "queries_without_positive", "k_searched")}}
    return make_result("retrieval", "metric-learning", out["metrics"], params, gallery, wall_time=time.perf_counter() - start,
                       backend=f"{backend}:{device}", split_sizes={cfg.split: len(rows)}, num_classes=gallery.classes)
