"""Caches from the real stage-1 builder: multi-view caches (``--views``) and ``--skip-bad`` caches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

import storage
from cache_builder.build import BuildConfig, build_cache
from cache_builder.image_decode import decode_image
from cache_builder.image_list import discover_splits
from cache_builder.transforms import RRCViews
from distill.data import AugmentedImages, ReferenceImages
from distill.engine import run
from distill.targets import CacheMismatchError, load_targets
from tests.cache_builder.synthetic import randomize_
from tests.distill.synthetic import losses, make_images, tiny

CPU = torch.device("cpu")
BAD = "a/999.png"  # sorts after a/023.png: listing index 24, so every later cache row is shifted


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    data = make_images(str(root / "data"))
    with open(os.path.join(data, "train", *BAD.split("/")), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really an image")
    weights = str(root / "teacher.pth")
    torch.save(randomize_(torchvision.models.resnet18(), seed=5).state_dict(), weights)
    common = dict(teacher="custom", arch="resnet18", weights=weights, data=data, input_size=16, resize_size=16, batch_size=32,
                  shard_size=40, workers=0, backend="hdf5", skip_bad=True, knn=False, progress=False)
    multi = str(root / "multi")
    build_cache(BuildConfig(out=multi, views=2, augment="rrc", seed=11, **common))
    single = str(root / "single")
    build_cache(BuildConfig(out=single, **common))
    return {"root": root, "data": data, "multi": multi, "single": single}


def test_student_input_is_the_cached_view_and_the_target_its_embedding(built) -> None:
    targets = load_targets(built["multi"], built["data"], CPU)
    store = storage.open_store(os.path.join(built["multi"], "train"))
    assert targets.views == 2 and targets.crops is not None and targets.crops.shape == (96, 2, 5)
    listing_index = store.load_metadata().index
    dataset = AugmentedImages(targets.images, 16, seed=0, crops=targets.crops)
    teacher_views = RRCViews(2, 16, seed=11)  # what stage 1 ran for the teacher
    chosen = set()
    for epoch in (0, 1, 2):
        for row in (0, 23, 24, 25, 95):
            image, r, view = dataset[(epoch, row)]
            assert r == row and view in (0, 1)
            assert dataset[(epoch, row)][2] == view  # deterministic per (seed, epoch, row)
            chosen.add(view)
            pixels, params = teacher_views(decode_image(targets.images.absolute(row)), int(listing_index[row]))
            assert torch.equal(params[view], torch.from_numpy(targets.crops[row, view]))
            assert torch.equal(image, pixels[view])  # the very crop (and flip) the teacher saw
    assert chosen == {0, 1}
    rows, views = torch.tensor([3, 40, 77]), torch.tensor([1, 0, 1])
    emb = store.load_all().astype(np.float32)
    assert torch.equal(targets.gather(rows, views), torch.from_numpy(emb[[3, 40, 77], [1, 0, 1]]))
    assert torch.equal(targets.reference(rows), torch.from_numpy(emb[[3, 40, 77], 0]))
    ref, _ = ReferenceImages(targets.images, 16, crops=targets.crops)[40]
    assert torch.equal(ref, teacher_views(decode_image(targets.images.absolute(40)), int(listing_index[40]))[0][0])
    with pytest.raises(ValueError, match="needs the view of every row"):
        targets.gather(rows)


def test_multi_view_cache_trains_and_resumes_exactly(built, tmp_path) -> None:
    out = str(tmp_path / "mv")
    result = run(tiny(built["multi"], out, epochs=4))  # --data defaults to the root recorded in the cache
    assert result["finished"]
    ls = losses(out)
    assert len(ls) == 4 * 6 and all(np.isfinite(ls))
    assert sum(ls[-6:]) < sum(ls[:6])
    part = str(tmp_path / "part")
    run(tiny(built["multi"], part, epochs=4, max_steps=9))
    run(tiny(built["multi"], part, epochs=4))
    assert losses(part) == pytest.approx(ls, rel=1e-5, abs=1e-6)


def test_skip_bad_cache_trains_on_the_listing_minus_the_recorded_images(built, tmp_path) -> None:
    store = storage.open_store(os.path.join(built["single"], "train"))
    assert [s["path"] for s in store.provenance["skipped_images"]] == [BAD] and store.n == 96
    targets = load_targets(built["single"], built["data"], CPU)
    assert len(targets.images) == 96 and BAD not in targets.images.paths
    assert targets.images.paths == tuple(store.load_metadata().paths)
    assert discover_splits(built["data"])["train"].paths[24] == BAD
    out = str(tmp_path / "skip")
    assert run(tiny(built["single"], out, epochs=2))["finished"]
    assert len(losses(out)) == 2 * 6


def test_rows_missing_without_a_skip_record_are_refused(built, tmp_path) -> None:
    # a cache of the listing minus images 24 (recorded as skipped) and 31 (not recorded)
    src = storage.open_store(os.path.join(built["single"], "train"))
    meta = src.load_metadata()
    keep = [i for i in range(src.n) if i != 30]  # cache row 30 = listing index 31
    writer = storage.create_store(str(tmp_path / "cache" / "train"), len(keep), src.d, "float16", backend="hdf5", shard_size=40,
                                  provenance=dict(src.provenance))
    emb = src.load_all()
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        rows = keep[a:b]
        writer.write_shard(s, emb[rows], index=meta.index[rows], labels=meta.labels[rows], paths=[meta.paths[i] for i in rows])
    writer.finalize()
    with pytest.raises(CacheMismatchError, match=r"row 30 is 'b/007.png' in the cache but 'b/006.png' in the data") as err:
        load_targets(str(tmp_path / "cache"), built["data"], CPU)
    assert "after removing the 1 images the cache records as skipped" in str(err.value)
    # the recorded skipped image is not in this data (listed elsewhere): refused, naming it
    clean = make_images(str(tmp_path / "clean"))
    with pytest.raises(CacheMismatchError, match=r"records skipped image 'a/999.png' at listing index 24, but the data .* lists 'b/000.png'"):
        load_targets(built["single"], clean, CPU)
