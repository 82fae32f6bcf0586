"""Stage 2 on a CUDA GPU (opt-in: ``pytest -m gpu``; skipped without CUDA): bf16 autocast and
banks, resume, no host synchronisation inside a training step, the host-memory cache path."""

from __future__ import annotations

import os

import pytest
import torch

from distill.engine import resolve_config, run
from distill.targets import TeacherTargets, fits_on_device
from distill.trainer import build_trainer
from tests.distill.synthetic import agreements, losses, make_cache, make_images, tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-gpu")
    data = make_images(str(root / "data"))
    return data, make_cache(str(root / "cache"), data)


@pytest.mark.parametrize("variant", ["1q", "2q-momentum"])
def test_cuda_run_trains_with_bf16_banks_and_resumes(setup, variant, tmp_path) -> None:
    _, cache = setup
    out = str(tmp_path / variant)
    assert run(tiny(cache, out, variant=variant, device="cuda", momentum=0.9))["finished"]
    ls = losses(out)
    assert sum(ls[-6:]) / 6 < 0.8 * sum(ls[:6]) / 6
    overlap = agreements(out, "overlap10")
    assert overlap[-1] > overlap[0] + 0.1
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["objective"]["teacher_bank.anchors"].dtype == torch.bfloat16  # auto on CUDA
    assert all(v.dtype == torch.float32 for k, v in state["student"].items() if v.is_floating_point())
    stopped = str(tmp_path / f"{variant}-stopped")
    run(tiny(cache, stopped, variant=variant, device="cuda", momentum=0.9, max_steps=9))
    run(tiny(cache, stopped, variant=variant, device="cuda", momentum=0.9))
    # the same steps again: equal up to cuDNN's nondeterministic reductions
    assert losses(stopped) == pytest.approx(ls, rel=2e-2, abs=1e-3)


@pytest.mark.parametrize("variant", ["2q-momentum", "1q"])
def test_a_training_step_never_waits_for_the_gpu(setup, variant, tmp_path) -> None:
    """CUDA's sync debug mode turns every host synchronisation (``.item()``, a blocking copy,
    a data-dependent shape) into an error: a step must queue its work and return."""
    _, cache = setup
    trainer = build_trainer(resolve_config(tiny(cache, str(tmp_path / "sync"), variant=variant, device="cuda")))
    trainer.init_banks()
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8).pin_memory()
    rows = torch.randperm(96)[:16].pin_memory()
    views = torch.zeros(16, dtype=torch.long).pin_memory()
    trainer.train_step(images, rows, views, 0.1)  # warm-up: allocations, cuDNN algorithm choice
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = trainer.train_step(images, rows, views, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_a_cache_kept_in_host_memory_is_gathered_to_the_gpu(setup) -> None:
    embeddings = torch.randn(50, 8).half()
    targets = TeacherTargets(store=None, images=None, embeddings=embeddings.pin_memory(), device=torch.device("cuda"))  # type: ignore[arg-type]
    rows = torch.tensor([3, 1, 49])
    out = targets.gather(rows)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.equal(out.cpu(), embeddings[rows].float())
    assert fits_on_device(10, 20) and not fits_on_device(11, 20)
