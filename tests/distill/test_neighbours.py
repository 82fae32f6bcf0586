"""The teacher neighbour table (``--bank static-faiss``): exact, resumable, refused when stale."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from distill.cli import main
from distill.neighbours import NeighboursMismatchError, compute_neighbours, drop_self, ensure_neighbours, load_neighbours, neighbour_dir
from storage import open_store
from tests.distill.synthetic import make_cache, make_images


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("neighbours")
    data = make_images(str(root / "data"), per_class=10)
    return make_cache(str(root / "cache"), data)


def brute_force(emb: np.ndarray, k: int) -> np.ndarray:
    """Sort every row's inner products with the other rows: score desc, then row asc."""
    sims = emb.astype(np.float32) @ emb.astype(np.float32).T
    out = []
    for i in range(len(emb)):
        others = [j for j in range(len(emb)) if j != i]
        out.append(sorted(others, key=lambda j: (-sims[i, j], j))[:k])
    return np.array(out)


def test_table_equals_brute_force_and_is_reused(cache) -> None:
    store = os.path.join(cache, "train")
    table = compute_neighbours(store, 5, block_rows=7, database_block=13)
    emb = open_store(store).load_all()
    assert table.rows.shape == (40, 5) and table.rows.dtype == np.int32
    np.testing.assert_array_equal(table.rows, brute_force(emb, 5))
    assert not any(name.startswith("block-") for name in os.listdir(table.path))
    calls = []
    again = compute_neighbours(store, 5, block_rows=7, on_block=lambda b, n: calls.append(b))
    assert calls == [] and np.array_equal(again.rows, table.rows)  # reused, not recomputed


def test_kill_mid_run_then_resume_computes_only_missing_blocks(cache) -> None:
    store = os.path.join(cache, "train")

    def die_after_two(b: int, n: int) -> None:
        if b == 1:
            raise KeyboardInterrupt  # as a kill between blocks: two whole blocks on disk

    with pytest.raises(KeyboardInterrupt):
        compute_neighbours(store, 3, block_rows=8, on_block=die_after_two)
    directory = neighbour_dir(store, 3)
    assert sorted(f for f in os.listdir(directory) if f.startswith("block-")) == ["block-00000.npy", "block-00001.npy"]
    with pytest.raises(FileNotFoundError, match="no complete neighbour table"):
        load_neighbours(store, 3)
    done = []
    table = ensure_neighbours(store, 3, block_rows=8, on_block=lambda b, n: done.append(b))
    assert done == [2, 3, 4]
    np.testing.assert_array_equal(table.rows, brute_force(open_store(store).load_all(), 3))


def _sharded_worker(rank: int, init_file: str, store: str, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        done: list[int] = []
        table = ensure_neighbours(store, 4, block_rows=6, shard=(rank, 2), barrier=dist.barrier, on_block=lambda b, n: done.append(b))
        np.save(os.path.join(result_dir, f"rank{rank}.npy"), table.rows)
        with open(os.path.join(result_dir, f"blocks{rank}.txt"), "w") as f:
            f.write(" ".join(map(str, done)))
    finally:
        dist.destroy_process_group()


def test_two_processes_split_the_blocks_and_build_the_same_table(cache, tmp_path) -> None:
    store = os.path.join(cache, "train")

    def stop_after_block_0(b: int, n: int) -> None:
        raise KeyboardInterrupt  # a killed single-process run left block 0 on disk

    with pytest.raises(KeyboardInterrupt):
        compute_neighbours(store, 4, block_rows=6, on_block=stop_after_block_0)
    mp.spawn(_sharded_worker, args=(str(tmp_path / "init"), store, str(tmp_path)), nprocs=2, join=True)
    # 40 rows / 6 = 7 blocks: rank 0 takes the even ones (block 0 already there), rank 1 the odd ones
    assert (tmp_path / "blocks0.txt").read_text().split() == ["2", "4", "6"]
    assert (tmp_path / "blocks1.txt").read_text().split() == ["1", "3", "5"]
    expected = brute_force(open_store(store).load_all(), 4)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)
    assert not any(name.startswith("block-") for name in os.listdir(neighbour_dir(store, 4)))
    with pytest.raises(ValueError, match="needs a barrier"):
        compute_neighbours(store, 2, shard=(0, 2))


def test_changed_cache_is_refused_then_recomputed(tmp_path) -> None:
    data = make_images(str(tmp_path / "data"), per_class=6)
    cache = make_cache(str(tmp_path / "cache"), data, seed=0)
    store = os.path.join(cache, "train")
    compute_neighbours(store, 4)
    shutil.rmtree(store)
    make_cache(str(tmp_path / "cache"), data, seed=1)  # same images, other teacher vectors
    with pytest.raises(NeighboursMismatchError, match="fingerprint.*--recompute"):
        load_neighbours(store, 4)
    with pytest.raises(NeighboursMismatchError):
        ensure_neighbours(store, 4)
    table = compute_neighbours(store, 4, recompute=True)
    np.testing.assert_array_equal(table.rows, brute_force(open_store(store).load_all(), 4))
    with pytest.raises(ValueError, match=r"must be in \[1, 23\]"):
        compute_neighbours(store, 24)


def test_drop_self_handles_ties_that_push_the_query_out() -> None:
    index = np.array([[3, 0, 1], [0, 2, 1]])  # row 1's own row is absent (duplicates ranked first)
    np.testing.assert_array_equal(drop_self(index, np.array([0, 1])), [[3, 1], [0, 2]])


def test_cli_precomputes_the_table(cache) -> None:
    result = CliRunner().invoke(main, ["neighbours", "--cache", cache, "--k", "2", "--block-rows", "16"])
    assert result.exit_code == 0, result.output
    assert "40 rows x 2 neighbours" in result.output
    assert load_neighbours(os.path.join(cache, "train"), 2).k == 2
    bad = CliRunner().invoke(main, ["neighbours", "--cache", cache, "--k", "40"])
    assert bad.exit_code != 0 and "must be in [1, 39]" in bad.output
