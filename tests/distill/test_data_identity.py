"""Stage 2 refuses images whose contents changed since the cache was built (issue 12, defect 6):
``compress-cache build`` records each file's size and mtime (column ``file_identity``) and
``load_targets`` compares them, naming the first changed row, unless ``trust_data``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from cache_builder.build import BuildConfig, build_cache
from cache_builder.image_list import IDENTITY_COLUMN, discover_splits, file_identities
from distill.targets import CacheMismatchError, load_targets
from storage import open_store
from tests.cache_builder.synthetic import randomize_
from tests.images import image_pixels, write_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    data = str(root / "data")
    write_image_folder(data, ("a", "b"), 6, splits=("train",), size=16)
    weights = str(root / "teacher.pth")
    torch.save(randomize_(torchvision.models.resnet18(), seed=5).state_dict(), weights)
    cache = str(root / "cache")
    build_cache(BuildConfig(teacher="custom", arch="resnet18", weights=weights, data=data, out=cache, input_size=16,
                            resize_size=16, batch_size=8, shard_size=5, workers=0, backend="hdf5", knn=False, progress=False))
    return data, cache


def test_the_build_records_every_files_size_and_mtime(built) -> None:
    data, cache = built
    store = open_store(os.path.join(cache, "train"))
    recorded = store.load_column(IDENTITY_COLUMN)
    np.testing.assert_array_equal(recorded, file_identities(discover_splits(data)["train"]))
    assert load_targets(cache, data, CPU).embeddings.shape[0] == 12


def test_an_image_rewritten_with_other_contents_is_refused(built, tmp_path) -> None:
    data, cache = built
    images = discover_splits(data)["train"]
    path = images.absolute(7)
    before = os.stat(path)
    other = image_pixels(np.random.default_rng(99), 0, 16, 16)  # other contents (the same size as a PNG may well be)
    from PIL import Image

    Image.fromarray(other).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a later write, whatever the clock's granularity
    with pytest.raises(CacheMismatchError, match=r"b/001\.png \(row 7\) changed since cache .* was built: recorded size") as err:
        load_targets(cache, data, CPU)
    assert f"mtime_ns {before.st_mtime_ns};" in str(err.value) and "--trust-data" in str(err.value)
    assert load_targets(cache, data, CPU, trust_data=True).embeddings.shape[0] == 12  # skipped on request


def test_a_cache_without_recorded_identities_is_refused(tmp_path) -> None:
    from storage import create_store

    data = str(tmp_path / "data")
    write_image_folder(data, ("a",), 3, splits=("train",), size=8)
    images = discover_splits(data)["train"]
    writer = create_store(str(tmp_path / "cache" / "train"), 3, 4, "float32", shard_size=3)
    writer.write_shard(0, np.eye(3, 4, dtype=np.float32), labels=np.zeros(3, np.int64), paths=list(images.paths))
    writer.finalize()
    with pytest.raises(CacheMismatchError, match="records no file sizes and mtimes"):
        load_targets(str(tmp_path / "cache"), data, CPU)
    assert load_targets(str(tmp_path / "cache"), data, CPU, trust_data=True).embeddings.shape == (3, 4)


def test_a_changed_embedding_is_refused_at_load_unless_no_verify_load(built, tmp_path) -> None:
    import shutil

    import h5py

    from storage.errors import StoreCorruptError

    data, cache = built
    copy = str(tmp_path / "cache")
    shutil.copytree(cache, copy)
    with h5py.File(os.path.join(copy, "train", "shard-00001.h5"), "r+") as f:
        f["embeddings"][2, 0] = -f["embeddings"][2, 0] + 0.5  # same file size: only the checksum can tell
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 5-9\): the 'embeddings' array does not match its recorded CRC32C"):
        load_targets(copy, data, CPU, trust_data=True)  # (an earlier test rewrote an image)
    assert load_targets(copy, data, CPU, trust_data=True, verify_load=False).embeddings.shape[0] == 12  # skipped on request
