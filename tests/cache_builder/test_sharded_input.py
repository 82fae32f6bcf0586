"""Tar shards and Parquet as ``--data``: listing, offset index, bad input, and every stage run
from them with the same rows as the image-folder build."""

from __future__ import annotations

import logging
import os
import pickle
import shutil

import fsspec
import numpy as np
import pytest
import torch

import storage
from cache_builder import tar_source
from cache_builder.build import BuildConfig, build_cache
from cache_builder.image_decode import BadImageError
from cache_builder.image_list import discover_splits
from cache_builder.image_source import CACHE_LOCK, ShardError, default_cache_dir, expand_braces
from distill.engine import run
from distill.targets import CacheMismatchError, load_targets
from evaluate.config import FeaturesConfig
from evaluate.feature_set import load_feature_set
from evaluate.features import extract_features
from storage.errors import UsageError
from tests.cache_builder.shards import TINY_BUILD, folder_to_parquet, folder_to_tar, jpeg_folder_and_weights
from tests.distill.synthetic import losses, tiny

COMMON = TINY_BUILD
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_HOME", str(tmp_path / "home"))  # tar indexes and the remote shard cache


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    folder, weights = jpeg_folder_and_weights(str(base), train_per_class=5)
    return {"base": base, "folder": folder, "tar": folder_to_tar(folder, str(base / "tar"), per_shard=4),
            "parquet": folder_to_parquet(folder, str(base / "parquet")), "weights": weights}


def _build(data, source: str, out) -> str:  # type: ignore[no-untyped-def]
    build_cache(BuildConfig(weights=data["weights"], data=source, out=str(out), **COMMON))
    return str(out)


def _build_skip(data, source: str, out) -> str:  # type: ignore[no-untyped-def]
    build_cache(BuildConfig(weights=data["weights"], data=source, out=str(out), skip_bad=True, **COMMON))
    return str(out)


def test_brace_patterns_expand_with_their_zero_padding() -> None:
    assert expand_braces("t-{000..002}.tar") == ["t-000.tar", "t-001.tar", "t-002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar", "b/x-8.tar", "b/x-9.tar", "b/x-10.tar"]


def test_tar_listing_rows_labels_and_a_persisted_index(data, monkeypatch) -> None:
    folder = discover_splits(data["folder"])
    splits = discover_splits(data["tar"])
    train = splits["train"]
    assert set(splits) == {"train", "val"} and len(train) == 10 and len(splits["val"]) == 4
    assert train.paths[:5] == ("shard-000000.tar/s00000", "shard-000000.tar/s00001", "shard-000000.tar/s00002",
                               "shard-000000.tar/s00003", "shard-000001.tar/s00004")
    assert train.labels == folder["train"].labels
    assert all(train.read_bytes(i) == folder["train"].read_bytes(i) for i in range(10))
    # the index is persisted: a second listing does not scan the shards again
    monkeypatch.setattr(tar_source, "scan_tar", lambda shard: pytest.fail(f"rescanned {shard.url}"))
    again = discover_splits(data["tar"])["train"]
    assert again.paths == train.paths and again.fingerprint() == train.fingerprint()
    identities = again.source.identities(again.paths)  # type: ignore[union-attr]
    assert identities.shape == (10, 2) and (identities[:, 0] > 0).all()


def test_brace_pattern_and_file_url_list_the_same_rows(data) -> None:
    train = discover_splits(data["tar"])["train"]
    pattern = discover_splits(os.path.join(data["tar"], "train", "shard-{000000..000002}.tar"))["train"]
    assert pattern.paths == train.paths
    assert discover_splits(f"file://{data['tar']}")["train"].paths == train.paths


