"""Issue 12, defects 4 and 5: a manifest whose shards do not cover ``n``, deleted/truncated shards,
and bytes changed after writing are refused at open/load, naming the field or the shard."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from storage import StoreCorruptError, StoreFormatError, create_store, open_store, verify
from tests.storage.conftest import unit_rows

N, D, SHARD = 40, 16, 10
REBUILD = "rerun the `compress-cache build` command that built it"


def written(tmp_path, backend: str = "zarr") -> str:
    path = str(tmp_path / "s")
    writer = create_store(path, N, D, backend=backend, shard_size=SHARD, fingerprint="fp")
    x = unit_rows(N, D)
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], labels=np.arange(a, b) % 4, paths=[f"c/{i}.png" for i in range(a, b)])
    writer.finalize()
    return path


def edit_manifest(path: str, edit) -> None:  # type: ignore[no-untyped-def]
    p = os.path.join(path, "manifest.json")
    obj = json.load(open(p))
    edit(obj)
    json.dump(obj, open(p, "w"))


def shard_file(path: str, backend: str, shard: int) -> str:
    return os.path.join(path, f"shard-{shard:05d}{'.zarr' if backend == 'zarr' else '.h5'}")


def chunk_file(path: str, shard: int, array: str) -> str:
    root = os.path.join(path, f"shard-{shard:05d}.zarr", array, "c")
    return next(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


# ---- defect 4: the manifest's n and shard ranges -----------------------------------------

def _gap(m: dict) -> None:
    m["shards"][1].update(start=12, rows=8)


MANIFEST_EDITS = {
    "n beyond the shards": (lambda m: m.update(n=50), r"manifest field 'n' is 50 but the 4 shards .* cover rows \[0, 40\)"),
    "n below the shards": (lambda m: m.update(n=25), "manifest field 'n' is 25"),
    "a gap between shards": (_gap, r"manifest field 'shards' entry 1 is shard 1 rows \[12, 20\), expected shard 1 rows \[10, 20\)"),
    "an unknown dtype": (lambda m: m.update(dtype="int8"), "manifest field 'dtype' is 'int8'"),
    "a zero dimension": (lambda m: m.update(d=0), "manifest field 'd' is 0"),
    "an older format version": (lambda m: m.update(format_version=1), "format version 1 is not supported"),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_an_inconsistent_manifest_is_refused_naming_the_field(tmp_path, case) -> None:
    edit, message = MANIFEST_EDITS[case]
    path = written(tmp_path)
    edit_manifest(path, edit)
    with pytest.raises(StoreFormatError, match=message):
        open_store(path)


# ---- defect 5: missing/truncated shards at open, checksums at load -------------------------

@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_deleted_shard_fails_at_open_with_a_rebuild_hint(tmp_path, backend) -> None:
    path = written(tmp_path, backend)
    victim = shard_file(path, backend, 2)
    shutil.rmtree(victim) if os.path.isdir(victim) else os.remove(victim)
    with pytest.raises(StoreCorruptError, match=r"shard-00002.*shard 2 \(rows 20-29\) is missing") as e:
        open_store(path)
    assert REBUILD in str(e.value) and "compress-cache verify" not in str(e.value)
    problems = verify(path).problems
    assert any("shard 2 (rows 20-29)" in p and REBUILD in p for p in problems), problems


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_truncated_shard_fails_at_open_naming_it(tmp_path, backend) -> None:
    path = written(tmp_path, backend)
    victim = shard_file(path, backend, 1) if backend == "hdf5" else chunk_file(path, 1, "embeddings")
    os.truncate(victim, os.path.getsize(victim) - 7)
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 10-19\) holds \d+ bytes, \d+ were written"):
        open_store(path)


def test_resume_rewrites_a_deleted_shard(tmp_path) -> None:
    path = written(tmp_path)
    reference = open_store(path).load_all()
    shutil.rmtree(shard_file(path, "zarr", 2))
    writer = create_store(path, N, D, shard_size=SHARD, fingerprint="fp", exist_ok=True)
    assert writer.pending_shards() == [2]
    assert not open_store(path).complete  # the manifest no longer claims the shard
    writer.write_shard(2, reference[20:30], labels=np.arange(20, 30) % 4, paths=[f"c/{i}.png" for i in range(20, 30)])
    assert np.array_equal(writer.finalize().load_all(), reference)
    assert verify(path).ok


def test_one_flipped_embedding_byte_fails_load_all_naming_the_shard(tmp_path) -> None:
    path = written(tmp_path)
    victim = chunk_file(path, 3, "embeddings")
    data = bytearray(open(victim, "rb").read())
    data[5] ^= 0x10
    open(victim, "wb").write(data)
    store = open_store(path)  # same size: only the checksum can tell
    expected = r"shard-00003.zarr: shard 3 \(rows 30-39\): the 'embeddings' array does not match its recorded CRC32C"
    with pytest.raises(StoreCorruptError, match=expected):
        store.load_all()
    with pytest.raises(StoreCorruptError, match=r"shard 3 \(rows 30-39\)"):
        store.load_all("torch")
    assert store.load_all(verify=False).shape == (N, D)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_one_flipped_label_byte_fails_loading_the_labels(tmp_path, backend) -> None:
    path = written(tmp_path, backend)
    if backend == "hdf5":
        with h5py.File(shard_file(path, backend, 1), "r+") as f:
            f["label"][3] = 2  # 13 % 4 == 1
    else:
        victim = chunk_file(path, 1, "label")
        data = bytearray(open(victim, "rb").read())
        data[3 * 8] ^= 0x03
        open(victim, "wb").write(data)
    store = open_store(path)
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 10-19\): the 'labels' array does not match its recorded CRC32C"):
        store.load_metadata()
    assert store.load_metadata(verify=False).labels[13] == 2


def test_flipped_path_and_column_bytes_are_detected(tmp_path) -> None:
    path = str(tmp_path / "s")
    writer = create_store(path, 20, 4, backend="hdf5", shard_size=10, columns={"crop": ((2,), "float32")})
    for s in writer.pending_shards():
        writer.write_shard(s, unit_rows(10, 4), paths=[f"p{i}" for i in range(10)], columns={"crop": np.ones((10, 2), np.float32)})
    writer.finalize()
    with h5py.File(os.path.join(path, "shard-00001.h5"), "r+") as f:
        f["columns/crop"][0, 0] = 2.0
        f["path_bytes"][0] = ord("q")
    store = open_store(path)
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 10-19\): the 'column:crop' array"):
        store.load_column("crop")
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 10-19\): the 'path_bytes' array"):
        store.load_metadata()
    assert any("CRC32C mismatch in column:crop, path_bytes" in p for p in verify(path).problems)


def test_crc_blocks_are_checked_as_rows_arrive_and_name_the_rows(tmp_path, monkeypatch) -> None:
    from storage import shard_block
    from storage.backends import hdf5_backend

    monkeypatch.setattr(shard_block, "CRC_BLOCK_BYTES", 64)  # 2 rows of 16 float16 per block
    monkeypatch.setattr(hdf5_backend, "READ_BLOCK_BYTES", 96)  # 3 rows per read: blocks straddle reads
    path = written(tmp_path, "hdf5")
    assert len(open_store(path).manifest.shards[0].crc32c["embeddings"]) == 5
    assert np.array_equal(open_store(path).load_all(), unit_rows(N, D))
    with h5py.File(shard_file(path, "hdf5", 2), "r+") as f:
        f["embeddings"][7, 0] = np.float16(0.125)
    with pytest.raises(StoreCorruptError, match=r"shard 2 \(rows 20-29\): the 'embeddings' array .*its rows 6-7 of the shard"):
        open_store(path).load_all()
