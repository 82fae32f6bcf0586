"""The build pipeline end to end on tiny images with a small custom (resnet18) teacher."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import storage
from cache_builder.build import BuildConfig, BuildError, build_cache
from cache_builder.dataset import BadImageError
from cache_builder.image_list import discover_splits
from cache_builder.teachers import load_teacher
from tests.cache_builder import synthetic as syn
from tests.conftest import REPO_ROOT
from tests.images import write_image_folder

NOISE = dict(style="noise", size=40, jitter=8, name="img_{i:03d}")  # random RGB of 40-48 px, class_c/img_NNN
COMMON = dict(teacher="custom", arch="resnet18", input_size=32, resize_size=36, batch_size=3, shard_size=4,
              workers=0, progress=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    base = tmp_path_factory.mktemp("assets")
    data = base / "data"
    write_image_folder(str(data / "train"), 2, 7, seed=1, **NOISE)
    write_image_folder(str(data / "val"), 2, 3, seed=2, **NOISE)
    weights = str(base / "r18.pth")
    torch.save(syn.randomize_(torchvision.models.resnet18(), seed=5).state_dict(), weights)
    other = str(base / "r18b.pth")
    torch.save(syn.randomize_(torchvision.models.resnet18(), seed=6).state_dict(), other)
    return {"data": str(data), "weights": weights, "other": other}


def _cfg(assets, out, **kw) -> BuildConfig:
    return BuildConfig(**{**COMMON, "weights": assets["weights"], "data": assets["data"], "out": str(out), **kw})


def _checksums(path: str) -> list[str]:
    return [s.checksum for s in storage.open_store(path).manifest.shards]


def test_build_rows_match_teacher_on_eval_transform_in_listing_order(assets, tmp_path) -> None:
    result = build_cache(_cfg(assets, tmp_path / "c", dtype="float32"))
    listing = discover_splits(assets["data"])
    store = storage.open_store(str(tmp_path / "c" / "train"))
    assert store.complete and store.shape == (14, 512) and store.manifest.dtype == "float32"
    meta = store.load_metadata()
    assert meta.paths == list(listing["train"].paths)
    assert meta.labels.tolist() == list(listing["train"].labels)
    assert meta.index.tolist() == list(range(14))
    model, spec = load_teacher("custom", assets["weights"], arch="resnet18")
    spec = spec.with_sizes(32, 36)
    from PIL import Image

    x = torch.stack([spec.eval_transform()(Image.open(listing["train"].absolute(i))) for i in range(14)])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(x), dim=1).numpy()
    np.testing.assert_allclose(store.load_all(), expected, atol=1e-5)
    prov = store.provenance
    assert prov["teacher"] == "custom" and prov["weights_sha256"].startswith("sha256:")
    assert prov["preprocessing"]["crop"] == 32 and prov["data_fingerprint"] == listing["train"].fingerprint()
    assert storage.verify(str(tmp_path / "c" / "val")).ok
    assert result.knn_top1 is not None and 0.0 <= result.knn_top1 <= 1.0
    assert os.path.isfile(tmp_path / "c" / "build_config.json")


KILL_BEFORE_WRITE = """
    import storage.writer as w
    original = w.StoreWriter.write_shard
    count = [0]
    def write_shard(self, shard_id, *a, **k):
        count[0] += 1
        if count[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)   # dies mid-build, shard 2 never started
        return original(self, shard_id, *a, **k)
    w.StoreWriter.write_shard = write_shard
"""

KILL_DURING_WRITE = """
    import storage.location as loc
    original = loc.LocalLocation.rename
    count = [0]
    def rename(self, src, dst):
        if ".tmp-" in src:
            count[0] += 1
            if count[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)   # shard 2's data is on disk under its temp name
        return original(self, src, dst)
    loc.LocalLocation.rename = rename