@pytest.fixture
def remote(request):  # type: ignore[no-untyped-def]
    """``put(local dir)`` copies a folder of split folders to a fresh ``memory://`` location (removed after)."""
    fs = fsspec.filesystem("memory")
    root = f"/remote-{request.node.name}".replace("[", "-").replace("]", "")

    def put(local: str) -> str:
        for split in sorted(os.listdir(local)):
            for name in sorted(os.listdir(os.path.join(local, split))):
                with open(os.path.join(local, split, name), "rb") as f:
                    fs.pipe(f"{root}/{split}/{name}", f.read())
        return f"memory://{root}"

    yield put
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _copies(cache: str) -> dict[str, int]:
    """The shard copies in shard cache ``cache`` (file name -> size), without filecache's metadata and the lock."""
    if not os.path.isdir(cache):
        return {}
    return {n: os.path.getsize(os.path.join(cache, n)) for n in os.listdir(cache) if n not in ("cache", CACHE_LOCK)}


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_listing_remote_shards_copies_nothing_and_a_row_read_copies_its_shard(data, remote, kind, caplog) -> None:
    local = discover_splits(data[kind])
    cache = default_cache_dir()
    with caplog.at_level(logging.WARNING, logger="cache_builder.image_source"):
        splits = discover_splits(remote(data[kind]))
    shards = 3 if kind == "tar" else 1
    assert f"{shards} remote shards (0.000 GB) are copied into {cache} as they are first read" in caplog.text
    assert not os.path.exists(cache)  # listing read footers / headers remotely: nothing copied, not even the directory
    train = splits["train"]
    assert train.paths == local["train"].paths and train.labels == local["train"].labels
    assert all(s.local is None and s.token for s in train.source.shards)  # type: ignore[union-attr]
    assert train.read_bytes(5) == local["train"].read_bytes(5)
    shard = train.source.shard(train.paths[5].split("/")[0].split("#")[0], train.paths[5])  # type: ignore[union-attr]
    assert list(_copies(cache).values()) == [shard.size]  # the one shard of that row, whole
    assert train.read_bytes(6) == local["train"].read_bytes(6) and len(_copies(cache)) == 1
    assert splits["val"].read_bytes(1) == local["val"].read_bytes(1) and len(_copies(cache)) == 2


def test_a_second_listing_of_an_unchanged_remote_tar_does_not_rescan_it(data, remote, monkeypatch) -> None:
    url = remote(data["tar"])
    first = discover_splits(url)["train"]
    scan = tar_source.scan_tar
    monkeypatch.setattr(tar_source, "scan_tar", lambda shard: pytest.fail(f"rescanned {shard.url}"))
    again = discover_splits(url)["train"]
    assert again.paths == first.paths and again.fingerprint() == first.fingerprint()
    assert not os.path.exists(default_cache_dir())
    fs = fsspec.filesystem("memory")
    changed = url.removeprefix("memory://") + "/train/shard-000001.tar"
    fs.pipe(changed, fs.cat(changed))  # rewritten, same bytes: a new change token ("created")
    scanned: list[str] = []
    monkeypatch.setattr(tar_source, "scan_tar", lambda shard: scanned.append(shard.name) or scan(shard))
    assert discover_splits(url)["train"].paths == first.paths and scanned == ["shard-000001.tar"]


def test_a_changed_remote_shard_is_refused_by_stage_2(data, remote, tmp_path) -> None:
    url = remote(data["tar"])
    cache = _build(data, url, tmp_path / "cache")
    assert len(_copies(default_cache_dir())) == 4  # the build read every row: every shard was copied once
    fs = fsspec.filesystem("memory")
    shard = url.removeprefix("memory://") + "/train/shard-000002.tar"
    fs.pipe(shard, fs.cat(shard) + b"\0" * 10240)  # same members, a bigger shard
    with pytest.raises(CacheMismatchError, match="shards of .* changed since cache"):
        load_targets(cache, url, torch.device("cpu"))


class _Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, images) -> None:  # type: ignore[no-untyped-def]
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        return i, self.images.read_bytes(i)


def test_dataloader_workers_read_rows_of_remote_shards(data, remote) -> None:
    local = discover_splits(data["tar"])["train"]
    train = discover_splits(remote(data["tar"]))["train"]
    assert pickle.loads(pickle.dumps(train)).paths == train.paths
    loader = torch.utils.data.DataLoader(_Rows(train), batch_size=None, num_workers=2, multiprocessing_context="fork")
    rows = dict(loader)  # each worker copies the shards it reads itself (under the cache's lock)
    assert sorted(rows) == list(range(len(local)))
    assert all(rows[i] == local.read_bytes(i) for i in rows)
    assert sorted(_copies(default_cache_dir()).values()) == sorted(s.size for s in train.source.shards)  # type: ignore[union-attr]


