"""Retrieval (Recall@K, MAP@R, R-precision): brute-force reference with ties and duplicates,
pytorch-metric-learning cross-check, backend agreement, CLI and report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evaluate.cli import main
from evaluate.retrieval import exclude_self, retrieval_metrics
from tests.evaluate.stores import write_store


def reference(features: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Full N x N cosine matrix in float64, order (sim desc, index asc), self removed."""
    x = features.astype(np.float64)
    sims = x @ x.T
    recall = {k: [] for k in ks}
    maps, rps = [], []
    for i in range(len(x)):
        order = [j for j in np.lexsort((np.arange(len(x)), -sims[i])) if j != i]
        rel = (labels[order] == labels[i]).astype(float)
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            recall[k].append(rel[:k].max())
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        maps.append((prec[:r] * rel[:r]).sum() / r)
        rps.append(rel[:r].sum() / r)
    out = {f"recall@{k}": 100 * float(np.mean(v)) for k, v in recall.items()}
    out["map@r"], out["r_precision"] = 100 * float(np.mean(maps)), 100 * float(np.mean(rps))
    return out


def tied(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Unit rows with four entries 0.5 among ``2 * d`` (every similarity a multiple of 0.25,
    exact in float32: many ties) and exact duplicate rows."""
    x = np.zeros((n, 2 * d), np.float32)
    for row in x:
        row[rng.choice(2 * d, 4, replace=False)] = 0.5
    x[n // 2: n // 2 + 6] = x[:6]
    return x


def test_exclude_self() -> None:
    idx = np.array([[0, 5, 6], [3, 4, 1], [7, 8, 9]])  # row 2's own index is absent: drop the last
    np.testing.assert_array_equal(exclude_self(idx), [[5, 6], [3, 4], [7, 8]])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_equals_brute_force_with_ties_and_duplicates(backend: str) -> None:
    rng = np.random.default_rng(0)
    x = tied(rng, 90, 3)
    labels = rng.integers(0, 5, 90)
    labels[45:51] = labels[:6]  # duplicates of the same class
    labels[89] = 7  # a singleton class: no positive, left out
    got = retrieval_metrics(x, labels, (1, 2, 4, 8), backend=backend, device="cpu", query_block=16, database_block=32)
    want = reference(x, labels, (1, 2, 4, 8))
    assert got["queries"] == 89 and got["queries_without_positive"] == 1
    assert got["metrics"].keys() == want.keys()
    for key in want:
        assert got["metrics"][key] == pytest.approx(want[key], abs=1e-9), key


def test_duplicate_of_query_counts_but_the_query_itself_never() -> None:
    a, b, c = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]
    x = np.array([a, a, c, b], np.float32)  # rows 0 and 1 are exact duplicates
    # same class: each finds its duplicate first -> a hit
    got = retrieval_metrics(x, np.array([0, 0, 1, 1]), (1,), backend="torch", device="cpu")
    assert got["metrics"]["recall@1"] == 100.0
    # the duplicate of another class comes first for row 0 (a miss at 1); row 0 itself
    # (similarity 1, class 0) never counts for row 0
    got = retrieval_metrics(x, np.array([0, 2, 0, 1]), (1, 2), backend="torch", device="cpu")
    assert got["queries"] == 2  # rows 1 and 3 are alone in their class
    assert got["metrics"]["recall@1"] == 0.0 and got["metrics"]["recall@2"] == 100.0
    assert got["metrics"]["map@r"] == 0.0  # R = 1: only rank 1 counts, and it is a miss


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pytorch_metric_learning(seed: int) -> None:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((150, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 6, 150)
    got = retrieval_metrics(x, labels, (1,), backend="faiss")["metrics"]
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count")
    t = torch.from_numpy(x)
    pml = calc.get_accuracy(t, torch.from_numpy(labels), t, torch.from_numpy(labels), ref_includes_query=True)
    assert got["recall@1"] == pytest.approx(100 * pml["precision_at_1"], abs=1e-4)
    assert got["map@r"] == pytest.approx(100 * pml["mean_average_precision_at_r"], abs=1e-4)
    assert got["r_precision"] == pytest.approx(100 * pml["r_precision"], abs=1e-4)


def test_backends_agree_exactly() -> None:
    rng = np.random.default_rng(3)
    x = tied(rng, 200, 4)
    labels = rng.integers(0, 8, 200)
    a = retrieval_metrics(x, labels, (1, 4), backend="torch", device="cpu", database_block=37)
    b = retrieval_metrics(x, labels, (1, 4), backend="faiss")
    assert a == b


def test_cli_class_range_result_and_report(tmp_path) -> None:
    rng = np.random.default_rng(4)
    root = str(tmp_path / "f")
    for name, n in (("train", 40), ("val", 60)):
        labels = np.sort(rng.integers(0, 6, n))
        x = np.eye(6, 8, dtype=np.float32)[labels] + 0.5 * rng.standard_normal((n, 8)).astype(np.float32)
        write_store(os.path.join(root, name), x, labels)
    out = str(tmp_path / "r.json")
    res = CliRunner().invoke(main, ["retrieval", "--features", root, "--ks", "1,2", "--classes", "3:6", "--out", out])
    assert res.exit_code == 0, res.output
    result = json.load(open(out))
    assert result["command"] == "retrieval" and result["params"]["class_range"] == [3, 6]
    assert set(result["metrics"]) == {"recall@1", "recall@2", "map@r", "r_precision"}
    assert result["features"]["val"]["fingerprint"].startswith("sha256:")
    from evaluate.feature_set import load_split

    val = load_split(os.path.join(root, "val"))
    keep = val.labels >= 3
    assert result["split_sizes"] == {"val": int(keep.sum())}
    want = reference(val.rows[keep], val.labels[keep], (1, 2))
    assert result["metrics"]["recall@1"] == pytest.approx(want["recall@1"], abs=1e-3)
    rep = CliRunner().invoke(main, ["report", out, "--chart", str(tmp_path / "c.png")])
    assert rep.exit_code == 0 and "retrieval/metric-learning/recall@1" in rep.output
    bad = CliRunner().invoke(main, ["retrieval", "--features", root, "--classes", "5:2"])
    assert bad.exit_code == 2 and "--classes" in bad.output
