"""The compress protocol's majority ties: the official random rule (default) and ``nearest``."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from evaluate.knn import knn_classify, majority_vote
from tests.evaluate.test_knn import tied_features


def planted_ties(rng: np.random.Generator, q: int, k: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour labels ``(q, k)`` where most rows tie 2-4 classes at the top, and true labels."""
    rows = []
    for _ in range(q):
        tied = rng.choice(classes, size=rng.integers(1, 5), replace=False)
        per = k // len(tied)
        row = np.concatenate([np.repeat(tied, per), rng.choice(np.setdiff1d(np.arange(classes), tied), k - per * len(tied))])
        # the filler must not reach the top count: cap it below per
        filler_counts = Counter(row[per * len(tied):].tolist())
        if filler_counts and max(filler_counts.values()) >= per:
            row[per * len(tied):] = tied[0]  # no tie then for this row: tied[0] wins outright
        rows.append(rng.permutation(row))
    labels = np.array(rows, dtype=np.int64)
    truth = rng.integers(0, classes, size=q)
    truth[: q // 2] = labels[: q // 2, 0]  # half the rows: the truth is one of the neighbours
    return labels, truth


def expected_accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Exact expectation of the random rule: 1 / |top-voted| when the truth is among them."""
    total = 0.0
    for row, t in zip(labels, truth):
        counts = Counter(row.tolist())
        top = [c for c, v in counts.items() if v == max(counts.values())]
        total += (1.0 / len(top)) if t in top else 0.0
    return total / len(labels)


def test_random_rule_averages_to_its_exact_expectation() -> None:
    rng = np.random.default_rng(0)
    labels, truth = planted_ties(rng, 200, 20, 10)
    counts = [Counter(r.tolist()) for r in labels]
    assert sum(sorted(c.values())[-1] == sorted(c.values())[-2] for c in counts if len(c) > 1) > 80  # many ties
    accs = np.array([(majority_vote(labels, 10, seed=s) == truth).mean() for s in range(400)])
    want = expected_accuracy(labels, truth)
    # the mean over 400 seeds is within 4 standard errors of the exact expectation
    assert abs(accs.mean() - want) < 4 * accs.std() / np.sqrt(len(accs)) + 1e-9
    assert accs.std() > 0  # the seed matters on ties
    # and every pick is one of the top-voted classes
    for s in (0, 1):
        pred = majority_vote(labels, 10, seed=s)
        for row, p in zip(counts, pred):
            assert row[int(p)] == max(row.values())


def test_random_rule_is_reproducible_and_nearest_unchanged() -> None:
    rng = np.random.default_rng(1)
    labels, truth = planted_ties(rng, 100, 20, 6)
    np.testing.assert_array_equal(majority_vote(labels, 6, seed=7), majority_vote(labels, 6, seed=7))
    assert (majority_vote(labels, 6, seed=7) != majority_vote(labels, 6, seed=8)).any()
    # nearest: the first (nearest) neighbour's class among the tied ones
    for row, p in zip(labels, majority_vote(labels, 6, tie_break="nearest")):
        counts = Counter(row.tolist())
        assert p == next(c for c in row.tolist() if counts[c] == max(counts.values()))
    # no tie: both rules agree
    clear = np.array([[1, 1, 1, 2, 3], [4, 0, 4, 0, 4]])
    np.testing.assert_array_equal(majority_vote(clear, 5), [1, 4])
    np.testing.assert_array_equal(majority_vote(clear, 5, tie_break="nearest"), [1, 4])


def test_random_rule_identical_on_faiss_and_torch() -> None:
    rng = np.random.default_rng(2)
    train, val = tied_features(rng, 300, 4), tied_features(rng, 60, 4)
    tl, vl = rng.integers(0, 5, 300), rng.integers(0, 5, 60)
    a = knn_classify(train, tl, val, vl, backend="torch", device="cpu", seed=3, query_block=7, database_block=50)
    b = knn_classify(train, tl, val, vl, backend="faiss", seed=3)
    assert a == b
    c = knn_classify(train, tl, val, vl, backend="faiss", seed=3, tie_break="nearest")
    assert set(c) == {"nn", "knn20"}


def test_unknown_tie_break_is_a_usage_error() -> None:
    from storage.errors import UsageError

    with pytest.raises(UsageError, match="--tie-break"):
        majority_vote(np.zeros((1, 3), np.int64), 2, tie_break="lowest")
