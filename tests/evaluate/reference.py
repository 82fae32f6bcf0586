"""Brute-force numpy references the fast paths are checked against."""

from __future__ import annotations

from collections import Counter

import numpy as np


def reference_neighbours(queries: np.ndarray, database: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Full score matrix in float64, order (score desc, index asc), first k."""
    q, db = queries.astype(np.float64), database.astype(np.float64)
    if metric == "ip":
        scores = q @ db.T
    else:
        scores = -((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    idx = np.empty((len(q), k), dtype=np.int64)
    for row in range(len(q)):
        order = np.lexsort((np.arange(len(db)), -scores[row]))
        idx[row] = order[:k]
    return np.take_along_axis(scores, idx, 1), idx


def reference_majority(neighbour_labels: np.ndarray) -> np.ndarray:
    out = []
    for row in neighbour_labels:
        counts = Counter(row.tolist())
        best = max(counts.values())
        out.append(next(c for c in row.tolist() if counts[c] == best))  # nearest among the tied
    return np.array(out)


def reference_weighted(neighbour_labels: np.ndarray, sims: np.ndarray, num_classes: int, t: float) -> np.ndarray:
    out = []
    for labs, s in zip(neighbour_labels, sims):
        scores = np.zeros(num_classes)
        for lab, sim in zip(labs, s):
            scores[lab] += np.exp(sim / t)
        out.append(sorted(range(num_classes), key=lambda c: (-scores[c], c))[:5])
    return np.array(out)
