"""Kill-safety, verification and error reporting of stores on disk."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from storage import StoreCorruptError, StoreFormatError, create_store, open_store, verify
from tests.conftest import REPO_ROOT
from tests.storage import writer_child
from tests.storage.conftest import unit_rows

KILL_POINTS = ["mid_data", "before_rename", "before_marker", "before_manifest"]


def run_child(path: str, backend: str, kill_point: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.storage.writer_child", path, backend, kill_point],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def reference_checksums(tmp_path_factory) -> list[str]:
    path = str(tmp_path_factory.mktemp("ref") / "store")
    writer = create_store(path, writer_child.N, writer_child.D, shard_size=writer_child.SHARD_SIZE, backend="hdf5")
    x = writer_child.rows()
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b], labels=np.arange(a, b) % 10, paths=[f"img{i}.png" for i in range(a, b)])
    return [r.checksum for r in writer.finalize().manifest.shards]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_sigkill_then_resume_gives_the_uninterrupted_store(tmp_path, backend, kill_point, python_env, reference_checksums) -> None:
    path = str(tmp_path / "store")
    killed = run_child(path, backend, kill_point, python_env)
    assert killed.returncode == -9, killed.stderr
    after_kill = open_store(path)
    done = [0, 1, 2, 3, 4] if kill_point == "before_manifest" else [0, 1]
    assert after_kill.manifest.done_shards == done
    if kill_point != "before_manifest":
        assert after_kill.status() == "incomplete: shards 0-1 done of 5 (missing 2-4)"
        assert not verify(path).ok
    resumed = run_child(path, backend, "none", python_env)
    assert resumed.returncode == 0, resumed.stderr
    store = open_store(path)
    assert store.complete
    assert [r.checksum for r in store.manifest.shards] == reference_checksums
    assert np.array_equal(store.load_all(), writer_child.rows())
    assert verify(path).ok
    assert not [e for e in os.listdir(path) if ".tmp-" in e], "temporary files left behind"


def test_sigkill_at_random_moments_always_resumes_to_identical_bytes(tmp_path, python_env, reference_checksums) -> None:
    path = str(tmp_path / "store")
    rng = random.Random(7)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "tests.storage.writer_child", path, "zarr", "none"],
                                env=python_env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.kill()
        proc.wait()
        if os.path.exists(os.path.join(path, "manifest.json")):
            open_store(path)  # always opens, complete or "incomplete: ..."
    assert run_child(path, "zarr", "none", python_env).returncode == 0
    store = open_store(path)
    assert [r.checksum for r in store.manifest.shards] == reference_checksums
    assert np.array_equal(store.load_all(), writer_child.rows())


def _written(tmp_path, backend: str = "zarr", n: int = 40, shard_size: int = 10) -> str:
    path = str(tmp_path / "s")
    writer = create_store(path, n, 16, backend=backend, shard_size=shard_size)
    x = unit_rows(n, 16)
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b])
    writer.finalize()
    return path


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_missing_shard_file_is_named(tmp_path, backend) -> None:
    import shutil

    path = _written(tmp_path, backend)
    suffix = ".zarr" if backend == "zarr" else ".h5"
    victim = os.path.join(path, f"shard-00002{suffix}")
    shutil.rmtree(victim) if os.path.isdir(victim) else os.remove(victim)
    with pytest.raises(StoreCorruptError, match=r"shard-00002.*shard 2 \(rows 20-29\) is missing"):
        open_store(path).load_all()
    report = verify(path)
    assert not report.ok and any("shard 2 (rows 20-29)" in p for p in report.problems)


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_truncated_shard_file_is_an_error_not_garbage(tmp_path, backend) -> None:
    path = _written(tmp_path, backend)
    if backend == "hdf5":
        victim = os.path.join(path, "shard-00001.h5")
    else:
        chunk_dir = os.path.join(path, "shard-00001.zarr", "embeddings", "c")
        victim = next(os.path.join(d, f) for d, _, fs in os.walk(chunk_dir) for f in fs)
    os.truncate(victim, os.path.getsize(victim) // 2)
    with pytest.raises(StoreCorruptError, match=r"shard 1 \(rows 10-19\)"):
        open_store(path).load_all()
    assert any("shard 1 (rows 10-19)" in p for p in verify(path).problems)


def test_verify_detects_flipped_bytes_nonfinite_and_norms(tmp_path) -> None:
    path = str(tmp_path / "s")
    x = unit_rows(30, 16)
    x[13, 0] = np.nan
    x[25] *= 2  # not unit norm
    writer = create_store(path, 30, 16, backend="hdf5", shard_size=10)
    for s in writer.pending_shards():
        writer.write_shard(s, x[s * 10:(s + 1) * 10])
    writer.finalize()
    import h5py

    with h5py.File(os.path.join(path, "shard-00000.h5"), "r+") as f:
        f["embeddings"][3, 3] = 0.5  # silent corruption after the checksum was recorded
    problems = verify(path).problems
    assert any(p.startswith("shard 0 (rows 0-9): checksum mismatch") for p in problems), problems
    assert any("shard 1 (rows 10-19): 1 rows hold NaN/inf, first at row 13" in p for p in problems), problems
    assert any("shard 2 (rows 20-29): 1 rows are not unit norm" in p and "row 25 with norm 2.0" in p for p in problems), problems


def test_verify_ok_store_and_duplicate_index(tmp_path) -> None:
    assert verify(_written(tmp_path)).ok
    path = str(tmp_path / "dup")
    writer = create_store(path, 4, 2, shard_size=2)
    writer.write_shard(0, unit_rows(2, 2), index=np.array([0, 1]))
    writer.write_shard(1, unit_rows(2, 2), index=np.array([1, 2]))
    writer.finalize()
    assert any("dataset index 1 appears 2 times" in p for p in verify(path).problems)


def test_newer_format_version_is_refused(tmp_path) -> None:
    path = _written(tmp_path)
    manifest_path = os.path.join(path, "manifest.json")
    obj = json.load(open(manifest_path))
    obj["format_version"] = 99
    json.dump(obj, open(manifest_path, "w"))
    with pytest.raises(StoreFormatError, match="format version 99 is newer than this package supports"):
        open_store(path)


def test_garbage_manifest_is_refused(tmp_path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="manifest is not valid JSON"):
        open_store(str(tmp_path / "s"))


def test_shared_copy_is_built_once_and_shared_by_processes(tmp_path, python_env) -> None:
    path = _written(tmp_path, n=400, shard_size=100)
    code = (
        "import sys, numpy as np\n"
        "from storage import open_store\n"
        "a = open_store(sys.argv[1]).load_shared()\n"
        "print(type(a).__name__, a.filename, float(np.asarray(a, dtype=np.float32).sum()))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, path], env=python_env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(o[0] == "memmap" for o in outs)
    assert len({o[1] for o in outs}) == 1, "every process must map the same file"
    expected = float(open_store(path).load_all().astype(np.float32).sum())
    assert all(abs(float(o[2]) - expected) < 1e-3 for o in outs)
    assert len([f for f in os.listdir(path) if f.startswith("rows-") and f.endswith(".npy")]) == 1
