"""``compress-cache build --pixels``: the pre-resized training copy, written by stage 1 and read
by stage 2 (and every ``--data``), resumable, checksummed and covered by ``verify``."""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import storage
from cache_builder.build import BuildConfig, BuildError, build_cache
from cache_builder.cli import main as cache_cli
from cache_builder.image_list import discover_splits
from cache_builder.pixel_copy import CopyEncoder, PixelSettings, copied_size
from cache_builder.pixel_source import PixelCopy
from distill.config import resolve_config
from distill.engine import run
from distill.targets import load_targets
from tests.cache_builder.shards import TINY_BUILD, jpeg_folder_and_weights
from tests.distill.synthetic import losses, tiny

COMMON = TINY_BUILD
RUN = dict(batch_size=4, bank_size=8, epochs=2, probe_size=8)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """JPEGs of 8-24 px (short side), two classes, train 6 + val 2 per class; resnet18 weights."""
    folder, weights = jpeg_folder_and_weights(str(tmp_path_factory.mktemp("pixels")), train_per_class=6)
    return {"folder": folder, "weights": weights}


def _build(data, out, **kw) -> str:  # type: ignore[no-untyped-def]
    build_cache(BuildConfig(weights=data["weights"], data=data["folder"], out=str(out), **{**COMMON, **kw}))
    return str(out)


def _files(location: str) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(location, "*")))}


def test_the_copy_holds_every_row_resized_in_store_order_as_webdataset_shards(data, tmp_path) -> None:
    cache = _build(data, tmp_path / "cache", pixels=12)
    store = storage.open_store(os.path.join(cache, "train"))
    originals = discover_splits(data["folder"])["train"]
    copy = discover_splits(os.path.join(cache, "pixels"))
    assert set(copy) == {"train", "val"}
    train = copy["train"]
    assert train.paths == tuple(store.load_metadata().paths) == originals.paths  # row identity: the original paths
    assert train.labels == originals.labels and train.classes == ("a", "b")
    for i in range(len(train)):
        src, img = originals.decode(i), train.decode(i)
        assert (img.height, img.width) == copied_size(src.height, src.width, 12)
        assert min(img.size) <= 12 and (min(src.size) > 12 or img.size == src.size)
    assert any(min(originals.decode(i).size) > 12 for i in range(len(train)))  # the data does need resizing
    # plain WebDataset tars: one per store shard, keys = store rows, labels in .cls members
    with tarfile.open(os.path.join(cache, "pixels", "train", "shard-00001.tar")) as tar:
        names = tar.getnames()
        assert names[:2] == ["000000008.jpg", "000000008.cls"] and len(names) == 8
        assert tar.extractfile("000000009.cls").read() == str(originals.labels[9]).encode()  # type: ignore[union-attr]
    assert "pixel copy   : " in CliRunner().invoke(cache_cli, ["info", cache]).output


def test_the_encoder_resizes_the_short_side_and_keeps_small_files_as_they_are() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    small = CopyEncoder(PixelSettings(64))(img, buf.getvalue())
    assert small.data == buf.getvalue() and small.hw == (30, 40)  # nothing to resize, already JPEG: byte for byte
    big = CopyEncoder(PixelSettings(15, "png"))(img, buf.getvalue())
    assert big.hw == (15, 20) and big.source_hw == (30, 40) and Image.open(io.BytesIO(big.data)).format == "PNG"
    assert copied_size(100, 7, 5) == (71, 5) and copied_size(4, 4, 5) == (4, 4)


def test_a_lossless_copy_gives_the_loss_sequence_of_the_original_files(data, tmp_path, caplog) -> None:
    cache = _build(data, tmp_path / "cache", pixels=64, pixels_format="png")  # no image is larger: the same pixels
    with caplog.at_level(logging.INFO, logger="distill.config"):
        resolved = resolve_config(tiny(cache, str(tmp_path / "copy"), **RUN))
    assert resolved.data == os.path.join(os.path.abspath(cache), "pixels")  # the copy is used by default ...
    assert "pre-resized copy (short side <= 64 px, PNG (lossless)); --data overrides" in caplog.text
    run(resolved)
    run(tiny(cache, str(tmp_path / "files"), data=data["folder"], **RUN))  # ... and --data overrides it
    assert json.load(open(tmp_path / "files" / "config.json"))["data"] == data["folder"]
    assert len(losses(str(tmp_path / "copy"))) == 6
    assert losses(str(tmp_path / "copy")) == losses(str(tmp_path / "files"))


def test_a_jpeg_copy_trains_multi_view_caches_with_the_teachers_boxes_mapped(data, tmp_path) -> None:
    cache = _build(data, tmp_path / "cache", pixels=10, augment="rrc", views=2)
    targets = load_targets(cache, os.path.join(cache, "pixels"), torch.device("cpu"))
    assert targets.crops is not None
    full = load_targets(cache, data["folder"], torch.device("cpu")).crops
    assert full is not None
    for row in range(len(targets.images)):
        img = targets.images.decode(row)
        for top, left, h, w, _ in targets.crops[row]:
            assert 0 <= top and 0 <= left and h >= 1 and w >= 1 and top + h <= img.height and left + w <= img.width
        src = discover_splits(data["folder"])["train"].decode(row)
        np.testing.assert_allclose(targets.crops[row, :, 2] / img.height, full[row, :, 2] / src.height, atol=0.15)
    assert targets.crops[..., 4].tolist() == full[..., 4].tolist()  # the flips are the teacher's
    assert run(tiny(cache, str(tmp_path / "run"), **RUN))["finished"]
    # (a regression: evaluation during training, on by default with a val split, took the (N, K, D)
    # rows of a multi-view cache as (N, D) and failed; it now uses view 0)
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("teacher_knn_top1" in m for m in metrics) and any("knn_top1" in m for m in metrics)


