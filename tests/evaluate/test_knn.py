"""kNN: every backend equals a brute-force numpy reference, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.topk import search
from evaluate.knn import knn_classify, majority_vote, weighted_vote
from tests.evaluate.reference import reference_majority, reference_neighbours, reference_weighted

BACKENDS = ["torch", "faiss"]


def tied_features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Values in {0, 0.25, 0.5}: every score is exact in float32 and many tie; duplicates too."""
    x = rng.integers(0, 3, size=(n, d)).astype(np.float32) * 0.25
    x[n // 2: n // 2 + 5] = x[:5]  # exact duplicate rows
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("blocks", [(1000, 1000), (7, 13)])
def test_search_equals_reference_with_ties(backend: str, metric: str, blocks: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    db = tied_features(rng, 120, 4)
    q = tied_features(rng, 30, 4)
    ref_s, ref_i = reference_neighbours(q, db, 20, metric)
    s, i = search(q, db, 20, metric=metric, backend=backend, device="cpu", query_block=blocks[0], database_block=blocks[1])
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=0, atol=1e-5)


def test_test_data_has_boundary_ties() -> None:
    rng = np.random.default_rng(0)
    db, q = tied_features(rng, 120, 4), tied_features(rng, 30, 4)
    s, _ = reference_neighbours(q, db, 21, "l2")
    assert (s[:, 19] == s[:, 20]).sum() > 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_streamed_blocks_equal_in_memory(backend: str) -> None:
    rng = np.random.default_rng(1)
    db = rng.standard_normal((200, 8)).astype(np.float32)
    q = rng.standard_normal((17, 8)).astype(np.float32)
    blocks = [(s, db[s:s + 3]) for s in range(0, 200, 3)]  # blocks smaller than k
    s1, i1 = search(q, blocks, 10, backend=backend, device="cpu")
    s2, i2 = search(q, db, 10, backend=backend, device="cpu")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(i1, reference_neighbours(q, db, 10, "l2")[1])


def test_majority_vote_tie_goes_to_nearest_class() -> None:
    labels = np.array([[3, 1, 1, 3, 2], [0, 2, 2, 0, 0], [4, 4, 1, 1, 1]])
    # row 0: 3 and 1 have two votes, 3 is nearest; row 1: 0 wins 3-2; row 2: 1 wins 3-2
    np.testing.assert_array_equal(majority_vote(labels, 5, tie_break="nearest"), [3, 0, 1])
    rng = np.random.default_rng(2)
    many = rng.integers(0, 4, size=(200, 6))
    np.testing.assert_array_equal(majority_vote(many, 4, tie_break="nearest"), reference_majority(many))


def test_weighted_vote_matches_reference_and_orders_equal_scores_by_class() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, size=(50, 10))
    sims = rng.uniform(-1, 1, size=(50, 10))
    np.testing.assert_array_equal(weighted_vote(labels, sims, 7, 0.07), reference_weighted(labels, sims, 7, 0.07))
    # equal weights: classes 2 and 5 tie -> 2 first
    out = weighted_vote(np.array([[5, 2]]), np.array([[0.5, 0.5]]), 6, 0.07, top=2)
    np.testing.assert_array_equal(out, [[2, 5]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("protocol", ["compress", "dino"])
def test_knn_classify_equals_reference(backend: str, protocol: str) -> None:
    rng = np.random.default_rng(4)
    train, val = tied_features(rng, 300, 5), tied_features(rng, 40, 5)
    train_labels, val_labels = rng.integers(0, 6, 300), rng.integers(0, 6, 40)
    got = knn_classify(train, train_labels, val, val_labels, protocol=protocol, backend=backend, device="cpu", tie_break="nearest",
                       ks=(1, 20) if protocol == "compress" else (10, 20, 100, 200), query_block=16, database_block=64)
    if protocol == "compress":
        _, idx = reference_neighbours(val, train, 20, "l2")
        nl = train_labels[idx]
        want = {"nn": 100 * np.mean(nl[:, 0] == val_labels), "knn20": 100 * np.mean(reference_majority(nl) == val_labels)}
    else:
        s, idx = reference_neighbours(val, train, 200, "ip")
        want = {}
        for k in (10, 20, 100, 200):
            ranked = reference_weighted(train_labels[idx[:, :k]], s[:, :k] - s[:, :1], 6, 0.07)
            want[f"knn{k}_top1"] = 100 * np.mean(ranked[:, 0] == val_labels)
            want[f"knn{k}_top5"] = 100 * np.mean((ranked == val_labels[:, None]).any(1))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key


def test_backends_agree_on_random_features() -> None:
    rng = np.random.default_rng(5)
    train = rng.standard_normal((500, 16)).astype(np.float32)
    val = rng.standard_normal((60, 16)).astype(np.float32)
    tl, vl = rng.integers(0, 10, 500), rng.integers(0, 10, 60)
    a = knn_classify(train, tl, val, vl, protocol="dino", backend="torch", device="cpu")
    b = knn_classify(train, tl, val, vl, protocol="dino", backend="faiss")
    assert a == b


def test_k_larger_than_database_is_refused() -> None:
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"k = 20 is larger than the train set \(5 rows\)"):
        knn_classify(x, np.zeros(5, int), x, np.zeros(5, int))
    with pytest.raises(ValueError, match="larger than the database"):
        search(x, x, 6)


def test_mismatched_dims_are_refused() -> None:
    with pytest.raises(ValueError, match="dimension 3, val features 4"):
        knn_classify(np.zeros((30, 3), np.float32), np.zeros(30, int), np.zeros((2, 4), np.float32), np.zeros(2, int))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("protocol", ["compress", "dino"])
def test_cuda_torch_backend_equals_cpu(protocol: str) -> None:
    rng = np.random.default_rng(6)
    train, val = tied_features(rng, 2000, 16), tied_features(rng, 300, 16)
    tl, vl = rng.integers(0, 10, 2000), rng.integers(0, 10, 300)
    cpu = knn_classify(train, tl, val, vl, protocol=protocol, backend="torch", device="cpu")
    gpu = knn_classify(train, tl, val, vl, protocol=protocol, backend="torch", device="cuda")
    assert cpu == gpu