def test_build_from_tar_and_parquet_equals_the_folder_build_row_for_row(data, tmp_path) -> None:
    ref = storage.open_store(os.path.join(_build(data, data["folder"], tmp_path / "folder"), "train"))
    expected = ref.load_all()
    for kind in ("tar", "parquet"):
        store = storage.open_store(os.path.join(_build(data, data[kind], tmp_path / kind), "train"))
        np.testing.assert_array_equal(store.load_all(), expected)
        meta = store.load_metadata()
        assert meta.labels.tolist() == ref.load_metadata().labels.tolist()
        assert meta.paths[0] == ("shard-000000.tar/s00000" if kind == "tar" else "part-0.parquet#0")
        assert store.provenance["data_source"]["kind"] == kind
        assert os.path.isdir(os.path.join(tmp_path / kind, "val"))


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_distill_runs_from_shards(data, tmp_path, kind) -> None:
    cache = _build(data, data[kind], tmp_path / "cache")
    out = str(tmp_path / "run")
    assert run(tiny(cache, out, batch_size=4, bank_size=8, epochs=1, probe_size=8))["finished"]  # --data: from the cache
    assert len(losses(out)) == 2 and all(np.isfinite(losses(out)))
    again = str(tmp_path / "again")
    run(tiny(cache, again, batch_size=4, bank_size=8, epochs=1, probe_size=8, data=data[kind], workers=1))
    assert losses(again) == losses(out)  # the same batches through a DataLoader worker (pickled source)


def test_eval_features_from_shards_equal_the_folder_features(data, tmp_path) -> None:
    def features(source: str, out: str):  # type: ignore[no-untyped-def]
        return load_feature_set(extract_features(FeaturesConfig(model="torchvision:resnet18", data=source, out=out,
                                                                image_size=16, batch_size=8))["out"])

    expected = features(data["folder"], str(tmp_path / "folder"))
    for kind in ("tar", "parquet"):
        fs = features(data[kind], str(tmp_path / kind))
        np.testing.assert_allclose(fs.train.features, expected.train.features, atol=1e-6)
        np.testing.assert_allclose(fs.val.features, expected.val.features, atol=1e-6)
        np.testing.assert_array_equal(fs.val.labels, expected.val.labels)
        assert fs.train.paths[0] == ("train/shard-000000.tar/s00000" if kind == "tar" else "train/part-0.parquet#0")


def test_a_changed_shard_is_refused_by_stage_2(data, tmp_path) -> None:
    tar = shutil.copytree(data["tar"], str(tmp_path / "tar"))
    cache = _build(data, tar, tmp_path / "cache")
    shard = os.path.join(tar, "train", "shard-000002.tar")
    with open(shard, "ab") as f:
        f.write(b"\0" * 10240)  # same members, a bigger shard
    with pytest.raises(CacheMismatchError, match="shards of .* changed since cache"):
        load_targets(cache, tar, torch.device("cpu"))


def test_bad_members_and_shards_name_shard_and_key(data, tmp_path) -> None:
    tar = shutil.copytree(data["tar"], str(tmp_path / "tar"))
    shard = os.path.join(tar, "train", "shard-000001.tar")
    images = discover_splits(tar)["train"]
    offset = int(images.source.indexes["shard-000001.tar"].offsets[1])  # type: ignore[union-attr]
    with open(shard, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 64)  # the JPEG header of sample s00005
    with pytest.raises(BadImageError, match=r"train/shard-000001\.tar/s00005: cannot decode image"):
        discover_splits(tar)["train"].decode(5)
    store = storage.open_store(os.path.join(_build_skip(data, tar, tmp_path / "skip"), "train"))
    assert store.n == 9 and "shard-000001.tar/s00005" not in store.load_metadata().paths
    assert [r["path"] for r in store.provenance["skipped_images"]] == ["shard-000001.tar/s00005"]
    with open(shard, "r+b") as f:
        f.truncate(700)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: not a readable tar shard"):
        discover_splits(tar)
    with open(os.path.join(tar, "train", "shard-000001.tar"), "wb") as f:
        f.write(b"not a tar at all" * 100)
    with pytest.raises(ShardError, match=r"shard-000001\.tar"):
        discover_splits(tar)


