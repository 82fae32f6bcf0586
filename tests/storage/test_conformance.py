"""One conformance suite, run unchanged against every backend."""

from __future__ import annotations

import numpy as np
import pytest

import storage
from storage import (
    NotAStoreError,
    ShardWriteError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    create_store,
    open_store,
)
from tests.storage.conftest import unit_rows


def write_all(path: str, backend: str, x: np.ndarray, shard_size: int, **kwargs):
    n = x.shape[0]
    writer = create_store(path, n, x.shape[-1], str(x.dtype), backend=backend, shard_size=shard_size,
                          views=x.shape[1] if x.ndim == 3 else None, **kwargs)
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], index=np.arange(a, b) + 1000, labels=np.arange(a, b) % 7,
                           paths=[f"cls{i % 7}/img_{i}é.png" for i in range(a, b)])
    return writer


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_rows_and_metadata(store_target, dtype) -> None:
    path, backend = store_target
    x = unit_rows(103, 24, dtype=dtype)
    store = write_all(path, backend, x, shard_size=25).finalize(provenance={"teacher": "t"})
    assert store.complete and store.shape == (103, 24) and store.dtype == np.dtype(dtype)
    reopened = open_store(path)
    assert np.array_equal(reopened.load_all(), x)
    meta = reopened.load_metadata()
    assert np.array_equal(meta.index, np.arange(103) + 1000)
    assert np.array_equal(meta.labels, np.arange(103) % 7)
    assert meta.paths[5] == "cls5/img_5é.png" and len(meta.paths) == 103
    assert reopened.provenance["teacher"] == "t"
    assert reopened.manifest.backend == backend
    assert [s.rows for s in reopened.manifest.shards] == [25, 25, 25, 25, 3]


def test_load_all_as_torch(store_target) -> None:
    torch = pytest.importorskip("torch")
    path, backend = store_target
    x = unit_rows(40, 8)
    write_all(path, backend, x, shard_size=16).finalize()
    t = open_store(path).load_all("torch", pin_memory=False)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float16 and t.is_contiguous()
    assert np.array_equal(t.numpy(), x)


def test_views_axis_and_extra_columns(store_target) -> None:
    path, backend = store_target
    x = unit_rows(30, 3, 16, dtype="float32")
    crops = np.random.default_rng(1).random((30, 3, 5)).astype(np.float32)
    writer = create_store(path, 30, 16, "float32", backend=backend, shard_size=12, views=3,
                          columns={"crop": ((3, 5), "float32")})
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], columns={"crop": crops[a:b]})
    store = writer.finalize()
    assert store.shape == (30, 3, 16)
    assert np.array_equal(store.load_all(), x)
    assert np.array_equal(store.load_column("crop"), crops)
    assert storage.verify(path).ok


def test_empty_split_store(store_target) -> None:
    path, backend = store_target
    store = create_store(path, 0, 8, backend=backend).finalize()
    assert store.complete and store.load_all().shape == (0, 8)


def test_incomplete_store_opens_and_refuses_training_reads(store_target) -> None:
    path, backend = store_target
    x = unit_rows(50, 8)
    writer = create_store(path, 50, 8, backend=backend, shard_size=10)
    for s in (0, 1, 3):
        writer.write_shard(s, x[s * 10:(s + 1) * 10])
    store = open_store(path)
    assert not store.complete
    assert store.status() == "incomplete: shards 0-1, 3 done of 5 (missing 2, 4)"
    with pytest.raises(StoreIncompleteError, match="incomplete: shards 0-1, 3 done of 5"):
        store.load_all()
    with pytest.raises(StoreIncompleteError, match="shards 2, 4 are not written"):
        writer.finalize()
    # resume: a new writer sees what is done and completes the rest
    resumed = create_store(path, 50, 8, backend=backend, shard_size=10, exist_ok=True)
    assert resumed.pending_shards() == [2, 4]
    for s in resumed.pending_shards():
        resumed.write_shard(s, x[s * 10:(s + 1) * 10])
    assert np.array_equal(resumed.finalize().load_all(), x)


def test_completed_shards_are_never_rewritten(store_target) -> None:
    path, backend = store_target
    x = unit_rows(20, 8)
    writer = create_store(path, 20, 8, backend=backend, shard_size=10)
    writer.write_shard(0, x[:10])
    with pytest.raises(ShardWriteError, match="shard 0 is already complete"):
        writer.write_shard(0, x[10:])
    assert np.array_equal(open_store(path).read_shard(0).embeddings, x[:10])


