"""Evaluation during distillation (--eval-every): kNN-20 logged as knn_top1, the teacher's as a
reference, no training randomness consumed (same losses, exact resume after SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from distill.engine import run
from distill.periodic_eval import resolve_eval_every
from storage.errors import UsageError
from tests.distill.synthetic import CLASSES, kill_and_resume, losses, make_cache, tiny
from tests.images import write_image_folder


@pytest.fixture(scope="module")
def val_setup(tmp_path_factory):
    """Images with train/ and val/, a cache with both split stores (val: the same synthetic teacher)."""
    root = tmp_path_factory.mktemp("peval")
    data = str(root / "data")
    write_image_folder(data, CLASSES, 24, splits=("train", "val"), size=16, seed=0)
    cache = make_cache(str(root / "cache"), data)
    tmp = make_cache(str(root / "valcache"), os.path.join(data, "val"))  # the val folder as a one-split root
    shutil.move(os.path.join(tmp, "train"), os.path.join(cache, "val"))
    return data, cache


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]


def test_knn_is_logged_and_training_is_unchanged(val_setup, tmp_path) -> None:
    _, cache = val_setup
    out = str(tmp_path / "eval")
    run(tiny(cache, out, epochs=3, eval_every=2, eval_train_size=50))
    recs = records(out)
    knn = [(r["epoch"], r["knn_top1"]) for r in recs if "knn_top1" in r]
    assert [e for e, _ in knn] == [2, 3]  # every 2nd epoch and the last and all(0 <= v <= 100 for _, v in knn)
    assert all(r["eval_train_rows"] == 50 for r in recs if "knn_top1" in r)
    teacher = [r["teacher_knn_top1"] for r in recs if "teacher_knn_top1" in r]
    assert len(teacher) == 1 and recs[0]["step"] == 0 and teacher[0] > 100 / len(CLASSES)  # the teacher beats chance
    assert os.path.getsize(os.path.join(out, "loss_curve.png")) > 0
    off = str(tmp_path / "off")
    run(tiny(cache, off, epochs=3, eval_every=0))
    assert not any("knn_top1" in r or "teacher_knn_top1" in r for r in records(off))
    assert losses(out) == losses(off)  # the evaluation consumed no training randomness


def test_default_is_a_few_evaluations_with_a_val_split_and_off_without() -> None:
    assert resolve_eval_every(None, 130, True) == 26 and resolve_eval_every(None, 3, True) == 1
    assert resolve_eval_every(None, 130, False) == 0 and resolve_eval_every(0, 130, True) == 0
    with pytest.raises(UsageError, match="--eval-every 4: the cache has no labelled val split"):
        resolve_eval_every(4, 130, False)


@pytest.mark.slow  # two subprocess runs: ~2.5 min on 2 shared cores
def test_sigkill_then_rerun_with_evaluation_gives_the_uninterrupted_losses(val_setup, tmp_path, python_env) -> None:
    _, cache = val_setup
    reference = str(tmp_path / "reference")
    run(tiny(cache, reference, epochs=3, ckpt_every=2, variant="2q-momentum", momentum=0.9, eval_every=0))
    expected = losses(reference)
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "distill.cli", "run", "--cache", cache, "--out", out, "--student", "tiny_cnn", "--dim", "16",
           "--input-size", "16", "--bank-size", "48", "--batch-size", "16", "--epochs", "3", "--lr", "0.1", "--lr-steps", "",
           "--crop-scale", "0.5,1.0", "--workers", "0", "--log-every", "1", "--ckpt-every", "2", "--variant", "2q-momentum",
           "--momentum", "0.9", "--probe-size", "64", "--eval-every", "1", "--eval-train-size", "40"]
    env = {**python_env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    assert 8 <= kill_and_resume(cmd, env, out, after=8) < len(expected), "the kill must land mid-run"
    assert losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    knn_epochs = [r["epoch"] for r in records(out) if "knn_top1" in r]
    assert knn_epochs == [1, 2, 3]  # no duplicate evaluation lines after the resume