def test_pixels_added_to_a_built_cache_are_written_without_the_teacher(data, tmp_path, monkeypatch) -> None:
    whole = _build(data, tmp_path / "whole", pixels=12)
    later = _build(data, tmp_path / "later")
    assert not os.path.exists(os.path.join(later, "pixels"))
    from cache_builder import embed

    monkeypatch.setattr(embed.Embedder, "__call__", lambda *a: pytest.fail("the teacher ran again"))
    _build(data, later, pixels=12)
    for split in ("train", "val"):
        assert _files(os.path.join(later, "pixels", split)) == _files(os.path.join(whole, "pixels", split))


def test_other_copy_settings_are_refused_without_overwrite(data, tmp_path) -> None:
    cache = _build(data, tmp_path / "cache", pixels=12)
    with pytest.raises(BuildError, match=r"pixels/train: holds a pre-resized copy written with short side <= 12 px, JPEG q90, "
                                         r"not short side <= 10 px.*--overwrite"):
        _build(data, cache, pixels=10)
    _build(data, cache, pixels=10, overwrite=True)
    assert PixelCopy.open(os.path.join(cache, "pixels", "train")).settings == PixelSettings(10)


def test_verify_checks_every_byte_of_the_copy_and_stage_2_refuses_a_broken_one(data, tmp_path, caplog) -> None:
    cache = _build(data, tmp_path / "cache", pixels=12)
    ok = CliRunner().invoke(cache_cli, ["verify", "--no-progress", cache])
    assert ok.exit_code == 0 and "pixels/train: OK (pre-resized copy)" in ok.output
    tar = os.path.join(cache, "pixels", "train", "shard-00001.tar")
    with open(tar, "r+b") as f:
        f.seek(600)
        f.write(b"\x00\x01")
    bad = CliRunner().invoke(cache_cli, ["verify", "--no-progress", cache])
    assert bad.exit_code == 1 and "shard-00001.tar (rows 8-11): sha256 differs from its index" in bad.output
    val_tar = os.path.join(cache, "pixels", "val", "shard-00000.tar")
    os.truncate(val_tar, 1024)  # the val copy cut short (the run lists it too): the original files are read
    with caplog.at_level(logging.WARNING, logger="distill.config"):
        assert resolve_config(tiny(cache, str(tmp_path / "run"), **RUN)).data == os.path.join(data["folder"], "train")
    assert "not using the pre-resized copy" in caplog.text and "pixels/val: the pre-resized copy is incomplete" in caplog.text
    os.truncate(tar, 1024)  # a train tar cut short: likewise
    assert resolve_config(tiny(cache, str(tmp_path / "run"), **RUN)).data == os.path.join(data["folder"], "train")
    with pytest.raises(Exception, match="the pre-resized copy is incomplete .*shard-00001.tar"):
        discover_splits(os.path.join(cache, "pixels"))


def test_a_killed_build_resumes_to_identical_bytes(data, tmp_path, python_env) -> None:
    args = ["build", "--teacher", "custom", "--arch", "resnet18", "--weights", data["weights"], "--data", data["folder"],
            "--input-size", "64", "--batch-size", "1", "--shard-size", "1", "--workers", "0", "--no-progress", "--no-knn",
            "--backend", "hdf5", "--pixels", "12"]
    cmd = [sys.executable, "-m", "cache_builder.cli"]
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    subprocess.run([*cmd, *args, "--out", reference], env=python_env, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([*cmd, *args, "--out", killed], env=python_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    copy = os.path.join(killed, "pixels", "train")
    while time.time() < deadline and len(glob.glob(os.path.join(copy, "shard-*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(glob.glob(os.path.join(copy, "shard-*.json")))
    assert 3 <= written < 12  # killed in the middle of the train split
    done = subprocess.run([*cmd, *args, "--out", killed], env=python_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for split in ("train", "val"):
        assert _files(os.path.join(killed, "pixels", split)) == _files(os.path.join(reference, "pixels", split))


def test_a_parquet_dataset_trains_from_its_copy_without_the_parquet_files(data, tmp_path) -> None:
    from tests.cache_builder.shards import folder_to_parquet

    parquet = folder_to_parquet(data["folder"], str(tmp_path / "parquet"))
    cache = str(tmp_path / "cache")
    build_cache(BuildConfig(weights=data["weights"], data=parquet, out=cache, pixels=12, **COMMON))
    os.rename(parquet, str(tmp_path / "moved"))  # stage 2 reads the copy's tars only
    assert run(tiny(cache, str(tmp_path / "run"), **RUN))["finished"]
    assert discover_splits(os.path.join(cache, "pixels"))["train"].paths[:2] == ("part-0.parquet#0", "part-0.parquet#1")