def test_bad_batches_are_refused_with_clear_errors(store_target) -> None:
    path, backend = store_target
    writer = create_store(path, 20, 8, "float16", backend=backend, shard_size=10)
    with pytest.raises(ShardWriteError, match="D is 9, the store holds D=8"):
        writer.write_shard(0, np.zeros((10, 9), np.float16))
    with pytest.raises(ShardWriteError, match="dtype float32, the store holds float16"):
        writer.write_shard(0, np.zeros((10, 8), np.float32))
    with pytest.raises(ShardWriteError, match="got 7 rows, a shard is written whole"):
        writer.write_shard(0, np.zeros((7, 8), np.float16))
    with pytest.raises(ShardWriteError, match="shard 2 does not exist.*writing past N"):
        writer.write_shard(2, np.zeros((10, 8), np.float16))
    with pytest.raises(ShardWriteError, match="got 3 paths for 10 rows"):
        writer.write_shard(0, np.zeros((10, 8), np.float16), paths=["a", "b", "c"])


def test_resume_with_different_layout_is_refused(store_target) -> None:
    path, backend = store_target
    create_store(path, 20, 8, backend=backend, shard_size=10, fingerprint="teacher-a")
    with pytest.raises(StoreMismatchError, match="fingerprint: existing 'teacher-a', requested 'teacher-b'"):
        create_store(path, 20, 8, backend=backend, shard_size=10, fingerprint="teacher-b", exist_ok=True)
    with pytest.raises(StoreMismatchError, match="d: existing 8, requested 16"):
        create_store(path, 20, 16, backend=backend, shard_size=10, fingerprint="teacher-a", exist_ok=True)
    with pytest.raises(StoreError, match="a store already exists"):
        create_store(path, 20, 8, backend=backend, shard_size=10, fingerprint="teacher-a")
    fresh = create_store(path, 20, 16, backend=backend, shard_size=10, overwrite=True)
    assert fresh.manifest.d == 16 and fresh.pending_shards() == [0, 1]


def test_same_rows_give_same_checksums_on_every_backend(store_target) -> None:
    path, backend = store_target
    x = unit_rows(30, 8)
    store = write_all(path, backend, x, shard_size=10).finalize()
    # the checksum is over canonical bytes, so it is a backend-independent constant of the data
    mem = write_all(f"memory://reference-{backend}-{abs(hash(path))}", "memory", x, shard_size=10).finalize()
    assert [s.checksum for s in store.manifest.shards] == [s.checksum for s in mem.manifest.shards]


def test_opening_something_that_is_not_a_store(tmp_path) -> None:
    with pytest.raises(NotAStoreError, match="does not exist"):
        open_store(str(tmp_path / "nothing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match="not a CompRess store"):
        open_store(str(tmp_path / "plain"))
    create_store(str(tmp_path / "cache" / "train"), 4, 2).write_shard(0, np.ones((4, 2), np.float16))
    with pytest.raises(NotAStoreError, match="holds the split stores train"):
        open_store(str(tmp_path / "cache"))


def test_writing_into_a_foreign_directory_is_refused(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("precious")
    with pytest.raises(NotAStoreError, match="not empty and holds no CompRess store"):
        create_store(str(tmp_path / "d"), 4, 2)
    assert (tmp_path / "d" / "thesis.tex").read_text() == "precious"


def test_unknown_backend_and_hdf5_on_url(tmp_path) -> None:
    with pytest.raises(ValueError, match="known backends: zarr, hdf5, memory"):
        create_store(str(tmp_path / "s"), 4, 2, backend="parquet")
    with pytest.raises(ValueError, match="hdf5' needs a local path"):
        create_store("memory://x-hdf5", 4, 2, backend="hdf5")


@pytest.mark.parametrize("views", [None, 3])
def test_zarr_raw_chunk_fast_path_equals_zarr_decoding(tmp_path, monkeypatch, views) -> None:
    from storage.backends import zarr_backend

    shape = (37, 16) if views is None else (37, views, 16)
    x = unit_rows(*shape)
    monkeypatch.setattr(zarr_backend, "TARGET_CHUNK_BYTES", 10 * x[0].nbytes)  # several chunks per shard
    path = str(tmp_path / "s")
    writer = create_store(path, 37, 16, backend="zarr", shard_size=25, views=views)
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b])
    store = writer.finalize()
    fast = store.load_all()
    monkeypatch.setattr(zarr_backend, "_is_raw_row_chunked", lambda arr: False)
    slow = store.load_all()
    assert np.array_equal(fast, x) and np.array_equal(slow, x)


def test_chunks_split_shards_evenly() -> None:
    from storage.backends.zarr_backend import chunk_rows

    assert chunk_rows(256, 200_000) == 50_000  # 4 equal chunks of 12.8 MB, no padded edge chunk
    assert chunk_rows(16384, 10) == 10
    assert chunk_rows(1, 100) == 100