def test_compress_eval_features_cli_reads_a_file_url_of_shards(data, tmp_path) -> None:
    from click.testing import CliRunner

    from evaluate.cli import main

    out = str(tmp_path / "f")
    result = CliRunner().invoke(main, ["features", "--model", "torchvision:resnet18", "--data", f"file://{data['tar']}",
                                       "--out", out, "--image-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_feature_set(out).val.paths[0] == "val/shard-000000.tar/s00000"
    bad = CliRunner().invoke(main, ["features", "--model", "torchvision:resnet18", "--data", data["parquet"],
                                    "--out", str(tmp_path / "g"), "--image-column", "nope"])
    assert bad.exit_code == 2 and "--image-column 'nope'" in bad.output


def test_parquet_columns_raw_bytes_and_bad_column_names(data, tmp_path) -> None:
    raw = folder_to_parquet(data["folder"], str(tmp_path / "raw"), struct=False)
    listing = discover_splits(raw)["train"]
    assert listing.paths[3] == "part-0.parquet#3" and listing.labels == discover_splits(data["folder"])["train"].labels
    assert listing.read_bytes(4) == discover_splits(data["folder"])["train"].read_bytes(4)
    with pytest.raises(UsageError, match="--image-column 'pixels'.*columns: image, label"):
        discover_splits(raw, image_column="pixels")
    with pytest.raises(UsageError, match="--label-column 'y'"):
        discover_splits(raw, label_column="y")
    unlabelled = discover_splits(raw, label_column=None, image_column="image")["train"]
    assert unlabelled.labels == listing.labels  # 'label' is found by name


def test_cluster_grid_thumbnails_come_from_shards_too(data, tmp_path) -> None:
    from PIL import Image

    from evaluate.cluster_grid import save_cluster_grid

    grids = {}
    for kind in ("folder", "tar", "parquet"):
        fs = load_feature_set(extract_features(FeaturesConfig(model="torchvision:resnet18", data=data[kind],
                                                              out=str(tmp_path / kind), image_size=16, batch_size=8))["out"])
        clusters = np.arange(len(fs.train.paths)) % 2
        path = save_cluster_grid(str(tmp_path / f"{kind}.png"), data[kind], list(fs.train.paths), clusters,
                                 n_clusters=2, per_cluster=3, thumb=8)
        grids[kind] = np.asarray(Image.open(path))
    np.testing.assert_array_equal(grids["tar"], grids["folder"])  # the same rows, read from the shards
    np.testing.assert_array_equal(grids["parquet"], grids["folder"])


def test_the_demo_data_as_tar_shards_and_parquet_gives_the_folder_cache_row_for_row(data, tmp_path) -> None:
    """The demo's Fashion-MNIST images (28 px grey PNGs) as tar shards and as Parquet: the same
    embeddings row for row as their image folder, and distillation and evaluation run from both."""
    from demo.fashion_mnist import Split, load_subset
    from demo.image_folder import export_split

    train, val = load_subset()
    folder = str(tmp_path / "demo")
    export_split(Split(train.images[:24], train.labels[:24]), os.path.join(folder, "train"))
    export_split(Split(val.images[:8], val.labels[:8]), os.path.join(folder, "val"))
    sources = {"folder": folder, "tar": folder_to_tar(folder, str(tmp_path / "tar"), per_shard=10),
               "parquet": folder_to_parquet(folder, str(tmp_path / "parquet"))}
    stores = {}
    for kind, source in sources.items():
        build_cache(BuildConfig(weights=data["weights"], data=source, out=str(tmp_path / f"cache-{kind}"), **TINY_BUILD))
        stores[kind] = storage.open_store(str(tmp_path / f"cache-{kind}" / "train"))
    for kind in ("tar", "parquet"):
        np.testing.assert_array_equal(stores[kind].load_all(), stores["folder"].load_all())
        assert stores[kind].load_metadata().labels.tolist() == stores["folder"].load_metadata().labels.tolist()
        out = str(tmp_path / f"run-{kind}")
        assert run(tiny(str(tmp_path / f"cache-{kind}"), out, batch_size=8, bank_size=8, epochs=1, probe_size=8))["finished"]
        features = str(tmp_path / f"features-{kind}")
        extract_features(FeaturesConfig(model=out, data=sources[kind], out=features, image_size=16, progress=False))
        assert len(load_feature_set(features).val.paths) == 8
