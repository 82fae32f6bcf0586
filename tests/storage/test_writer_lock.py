"""Issue 12, defect 1: concurrent writers into one store (real processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from storage import StoreLockedError, create_store, open_store, verify
from tests.conftest import REPO_ROOT
from tests.storage import lock_child


def start(tmp_path, path: str, fingerprint: str, env: dict[str, str], name: str, rank: int = 0, world: int = 1,
          go: bool = False) -> tuple[subprocess.Popen, str, str]:
    ready, go_file = str(tmp_path / f"{name}.ready"), str(tmp_path / f"{name}.go")
    if go:
        open(go_file, "w").close()
    proc = subprocess.Popen([sys.executable, "-m", "tests.storage.lock_child", path, fingerprint, str(rank), str(world), ready, go_file],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready, go_file


def wait_ready(proc: subprocess.Popen, ready: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(ready):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "child never opened the store"
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def job_env(env: dict[str, str], port: str) -> dict[str, str]:
    return {**env, "TORCHELASTIC_RUN_ID": "job", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}


def test_two_builds_with_different_recipes_cannot_mix_in_one_store(tmp_path, python_env) -> None:
    path = str(tmp_path / "cache" / "train")
    a, a_ready, a_go = start(tmp_path, path, "recipe-32px", python_env, "a")
    wait_ready(a, a_ready)
    b, _, _ = start(tmp_path, path, "recipe-48px", python_env, "b", go=True)
    code, err = finish(b)
    assert code == 3, f"the second writer was not refused (exit {code}): {err}"
    assert f"is being written by pid {a.pid} on host {socket.gethostname()}" in err
    open(a_go, "w").close()
    code, err = finish(a)
    assert code == 0, err
    store = open_store(path)
    assert store.complete and store.manifest.fingerprint == "recipe-32px"
    assert np.array_equal(store.load_all(), lock_child.rows("recipe-32px"))
    assert verify(path).ok


def test_ranks_of_one_job_share_the_lock_and_write_disjoint_shards(tmp_path, python_env) -> None:
    path = str(tmp_path / "store")
    env = job_env(python_env, "29871")
    r0, r0_ready, r0_go = start(tmp_path, path, "fp", env, "r0", rank=0, world=2)
    wait_ready(r0, r0_ready)
    r1, r1_ready, r1_go = start(tmp_path, path, "fp", env, "r1", rank=1, world=2)
    wait_ready(r1, r1_ready)  # joined while rank 0 holds the lock
    other, _, _ = start(tmp_path, path, "fp", job_env(python_env, "29872"), "other", go=True)
    code, err = finish(other)
    assert code == 3 and "is being written by pid" in err, err  # another job, same fingerprint
    wrong, _, _ = start(tmp_path, path, "other-fp", env, "wrong", rank=1, world=2, go=True)
    code, err = finish(wrong)
    assert code == 3 and "same job, but with fingerprint 'fp'" in err, err
    open(r0_go, "w").close()
    open(r1_go, "w").close()
    assert finish(r0)[0] == 0 and finish(r1)[0] == 0
    writer = create_store(path, lock_child.N, lock_child.D, backend="zarr", shard_size=lock_child.SHARD_SIZE,
                          fingerprint="fp", exist_ok=True)
    assert writer.pending_shards() == []
    assert np.array_equal(writer.finalize().load_all(), lock_child.rows("fp"))


def test_overwrite_and_resume_are_refused_while_another_process_writes(tmp_path, python_env) -> None:
    path = str(tmp_path / "store")
    a, a_ready, a_go = start(tmp_path, path, "fp", python_env, "a")
    wait_ready(a, a_ready)
    kwargs = dict(backend="zarr", shard_size=lock_child.SHARD_SIZE, fingerprint="fp")
    with pytest.raises(StoreLockedError, match="refusing to replace a store that another process is writing"):
        create_store(path, lock_child.N, lock_child.D, overwrite=True, **kwargs)
    with pytest.raises(StoreLockedError, match=f"pid {a.pid}"):
        create_store(path, lock_child.N, lock_child.D, exist_ok=True, **kwargs)
    a.send_signal(signal.SIGKILL)  # a killed writer leaves no stale lock
    a.wait()
    writer = create_store(path, lock_child.N, lock_child.D, exist_ok=True, **kwargs)
    assert writer.pending_shards() == list(range(6))
    writer.close()


def test_a_marker_of_another_fingerprint_is_never_taken_as_done(tmp_path) -> None:
    path = str(tmp_path / "store")
    x = lock_child.rows("fp")
    writer = create_store(path, lock_child.N, lock_child.D, shard_size=lock_child.SHARD_SIZE, fingerprint="fp")
    writer.write_shard(0, x[:10])
    del writer  # drops its lock
    marker = os.path.join(path, "shard-00000.done")
    obj = json.load(open(marker))
    obj["fingerprint"] = "another-recipe"
    json.dump(obj, open(marker, "w"))
    assert open_store(path).manifest.done_shards == []
    writer = create_store(path, lock_child.N, lock_child.D, shard_size=lock_child.SHARD_SIZE, fingerprint="fp", exist_ok=True)
    assert 0 in writer.pending_shards()
    for s in writer.pending_shards():
        a, b = writer.shard_rows(s)
        writer.write_shard(s, x[a:b])
    assert verify(writer.finalize().path).ok


def test_temporaries_of_dead_writers_are_removed_on_the_next_run(tmp_path) -> None:
    path = str(tmp_path / "store")
    create_store(path, 20, 4, shard_size=10, fingerprint="fp")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getppid()
    os.makedirs(os.path.join(path, f"shard-00001.zarr.tmp-{dead.pid}", "embeddings"))
    open(os.path.join(path, f"manifest.json.tmp-{dead.pid}-0123abcd"), "w").close()
    open(os.path.join(path, f"shard-00000.zarr.tmp-{alive}"), "w").close()
    create_store(path, 20, 4, shard_size=10, fingerprint="fp", exist_ok=True)
    left = sorted(e for e in os.listdir(path) if ".tmp-" in e)
    assert left == [f"shard-00000.zarr.tmp-{alive}"]
