"""Few-label kNN and linear: --fraction, --shots, --subset-file, one selection for both."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from evaluate.cli import main
from evaluate.config import KnnConfig, LinearConfig
from evaluate.knn import knn, knn_classify
from evaluate.label_subset import read_subset_file, select_train_rows
from storage.errors import UsageError
from tests.evaluate.stores import write_store

CLASSES = 4


def labelled_dir(root: str, n_train: int = 120, n_val: int = 30, seed: int = 0) -> str:
    """Blob features with recorded paths ``c{label}/img{i}.png`` (shards of 64 rows)."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("val", n_val)):
        labels = np.sort(rng.integers(0, CLASSES, n))
        x = np.eye(CLASSES, 8, dtype=np.float32)[labels] + 0.6 * rng.standard_normal((n, 8)).astype(np.float32)
        write_store(os.path.join(root, name), x, labels, paths=[f"c{lab}/img{i}.png" for i, lab in enumerate(labels)])
    return root


def test_select_train_rows_rules(tmp_path) -> None:
    labels = np.array([0] * 10 + [1] * 20 + [-1] * 3 + [2] * 5)
    paths = [f"c{lab}/i{i}.png" for i, lab in enumerate(labels)]
    rows, rec = select_train_rows(labels, paths, shots=2, seed=1)
    assert np.bincount(labels[rows]).tolist() == [2, 2, 2] and rec["rule"] == "shots per class" and rec["rows"] == 6
    np.testing.assert_array_equal(rows, select_train_rows(labels, paths, shots=2, seed=1)[0])
    assert not np.array_equal(rows, select_train_rows(labels, paths, shots=2, seed=2)[0])
    rows, rec = select_train_rows(labels, paths, fraction=0.1, seed=0)
    assert np.bincount(labels[rows]).tolist() == [1, 2, 1] and rec["of"] == 35
    rows, rec = select_train_rows(labels, paths)
    assert len(rows) == 35 and (labels[rows] >= 0).all()
    subset = tmp_path / "1percent.txt"
    subset.write_text("c1/i12.png\n\ni0.png\nc2/i34.png\n")
    rows, rec = select_train_rows(labels, paths, subset_file=str(subset))
    assert rows.tolist() == [0, 12, 34] and rec["subset_file_sha256"].startswith("sha256:")
    with pytest.raises(UsageError, match="--shots and --subset-file"):
        select_train_rows(labels, paths, shots=1, subset_file=str(subset))


def test_subset_file_errors_name_the_line(tmp_path) -> None:
    f = tmp_path / "s.txt"
    f.write_text("a/x.png\nb/missing.png\n")
    with pytest.raises(UsageError, match=r"s.txt:2: 'b/missing.png' is not an image"):
        read_subset_file(str(f), ["a/x.png", "b/y.png"])
    f.write_text("x.png\n")
    with pytest.raises(UsageError, match="names several train images"):
        read_subset_file(str(f), ["a/x.png", "b/x.png"])
    with pytest.raises(UsageError, match="--subset-file .*: no such file"):
        KnnConfig(features=str(tmp_path), subset_file=str(tmp_path / "nope.txt"))
    with pytest.raises(UsageError, match="--fraction and --shots"):
        LinearConfig(features=str(tmp_path), fraction=0.1, shots=2)


@pytest.mark.parametrize("stream", [False, True])
def test_few_label_knn_equals_knn_on_the_subset(tmp_path, stream: bool) -> None:
    from evaluate.feature_set import load_feature_set

    root = labelled_dir(str(tmp_path / "f"))
    result = knn(KnnConfig(features=root, shots=5, seed=3, stream=stream, ks=(1, 5)))
    fs = load_feature_set(root)
    rows, _ = select_train_rows(fs.train.labels, fs.train.paths, shots=5, seed=3)
    want = knn_classify(fs.train.rows[rows], fs.train.labels[rows], fs.val.rows, fs.val.labels, ks=(1, 5), seed=3)
    assert result["metrics"] == pytest.approx(want)
    assert result["params"]["train_rows_used"] == 20 == result["params"]["label_subset"]["rows"]
    full = knn(KnnConfig(features=root, ks=(1, 5)))
    assert full["params"]["train_rows_used"] == 120 and "label_subset" not in full["params"]


def test_cli_subset_file_for_knn_and_linear(tmp_path) -> None:
    root = labelled_dir(str(tmp_path / "f"))
    subset = tmp_path / "10percent.txt"
    subset.write_text("".join(f"img{i}.png\n" for i in range(0, 120, 6)))  # SimCLR style: file names
    runner = CliRunner()
    for cmd in ("knn", "linear"):
        out = str(tmp_path / f"{cmd}.json")
        extra = ["-k", "1"] if cmd == "knn" else ["--epochs", "2"]
        res = runner.invoke(main, [cmd, "--features", root, "--subset-file", str(subset), *extra, "--out", out])
        assert res.exit_code == 0, res.output
        params = json.load(open(out))["params"]
        assert params["label_subset"]["rule"] == "subset file" and params["label_subset"]["rows"] == 20
        assert params["train_rows_used"] == 20
    subset.write_text("img999.png\n")
    res = runner.invoke(main, ["knn", "--features", root, "--subset-file", str(subset)])
    assert res.exit_code == 2 and "img999.png" in res.output
