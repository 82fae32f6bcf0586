"""End-to-end distillation runs on a tiny synthetic image folder and cache (CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

from distill import metrics, precision, trainer
from distill.engine import resolve_config, run
from distill.export import export_student, load_student
from distill.run_identity import RunMismatchError
from distill.targets import CacheMismatchError
from tests.distill.synthetic import agreements, kill_and_resume, losses, make_cache, make_images, tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_images(str(root / "data"))
    cache = make_cache(str(root / "cache"), data)
    return root, data, cache


@pytest.mark.parametrize("variant", ["1q", "2q", "2q-momentum"])
def test_training_lowers_the_loss_and_raises_neighbour_agreement(setup, variant, tmp_path) -> None:
    """Each variant learns on the tiny set: the loss drops by a fifth and the top-10 neighbour
    overlap with the teacher rises (plain 2q too: it contracts in its first epoch, then spreads,
    docs/distill.md)."""
    _, data, cache = setup
    out = str(tmp_path / variant)
    result = run(tiny(cache, out, variant=variant, momentum=0.9))
    assert result["finished"] and result["epoch"] == 6
    ls = losses(out)
    assert len(ls) == 6 * 6  # 96 images / 16 per batch x 6 epochs, one line per step
    assert sum(ls[-6:]) / 6 < 0.8 * sum(ls[:6]) / 6
    overlap = agreements(out, "overlap10")  # top-10 neighbour overlap: the steady probe metric
    assert overlap[-1] > overlap[0] + 0.1
    assert len(agreements(out)) == len(overlap)  # top-1 agreement is logged beside it
    assert os.path.isfile(os.path.join(out, "loss_curve.png")) and os.path.isfile(os.path.join(out, "config.json"))
    assert json.load(open(os.path.join(out, "config.json")))["data"] == os.path.join(data, "train")


def test_default_data_and_out_come_from_the_cache(setup, tmp_path, monkeypatch) -> None:
    _, data, cache = setup
    monkeypatch.chdir(tmp_path)
    result = run(dataclasses.replace(tiny(cache, None), epochs=1, max_steps=2))
    assert result["out"] == os.path.join("runs", "tiny_cnn-from-synthetic")
    assert os.path.isfile(os.path.join(tmp_path, "runs", "tiny_cnn-from-synthetic", "checkpoint.pt"))
    timm = resolve_config(dataclasses.replace(tiny(cache, None), student="timm:mobilenetv3_small_050"))
    assert timm.out == os.path.join("runs", "timm_mobilenetv3_small_050-from-synthetic")  # no colon in the directory name


@pytest.mark.parametrize("bank_options,cli_options", [
    (dict(variant="2q-momentum", momentum=0.9), ["--variant", "2q-momentum", "--momentum", "0.9"]),
    (dict(variant="1q", bank="static-faiss", neighbours=12, random_anchors=24),
     ["--variant", "1q", "--bank", "static-faiss", "--neighbours", "12", "--random-anchors", "24"]),
], ids=["queue-2q-momentum", "static-faiss"])
def test_sigkill_then_rerun_gives_the_uninterrupted_loss_sequence(setup, tmp_path, python_env, bank_options, cli_options) -> None:
    _, data, cache = setup
    reference = str(tmp_path / "reference")
    run(tiny(cache, reference, epochs=3, ckpt_every=2, **bank_options))
    expected = losses(reference)
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "distill.cli", "run", "--cache", cache, "--out", out, "--student", "tiny_cnn", "--dim", "16",
           "--input-size", "16", "--bank-size", "48", "--batch-size", "16", "--epochs", "3", "--lr", "0.1", "--lr-steps", "",
           "--crop-scale", "0.5,1.0", "--workers", "0", "--log-every", "1", "--ckpt-every", "2", *cli_options]
    env = {**python_env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed_at = kill_and_resume(cmd, env, out, after=7)
    assert 7 <= killed_at < len(expected), "the kill must land mid-run"
    got = losses(out)
    assert len(got) == len(expected)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_mismatched_cache_and_config_are_refused(setup, tmp_path) -> None:
    root, data, cache = setup
    other = make_images(str(tmp_path / "other"), per_class=20)
    with pytest.raises(CacheMismatchError, match="does not match the images of"):
        run(tiny(cache, str(tmp_path / "r"), data=other))
    out = str(tmp_path / "run")
    run(tiny(cache, out, epochs=1, max_steps=1))
    with pytest.raises(RunMismatchError, match="different config or cache"):
        run(tiny(cache, out, epochs=1, dim=8))
    assert run(tiny(cache, out, epochs=1, dim=8, fresh=True))["finished"]


def test_export_round_trip_into_plain_torchvision(setup, tmp_path) -> None:
    import torchvision

    _, data, cache = setup
    out = str(tmp_path / "r18")
    run(tiny(cache, out, student="resnet18", epochs=1, max_steps=1, variant="1q"))
    meta = export_student(out, str(tmp_path / "r18.pth"), allow_unfinished=True)
    assert meta["architecture"] == "resnet18" and meta["feature_dim"] == 512
    state = torch.load(str(tmp_path / "r18.pth"), weights_only=True)
    assert not any(k.startswith(("fc.", "head.", "module.", "projection")) for k in state)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    backbone, meta2 = load_student(str(tmp_path / "r18.pth"))
    from_run, _ = load_student(out)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.allclose(model(x), backbone(x), atol=1e-6) and torch.allclose(from_run(x), backbone(x), atol=1e-6)
    assert meta2["eval_transform"]["crop"] == 16


def test_one_persistent_loader_serves_all_epochs_and_resumes_mid_epoch(setup, tmp_path, monkeypatch) -> None:
    from distill.data import AugmentedImages

    _, data, cache = setup
    reference = str(tmp_path / "workers0")
    run(tiny(cache, reference, epochs=2, variant="2q"))
    expected = losses(reference)
    made: list[dict] = []

    class RecordingLoader(torch.utils.data.DataLoader):
        def __init__(self, dataset, **kw):
            if isinstance(dataset, AugmentedImages):
                made.append(kw)
            super().__init__(dataset, **kw)

    monkeypatch.setattr(trainer, "DataLoader", RecordingLoader)
    out = str(tmp_path / "workers1")
    run(tiny(cache, out, epochs=2, variant="2q", workers=1, prefetch_factor=3, max_steps=8))  # stops in epoch 2, step 2
    run(tiny(cache, out, epochs=2, variant="2q", workers=1, prefetch_factor=3))
    assert len(made) == 2  # one training loader per run, not one per epoch
    assert all(kw["persistent_workers"] and kw["prefetch_factor"] == 3 and kw["num_workers"] == 1 for kw in made)
    assert losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_run_whose_max_steps_equals_its_total_steps_is_finished(setup, tmp_path) -> None:
    """Defect 8: --max-steps equal to epochs x steps per epoch stopped before the last epoch's end
    (no epoch + 1, no final probe): the run said finished: false and could never be exported."""
    _, data, cache = setup
    out = str(tmp_path / "exact")
    result = run(tiny(cache, out, epochs=2, max_steps=12))  # 96 images / 16 = 6 steps per epoch
    assert result["finished"] and result["epoch"] == 2 and result["global_step"] == 12
    assert export_student(out, str(tmp_path / "exact.pth"))["finished"]


def test_export_refuses_an_unfinished_run_unless_allowed_and_records_its_progress(setup, tmp_path) -> None:
    """Defect 8: unfinished runs exported with no warning; the sidecar says finished, epoch and step."""
    from distill.export import UnfinishedRunError, sidecar_path

    _, data, cache = setup
    out = str(tmp_path / "partial")
    run(tiny(cache, out, epochs=2, max_steps=8))
    with pytest.raises(UnfinishedRunError, match=r"unfinished \(epoch 1 of 2, step 8.*--allow-unfinished"):
        export_student(out, str(tmp_path / "p.pth"))
    assert not os.path.exists(tmp_path / "p.pth")
    meta = export_student(out, str(tmp_path / "p.pth"), allow_unfinished=True)
    sidecar = json.load(open(sidecar_path(str(tmp_path / "p.pth"))))
    assert sidecar == meta and (meta["finished"], meta["epoch"], meta["steps"]) == (False, 1, 8)


def test_a_refused_resume_names_the_options_that_differ(setup, tmp_path) -> None:
    _, data, cache = setup
    out = str(tmp_path / "differs")
    run(tiny(cache, out, epochs=1, max_steps=1))
    with pytest.raises(RunMismatchError, match=r"--lr: 0\.1 in the run, 0\.2 now; --t-teacher: 0\.04 in the run, 0\.05 now"):
        run(tiny(cache, out, epochs=1, lr=0.2, t_teacher=0.05))


def test_a_checkpoint_of_an_unknown_format_is_refused(setup, tmp_path) -> None:
    from distill.checkpoint import CheckpointError, load_checkpoint

    _, data, cache = setup
    out = str(tmp_path / "fmt")
    run(tiny(cache, out, epochs=1, max_steps=1))
    path = os.path.join(out, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format": "compress-distill-checkpoint/99"}, path)
    with pytest.raises(CheckpointError, match="format 'compress-distill-checkpoint/99'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint format"):
        run(tiny(cache, out, epochs=1))
    assert run(tiny(cache, out, epochs=1, fresh=True))["finished"]


def test_checkpoint_restores_torch_numpy_and_python_random_states(setup, tmp_path) -> None:
    import random

    import numpy as np

    from distill.checkpoint import load_checkpoint
    from distill.engine import resolve_config
    from distill.trainer import build_trainer

    _, data, cache = setup
    out = str(tmp_path / "rng")
    np.random.seed(7)
    random.seed(7)
    run(tiny(cache, out, epochs=1, max_steps=2))
    saved = load_checkpoint(os.path.join(out, "checkpoint.pt"))["rng"][0]
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    resumed = build_trainer(resolve_config(tiny(cache, out, epochs=1)))
    assert resumed.try_resume()
    assert np.array_equal(np.random.get_state()[1], saved["numpy"]["keys"].numpy())
    assert random.getstate() == saved["python"]
    assert torch.equal(torch.get_rng_state(), saved["torch"])


def test_static_faiss_bank_trains_and_resumes_exactly(setup, tmp_path) -> None:
    _, data, cache = setup
    static = dict(variant="1q", bank="static-faiss", neighbours=12, random_anchors=24, epochs=4)
    reference = str(tmp_path / "static")
    result = run(tiny(cache, reference, **static))
    assert result["finished"]
    ls, overlap = losses(reference), agreements(reference, "overlap10")
    assert len(ls) == 4 * 6
    assert sum(ls[-6:]) / 6 < 0.8 * sum(ls[:6]) / 6
    assert overlap[-1] > overlap[0] + 0.1
    assert os.path.isfile(os.path.join(cache, "neighbours-k12", "neighbours.npy"))
    out = str(tmp_path / "stopped")
    run(tiny(cache, out, max_steps=9, **static))  # stops mid-epoch 1 with a checkpoint
    assert len(losses(out)) == 9
    run(tiny(cache, out, **static))
    assert losses(out) == pytest.approx(ls, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="needs --variant 1q"):
        run(tiny(cache, str(tmp_path / "bad"), bank="static-faiss"))


def test_rerunning_a_finished_run_leaves_its_checkpoint_untouched(setup, tmp_path) -> None:
    """Downstream feature caches fingerprint the checkpoint: a rerun must not rewrite it."""
    _, data, cache = setup
    out = str(tmp_path / "done")
    run(tiny(cache, out, epochs=1))
    path = os.path.join(out, "checkpoint.pt")
    before = (open(path, "rb").read(), os.path.getmtime(path))
    again = run(tiny(cache, out, epochs=1))
    assert again["finished"] and again["global_step"] == 6
    assert (open(path, "rb").read(), os.path.getmtime(path)) == before


def test_bfloat16_banks_on_cpu_train_and_are_part_of_the_run_identity(setup, tmp_path, monkeypatch) -> None:
    _, data, cache = setup
    out = str(tmp_path / "bf16")
    run(tiny(cache, out, variant="1q", bank_dtype="bfloat16", epochs=3))
    ls = losses(out)
    assert sum(ls[-6:]) / 6 < 0.8 * sum(ls[:6]) / 6
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["objective"]["teacher_bank.anchors"].dtype == torch.bfloat16
    with pytest.raises(RunMismatchError, match="different config or cache"):
        run(tiny(cache, out, variant="1q", bank_dtype="float32", epochs=3))
    # on a CPU without bf16 hardware "auto" is float32: the same run as an explicit float32 one
    fp32 = str(tmp_path / "fp32")
    run(tiny(cache, fp32, variant="1q", bank_dtype="float32", epochs=1))
    monkeypatch.setattr(precision, "has_native_bf16_matmul", lambda device: False)
    assert run(tiny(cache, fp32, variant="1q", bank_dtype="auto", epochs=1))["finished"]
    with pytest.raises(ValueError, match="--bank-dtype must be one of"):
        run(tiny(cache, str(tmp_path / "x"), bank_dtype="float16"))


def test_auto_bank_dtype_follows_the_hardware_and_keeps_a_runs_precision_on_resume(setup, tmp_path, monkeypatch) -> None:
    _, data, cache = setup
    out = str(tmp_path / "auto")
    monkeypatch.setattr(precision, "has_native_bf16_matmul", lambda device: True)  # a CPU with AMX / AVX512-BF16
    run(tiny(cache, out, variant="1q", epochs=2, max_steps=7))
    assert json.load(open(os.path.join(out, "config.json")))["resolved_bank_dtype"] == "bfloat16"
    # the run moves to a machine without bf16 hardware: "auto" resumes it in bf16 instead of refusing it
    monkeypatch.setattr(precision, "has_native_bf16_matmul", lambda device: False)
    assert run(tiny(cache, out, variant="1q", epochs=2))["finished"]
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["objective"]["teacher_bank.anchors"].dtype == torch.bfloat16
    # a new run there (--fresh) resolves "auto" afresh: float32 on this hardware
    run(tiny(cache, out, variant="1q", epochs=1, fresh=True))
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert state["objective"]["teacher_bank.anchors"].dtype == torch.float32
    assert json.load(open(os.path.join(out, "config.json")))["resolved_bank_dtype"] == "float32"
    # the precision a run started with is part of its identity: a config.json that lost it makes
    # "auto" resolve afresh (bf16 here), and the refusal names the option that differs
    unrecorded = str(tmp_path / "unrecorded")
    run(tiny(cache, unrecorded, variant="1q", epochs=2, max_steps=7))
    config = json.load(open(os.path.join(unrecorded, "config.json")))
    del config["resolved_bank_dtype"]
    json.dump(config, open(os.path.join(unrecorded, "config.json"), "w"))
    monkeypatch.setattr(precision, "has_native_bf16_matmul", lambda device: True)
    with pytest.raises(RunMismatchError, match="--bank-dtype: float32 in the run, bfloat16 now"):
        run(tiny(cache, unrecorded, variant="1q", epochs=2))


def test_a_refused_run_leaves_the_existing_runs_config_untouched(setup, tmp_path) -> None:
    _, data, cache = setup
    out = str(tmp_path / "kept")
    run(tiny(cache, out, epochs=1))
    before = open(os.path.join(out, "config.json")).read()
    with pytest.raises(RunMismatchError):
        run(tiny(cache, out, epochs=1, lr=0.5))
    assert open(os.path.join(out, "config.json")).read() == before


def test_images_per_second_leaves_out_checkpoint_and_probe_time(setup, tmp_path, monkeypatch) -> None:
    """On a fake clock where each step takes 1 s and each checkpoint or probe 100 s, every
    logged rate is exactly one global batch per second."""
    _, data, cache = setup
    clock = [0.0]
    monkeypatch.setattr(metrics, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))

    def slow(method, seconds):
        def wrapped(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            clock[0] += seconds
            return result
        return wrapped

    monkeypatch.setattr(trainer.Trainer, "train_step", slow(trainer.Trainer.train_step, 1.0))
    monkeypatch.setattr(trainer.Trainer, "save", slow(trainer.Trainer.save, 100.0))
    monkeypatch.setattr(trainer.Trainer, "probe_metrics", slow(trainer.Trainer.probe_metrics, 100.0))
    out = str(tmp_path / "rate")
    run(tiny(cache, out, epochs=3, log_every=4, ckpt_every=5))
    rates = [r["img_per_s"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "img_per_s" in r]
    assert len(rates) == 18 // 4 and rates == pytest.approx([16.0] * len(rates))


@pytest.mark.slow
def test_compiled_student_trains_like_the_eager_one(setup, tmp_path) -> None:
    """``--compile`` (torch.compile with inductor; ~1-2 min of compilation on 2 cores, hence slow)."""
    _, data, cache = setup
    eager, compiled = str(tmp_path / "eager"), str(tmp_path / "compiled")
    run(tiny(cache, eager, epochs=2))
    assert run(tiny(cache, compiled, epochs=2, compile=True))["finished"]
    assert losses(compiled) == pytest.approx(losses(eager), rel=2e-2, abs=1e-3)  # kernel fusion reorders float sums
    state = torch.load(os.path.join(compiled, "checkpoint.pt"), weights_only=True)
    assert not any("_orig_mod" in k for k in state["student"])  # the unwrapped student is saved
    export_student(compiled, str(tmp_path / "s.pth"))
