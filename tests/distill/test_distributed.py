"""Data order across ranks, the rank-agreement check, and a real 2-process gloo run via torchrun (CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cache_builder import distributed as D
from distill.checkpoint import load_checkpoint
from distill.config import DistillConfig
from distill.engine import run
from distill.export import export_student
from distill.run_identity import RunMismatchError
from distill.sampler import EpochBatchSampler
from distill.students import build_student
from storage import open_store
from tests.conftest import REPO_ROOT
from tests.distill.synthetic import make_cache, make_images


def test_ranks_share_the_epoch_permutation_and_take_disjoint_slices() -> None:
    n, batch, world = 50, 4, 3
    samplers = [EpochBatchSampler(n, batch, seed=3, rank=r, world=world) for r in range(world)]
    assert samplers[0].steps_per_epoch == 50 // 12
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert all(len(b) == samplers[0].steps_per_epoch for b in per_rank)
        seen: list[int] = []
        for step in range(samplers[0].steps_per_epoch):
            rows = [row for r in range(world) for (e, row) in per_rank[r][step]]
            assert all(e == epoch for r in range(world) for (e, _) in per_rank[r][step])
            assert rows == samplers[0].global_batch_rows(epoch, step).tolist()  # rank order = enqueue order
            assert len(rows) == batch * world
            seen += rows
        assert len(set(seen)) == len(seen)  # disjoint across ranks and steps
    assert samplers[0].permutation(0).tolist() != samplers[0].permutation(1).tolist()


def test_sampler_holds_epoch_state_and_starts_mid_epoch() -> None:
    s = EpochBatchSampler(40, 4, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_step=7)
    assert len(s) == 3 and list(s) == full[7:]
    s.set_epoch(3)
    assert list(s)[0] != full[0] and list(s)[0][0][0] == 3
    with pytest.raises(ValueError, match="start_step"):
        s.set_epoch(0, start_step=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.float16])
def test_tensor_checksum_is_exact(dtype) -> None:
    t = (torch.randn(33, 7) * 100).to(dtype)
    assert torch.equal(D.tensor_checksum(t), D.tensor_checksum(t.clone()))
    u = t.clone()
    u.view(-1)[100] = u.view(-1)[100] + 1
    assert not torch.equal(D.tensor_checksum(t), D.tensor_checksum(u))
    v = t.clone().view(-1)
    v[[3, 4]] = t.view(-1)[[4, 3]]  # a swap keeps the plain sum but changes the position-weighted one
    if t.view(-1)[3] != t.view(-1)[4]:
        assert not torch.equal(D.tensor_checksum(t), D.tensor_checksum(v))
    assert D.tensor_checksum(torch.tensor(5)).shape == (2,)


def _divergence_worker(rank: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        same = torch.arange(10.0)
        D.check_same_across_ranks({"same": same})  # passes
        other = torch.arange(10.0)
        other[7] += rank
        try:
            D.check_same_across_ranks({"same": same, "bank": other})
            outcome = "no error"
        except D.RankDivergenceError as e:
            outcome = str(e)
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def test_rank_divergence_is_detected_on_every_rank(tmp_path) -> None:
    mp.spawn(_divergence_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert "bank on rank 1" in msg and "same on rank" not in msg, msg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cache: str, out: str, python_env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "distill.cli", "run", "--cache", cache, "--out", out, "--student", "tiny_cnn", "--dim", "16",
           "--input-size", "16", "--bank-size", "48", "--batch-size", "8", "--epochs", "2", "--lr", "0.1", "--lr-steps", "",
           "--crop-scale", "0.5,1.0", "--workers", "0", "--log-every", "1", "--ckpt-every", "3", "--momentum", "0.9",
           "--device", "cpu", *extra]
    env = dict(python_env, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def _metrics(out: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]


def test_two_process_gloo_run_trains_keeps_banks_identical_and_resumes(tmp_path, python_env) -> None:
    data = make_images(str(tmp_path / "data"))
    cache = make_cache(str(tmp_path / "cache"), data)
    full = str(tmp_path / "full")
    proc = _torchrun(cache, full, python_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every rank compared exact checksums of banks, student and key student at each checkpoint
    assert "identical on all 2 ranks" in proc.stderr
    assert proc.stdout.count('"finished": true') == 1  # only rank 0 prints
    records = _metrics(full)
    loss_steps = [r["step"] for r in records if "loss" in r]
    assert loss_steps == list(range(1, 13))  # 96 images / (8 x 2) = 6 steps x 2 epochs, each logged once (rank 0 only)
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    assert sorted(os.listdir(full)) == ["checkpoint.pt", "config.json", "loss_curve.png", "metrics.jsonl"]

    ckpt = load_checkpoint(os.path.join(full, "checkpoint.pt"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["global_step"] == 12
    assert not any(k.startswith("module.") for k in ckpt["student"])  # the unwrapped student is saved
    build_student("tiny_cnn", 16).load_state_dict(ckpt["student"], strict=True)
    build_student("tiny_cnn", 16).load_state_dict(ckpt["key_student"], strict=True)
    # the bank's last 48 anchors are the all-gathered global batches of the last 3 steps, in rank order
    sampler = EpochBatchSampler(96, 8, seed=0, rank=0, world=2)
    expected_rows = torch.cat([sampler.global_batch_rows(1, step) for step in (3, 4, 5)])
    assert int(ckpt["objective"]["teacher_bank.pointer"]) == 0
    assert torch.equal(ckpt["objective"]["teacher_bank.row_ids"], expected_rows)
    assert torch.equal(ckpt["objective"]["student_bank.row_ids"], expected_rows)
    export_student(full, str(tmp_path / "s.pth"))

    # killed-and-rerun equivalent: stop after 7 steps, rerun the same command -> same losses
    part = str(tmp_path / "part")
    first = _torchrun(cache, part, python_env, "--max-steps", "7")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len([r for r in _metrics(part) if "loss" in r]) == 7
    second = _torchrun(cache, part, python_env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed" in second.stderr
    assert [r["loss"] for r in _metrics(part) if "loss" in r] == pytest.approx(losses, rel=1e-5, abs=1e-6)

    # a different number of processes changes the data order: refused
    cfg = DistillConfig(cache=cache, out=part, student="tiny_cnn", dim=16, input_size=16, bank_size=48, batch_size=8, epochs=2,
                        lr=0.1, lr_steps=(), crop_scale=(0.5, 1.0), workers=0, log_every=1, ckpt_every=3, momentum=0.9,
                        device="cpu", progress=False)
    with pytest.raises(RunMismatchError, match="2 processes and this one has 1"):
        run(cfg)


def test_two_process_static_faiss_run_splits_the_neighbour_search(tmp_path, python_env) -> None:
    data = make_images(str(tmp_path / "data"))
    cache = make_cache(str(tmp_path / "cache"), data)
    out = str(tmp_path / "static")
    proc = _torchrun(cache, out, python_env, "--bank", "static-faiss", "--variant", "1q", "--neighbours", "8",
                     "--random-anchors", "16", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identical on all 2 ranks" in proc.stderr
    table = np.load(os.path.join(cache, "neighbours-k8", "neighbours.npy"))
    assert table.shape == (96, 8)
    emb = open_store(os.path.join(cache, "train")).load_all().astype(np.float32)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    # each row's 8 neighbours are its 8 most similar other rows (as sets: fp16 rows can tie)
    assert all(np.sort(sims[i, table[i]])[0] >= np.sort(sims[i])[-8] for i in range(96))
    assert [r["step"] for r in _metrics(out) if "loss" in r] == list(range(1, 7))


def test_neighbours_command_under_torchrun_builds_the_single_process_table(tmp_path, python_env) -> None:
    from distill.neighbours import compute_neighbours

    data = make_images(str(tmp_path / "data"), per_class=10)
    cache = make_cache(str(tmp_path / "cache"), data)
    reference = make_cache(str(tmp_path / "reference"), data)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "distill.cli", "neighbours", "--cache", cache, "--k", "5", "--block-rows", "7"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(python_env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("40 rows x 5 neighbours") == 1  # rank 0 reports
    single = compute_neighbours(os.path.join(reference, "train"), 5, block_rows=7)
    np.testing.assert_array_equal(np.load(os.path.join(cache, "neighbours-k5", "neighbours.npy")), single.rows)
