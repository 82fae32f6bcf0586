"""Cluster alignment: Hungarian matching on hand-computed cases, k-means backends on obvious data."""

from __future__ import annotations

import numpy as np
import pytest

from evaluate.cluster import aligned_accuracy, cluster_alignment, confusion_matrix, faiss_kmeans, match_clusters, torch_kmeans


def test_matching_hand_computed() -> None:
    # cluster 0: labels 1,1,2 ; cluster 1: 2,2,0 ; cluster 2: 0,0,0,1
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    labels = np.array([1, 1, 2, 2, 2, 0, 0, 0, 0, 1])
    mapping = match_clusters(clusters, labels, 3, 3)
    np.testing.assert_array_equal(mapping, [1, 2, 0])
    assert aligned_accuracy(clusters, labels, mapping) == pytest.approx(70.0)  # 2 + 2 + 3 of 10


def test_matching_is_one_to_one_not_majority() -> None:
    # both clusters are majority class 0; Hungarian must give one of them class 1
    clusters = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([0, 0, 0, 0, 0, 1])
    mapping = match_clusters(clusters, labels, 2, 2)
    np.testing.assert_array_equal(mapping, [0, 1])
    assert aligned_accuracy(clusters, labels, mapping) == pytest.approx(400 / 6)


def test_more_clusters_than_classes_leaves_unmatched_clusters_wrong() -> None:
    clusters = np.array([0, 1, 2, 2])
    labels = np.array([0, 0, 1, 1])
    mapping = match_clusters(clusters, labels, 3, 2)
    assert sorted(mapping.tolist()) == [-1, 0, 1] and mapping[2] == 1
    assert aligned_accuracy(clusters, labels, mapping) == pytest.approx(75.0)
    cm = confusion_matrix(labels, mapping[clusters], 2)
    assert cm.sum() == 4 and cm[:, 2].sum() == 1  # one point in the unmatched column


def blobs(rng: np.random.Generator, per: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    centers = np.eye(4, 6, dtype=np.float32) * 3
    labels = np.repeat(np.arange(4), per)
    return centers[labels] + noise * rng.standard_normal((len(labels), 6)).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_alignment_recovers_separated_classes(backend: str) -> None:
    rng = np.random.default_rng(0)
    train, tl = blobs(rng, 50)
    val, vl = blobs(rng, 10)
    perm = rng.permutation(len(tl))
    out = cluster_alignment(train[perm], tl[perm], val, vl, clusters=4, iterations=20, seed=3, backend=backend)
    assert out["metrics"]["cluster_acc"] == 100.0 and out["metrics"]["cluster_acc_train"] == 100.0


def test_faiss_kmeans_uses_all_points() -> None:
    # with 5000 points and 2 clusters faiss's default would subsample to 512; check the
    # centroids are the exact means of all points of the final assignment
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal((2500, 2)) - 5, rng.standard_normal((2500, 2)) + 5]).astype(np.float32)
    c = faiss_kmeans(x, 2, iterations=5)
    left = x[:, 0] < 0
    want = np.stack([x[left].mean(0), x[~left].mean(0)])
    got = c[np.argsort(c[:, 0])]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_torch_kmeans_centroids_are_means() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal((300, 2)) - 5, rng.standard_normal((300, 2)) + 5]).astype(np.float32)
    c = torch_kmeans(x, 2, iterations=5, seed=0)
    got = c[np.argsort(c[:, 0])]
    np.testing.assert_allclose(got, [x[:300].mean(0), x[300:].mean(0)], atol=1e-4)


def test_more_clusters_than_points_is_refused() -> None:
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"clusters = 10 is larger than the train set \(3 rows\)"):
        cluster_alignment(x, np.zeros(3, int), x, np.zeros(3, int), clusters=10)