"""


@pytest.mark.parametrize("patch", [KILL_BEFORE_WRITE, KILL_DURING_WRITE], ids=["before-write", "during-write"])
def test_resume_after_sigkill_gives_identical_bytes(patch, assets, tmp_path, python_env) -> None:
    reference = tmp_path / "ref"
    build_cache(_cfg(assets, reference, splits=("train",)))
    out = tmp_path / "killed"
    script = "import os, signal\n" + textwrap.dedent(patch) + textwrap.dedent(f"""
        from cache_builder.build import BuildConfig, build_cache
        build_cache(BuildConfig(**{dict(COMMON, weights=assets["weights"], data=assets["data"], out=str(out), splits=("train",))!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=python_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = storage.open_store(str(out / "train"))
    assert not partial.complete and partial.manifest.done_shards == [0, 1]
    if patch is KILL_DURING_WRITE:
        assert any(".tmp-" in name for name in os.listdir(out / "train")), "the kill should leave a temp shard behind"
    build_cache(_cfg(assets, out, splits=("train",)))
    assert not any(".tmp-" in name for name in os.listdir(out / "train"))
    assert _checksums(str(out / "train")) == _checksums(str(reference / "train"))
    assert np.array_equal(storage.open_store(str(out / "train")).load_all(), storage.open_store(str(reference / "train")).load_all())


def test_other_weights_into_existing_cache_are_refused_unless_overwrite(assets, tmp_path) -> None:
    build_cache(_cfg(assets, tmp_path / "c", splits=("val",)))
    first = _checksums(str(tmp_path / "c" / "val"))
    with pytest.raises(BuildError, match="--overwrite"):
        build_cache(_cfg(assets, tmp_path / "c", splits=("val",), weights=assets["other"]))
    with pytest.raises(BuildError, match="fingerprint"):
        build_cache(_cfg(assets, tmp_path / "c", splits=("val",), input_size=28, resize_size=32))
    build_cache(_cfg(assets, tmp_path / "c", splits=("val",), weights=assets["other"], overwrite=True))
    assert _checksums(str(tmp_path / "c" / "val")) != first
    assert storage.open_store(str(tmp_path / "c" / "val")).complete


@pytest.fixture
def data_with_bad_images(tmp_path):
    root = tmp_path / "bad"
    write_image_folder(str(root), 2, 3, seed=3, **NOISE)
    good = (root / "class_0" / "img_000.png").read_bytes()
    (root / "class_0" / "img_001.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "class_1" / "zz_garbage.jpg").write_bytes(b"not an image at all")
    return str(root)


def test_corrupt_image_stops_the_build_naming_the_file(assets, data_with_bad_images, tmp_path) -> None:
    with pytest.raises(BadImageError, match=r"class_0/img_001\.png"):
        build_cache(_cfg(assets, tmp_path / "c", data=data_with_bad_images))


def test_skip_bad_records_and_skips(assets, data_with_bad_images, tmp_path) -> None:
    result = build_cache(_cfg(assets, tmp_path / "c", data=data_with_bad_images, skip_bad=True))
    store = storage.open_store(str(tmp_path / "c" / "train"))
    skipped = store.provenance["skipped_images"]
    assert sorted(s["path"] for s in skipped) == ["class_0/img_001.png", "class_1/zz_garbage.jpg"]
    assert all(s["error"] for s in skipped) and store.provenance["images_listed"] == 7
    meta = store.load_metadata()
    assert store.n == 5 and "class_0/img_001.png" not in meta.paths
    assert meta.index.tolist() == [0, 2, 3, 4, 5]  # dataset indices of the kept images
    assert len(result.splits["train"].skipped) == 2 and storage.verify(store.path).ok


def test_file_list_input_with_root(assets, tmp_path) -> None:
    listing = discover_splits(assets["data"])["val"]
    lst = tmp_path / "list.txt"
    lines = ["# comment"] + [f"{p} {y}" for p, y in zip(reversed(listing.paths), reversed(listing.labels))]
    lst.write_text("\n".join(lines) + "\n")
    build_cache(_cfg(assets, tmp_path / "c", data=str(lst), root=listing.root))
    store = storage.open_store(str(tmp_path / "c" / "train"))
    assert store.load_metadata().paths == list(reversed(listing.paths))
    assert store.load_metadata().labels.tolist() == list(reversed(listing.labels))


def test_rrc_views_store_crop_params_that_reproduce_the_view(assets, tmp_path) -> None:
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    build_cache(_cfg(assets, tmp_path / "c", splits=("val",), views=3, augment="rrc", seed=11, dtype="float32"))
    store = storage.open_store(str(tmp_path / "c" / "val"))
    assert store.shape == (6, 3, 512) and store.manifest.columns["crops"].shape == (3, 5)
    crops = store.read_shard(0).columns["crops"]
    assert crops.shape == (4, 3, 5)
    assert not np.allclose(crops[:, 0], crops[:, 1])  # views differ
    model, spec = load_teacher("custom", assets["weights"], arch="resnet18")
    img = Image.open(discover_splits(assets["data"])["val"].absolute(1)).convert("RGB")
    top, left, h, w, flip = crops[1, 2]
    view = TF.resized_crop(TF.pil_to_tensor(img), int(top), int(left), int(h), int(w), [32, 32], antialias=True)
    if flip:
        view = TF.horizontal_flip(view)
    from cache_builder.transforms import normalize_batch

    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(normalize_batch(view[None], spec.mean, spec.std)), dim=1)[0]
    np.testing.assert_allclose(store.load_all()[1, 2], emb.numpy(), atol=2e-2)
    # same seed -> same crops
    build_cache(_cfg(assets, tmp_path / "d", splits=("val",), views=3, augment="rrc", seed=11, dtype="float32"))
    assert _checksums(str(tmp_path / "d" / "val")) == _checksums(str(tmp_path / "c" / "val"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_build_equals_one_process(assets, tmp_path, python_env) -> None:
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the two workers below: conv kernels may round differently with other thread counts
    try:
        build_cache(_cfg(assets, one, splits=("train",), device="cpu", pixels=20))
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "cache_builder.cli", "build", "--teacher", "custom", "--arch", "resnet18",
           "--weights", assets["weights"], "--data", assets["data"], "--out", str(two), "--split", "train",
           "--input-size", "32", "--resize-size", "36", "--batch-size", "3", "--shard-size", "4",
           "--workers", "0", "--device", "cpu", "--no-progress", "--pixels", "20"]
    env = dict(python_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = storage.open_store(str(two / "train"))
    assert store.complete and store.provenance["world_size"] == 2
    a, b = store.load_all().astype(np.float32), storage.open_store(str(one / "train")).load_all().astype(np.float32)
    np.testing.assert_allclose(a, b, atol=1e-3)
    assert _checksums(str(two / "train")) == _checksums(str(one / "train"))  # same bytes, shard by shard
    assert store.load_metadata().paths == storage.open_store(str(one / "train")).load_metadata().paths
    copies = [{os.path.basename(p): open(p, "rb").read() for p in glob.glob(str(d / "pixels" / "train" / "*"))} for d in (one, two)]
    assert copies[0] == copies[1] and len(copies[0]) > 3  # each rank wrote the pre-resized copy of its shards


def test_cli_build_info_verify_and_missing_weights(assets, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from cache_builder.cli import main

    runner = CliRunner()
    monkeypatch.setenv("COMPRESS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(main, ["build", "--teacher", "moco_v2_r50"])
    assert res.exit_code == 1 and str(tmp_path / "home" / "weights" / "moco_v2_r50.pth") in res.output
    assert "module.encoder_q" in res.output
    os.symlink(assets["data"], tmp_path / "data")
    res = runner.invoke(main, ["build", "--teacher", "custom", "--arch", "resnet18", "--weights", assets["weights"],
                               "--input-size", "32", "--workers", "0", "--backend", "hdf5", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert storage.open_store(str(tmp_path / "cache" / "val")).manifest.backend == "hdf5"
    res = runner.invoke(main, ["verify", "cache", "--no-progress"])
    assert res.exit_code == 0 and res.output.count("OK") == 2
    res = runner.invoke(main, ["info", "cache"])
    assert "weights_sha256" in res.output and "complete" in res.output
    res = runner.invoke(main, ["build", "--teacher", "nope", "--weights", assets["weights"]])
    assert res.exit_code == 1 and "unknown teacher 'nope'" in res.output and "known: " in res.output


def test_decode_gpu_without_cuda_falls_back_to_cpu_and_says_so(assets, tmp_path, caplog) -> None:
    import logging

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; see the gpu-marked test")
    with caplog.at_level(logging.WARNING, logger="cache_builder"):
        build_cache(_cfg(assets, tmp_path / "g", splits=("val",), decode="gpu"))
    assert "--decode gpu needs a CUDA device" in caplog.text and "decoding on the CPU" in caplog.text
    build_cache(_cfg(assets, tmp_path / "c", splits=("val",)))
    assert _checksums(str(tmp_path / "g" / "val")) == _checksums(str(tmp_path / "c" / "val"))


@pytest.mark.gpu
def test_decode_gpu_matches_cpu_decoding(tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data = tmp_path / "jpg"
    write_image_folder(str(data), 2, 4, **dict(NOISE, size=64), ext="jpg")
    weights = str(tmp_path / "w.pth")
    torch.save(syn.randomize_(torchvision.models.resnet18(), seed=5).state_dict(), weights)
    kw = dict(COMMON, weights=weights, data=str(data), device="cuda", dtype="float32", amp=False)
    build_cache(BuildConfig(**kw, out=str(tmp_path / "gpu"), decode="gpu"))
    build_cache(BuildConfig(**kw, out=str(tmp_path / "cpu")))
    a = storage.open_store(str(tmp_path / "gpu" / "train")).load_all()
    b = storage.open_store(str(tmp_path / "cpu" / "train")).load_all()
    assert (a * b).sum(axis=1).min() > 0.98  # GPU JPEG decoding and resizing differ slightly from PIL


def test_build_records_each_files_size_and_mtime_before_reading(assets, tmp_path) -> None:
    """Defect 6 (stage 2 only compared paths): every store carries each image's (size, mtime_ns)
    in column image_list.IDENTITY_COLUMN, for load_targets to compare."""
    from cache_builder import image_list

    build_cache(_cfg(assets, tmp_path / "c", splits=("val",)))
    store = storage.open_store(str(tmp_path / "c" / "val"))
    recorded = store.load_column(image_list.IDENTITY_COLUMN)
    listing = discover_splits(assets["data"])["val"]
    expected = [(os.stat(listing.absolute(i)).st_size, os.stat(listing.absolute(i)).st_mtime_ns) for i in range(len(listing))]
    assert recorded.tolist() == [list(e) for e in expected]
