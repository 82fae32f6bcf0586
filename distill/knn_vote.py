"""kNN votes: the one implementation of the majority and weighted (DINO) votes.

It lives in ``distill`` so that both ``evaluate.knn`` and distill's evaluation during training
(``distill.periodic_eval``) use it (``evaluate`` may import ``distill``, not the reverse).

Majority-vote tie-breaks (``TIE_BREAKS``):

* ``random`` (the official CompRess ``faiss_knn`` rule, the default): among the classes with
  the most votes, one is chosen uniformly at random. The draw is seeded: query ``i`` of a call
  uses the ``i``-th number of ``numpy.random.default_rng(seed)``, so the result is a function
  of the neighbour labels and the seed only (identical on every search backend, which all
  return the same neighbours).
* ``nearest``: the class of the nearest neighbour among the tied classes.
"""

from __future__ import annotations

import numpy as np
import torch

from storage.errors import UsageError, unknown_name

TIE_BREAKS = ("random", "nearest")


def vote_counts(neighbour_labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(Q, C)`` int64 votes per class from ``(Q, k)`` neighbour labels."""
    labels = torch.from_numpy(np.ascontiguousarray(neighbour_labels, dtype=np.int64))
    return torch.zeros((labels.shape[0], num_classes), dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))


def majority_vote(neighbour_labels: np.ndarray, num_classes: int, *, tie_break: str = "random", seed: int = 0) -> np.ndarray:
    """Unweighted majority vote.

    Args:
        neighbour_labels: ``(Q, k)`` int64, nearest first.
        num_classes: C.
        tie_break: ``random`` (uniform among the top-voted classes, seeded) or ``nearest``.
        seed: the random rule's seed.
    Returns:
        ``(Q,)`` int64 predicted classes.
    Raises:
        UsageError: an unknown tie-break.
    """
    if tie_break not in TIE_BREAKS:
        raise UsageError("--tie-break: " + unknown_name("tie-break", tie_break, list(TIE_BREAKS)))
    labels = torch.from_numpy(np.ascontiguousarray(neighbour_labels, dtype=np.int64))
    q, k = labels.shape
    counts = vote_counts(neighbour_labels, num_classes)
    if tie_break == "nearest":
        ranks = torch.arange(k).expand(q, k).contiguous()
        first = torch.full((q, num_classes), k, dtype=torch.long).scatter_reduce_(1, labels, ranks, "amin")
        key = counts * (k + 1) + (k - first)
        return key.argmax(dim=1).numpy()
    tied = counts == counts.max(dim=1, keepdim=True).values  # (Q, C)
    n_tied = tied.sum(dim=1)
    u = torch.from_numpy(np.random.default_rng(seed).random(q))
    pick = torch.clamp((u * n_tied).long(), max=n_tied - 1)  # which of the tied classes, by class id
    position = tied.long().cumsum(dim=1)  # 1-based rank of each tied class among the tied
    return ((position == (pick + 1)[:, None]) & tied).long().argmax(dim=1).numpy()


def weighted_vote(
    neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, num_classes: int, temperature: float = 0.07, top: int = 5
) -> np.ndarray:
    """DINO vote: class scores ``sum exp(sim / T)`` over the neighbours of that class.

    Args:
        neighbour_labels: ``(Q, k)`` int64.
        neighbour_sims: ``(Q, k)`` cosine similarities.
        temperature: T > 0.
        top: how many ranked classes to return.
    Returns:
        ``(Q, min(top, C))`` classes by decreasing score, equal scores by smaller class id.
    """
    if temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    labels = torch.from_numpy(np.ascontiguousarray(neighbour_labels, dtype=np.int64))
    sims = torch.from_numpy(np.ascontiguousarray(neighbour_sims, dtype=np.float64))
    # subtracting the row maximum scales every class score of a row alike (no overflow)
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature)
    scores = torch.zeros((labels.shape[0], num_classes), dtype=torch.float64).scatter_add_(1, labels, weights)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return order[:, : min(top, num_classes)].numpy()
