"""The online teacher (``compress-distill run --teacher NAME --weights W``, no cache), on CPU.

The key case: square, left-right mirror-symmetric 16 px images with crops of scale 1 make every
student view the whole image (a flip changes nothing), which is exactly what a 1-view cache of
the same teacher at 16 px holds, so an online run and a cached run must train identically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cache_builder.build import BuildConfig, build_cache
from distill.engine import run
from distill.export import export_student, load_student
from distill.run_identity import RunMismatchError
from storage.errors import UsageError
from tests.conftest import REPO_ROOT
from tests.distill.synthetic import agreements, kill_and_resume, losses, tiny
from tests.images import write_image_folder

SAME_VIEWS = dict(variant="1q", crop_scale=(1.0, 1.0), epochs=3)


def mirror_folder(root: str) -> None:
    """Make every image of ``root`` left-right symmetric (its left half, mirrored)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            a = np.asarray(Image.open(path).convert("RGB"))
            half = a[:, : a.shape[1] // 2]
            Image.fromarray(np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))).save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    data = str(root / "data")
    write_image_folder(data, ("a", "b", "c", "d"), {"train": 24, "val": 6}, size=16, seed=3)
    mirror_folder(data)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    weights = str(root / "teacher.pth")
    torch.save(model.state_dict(), weights)
    cache = str(root / "cache")
    build_cache(BuildConfig(teacher="custom", arch="resnet18", weights=weights, data=data, out=cache, input_size=16,
                            resize_size=16, dtype="float32", workers=0, device="cpu", knn=False, progress=False, batch_size=32))
    return root, data, weights, cache


def online(setup, out, **kw):
    _, data, weights, _ = setup
    teacher = dict(teacher="custom", teacher_arch="resnet18", weights=weights, data=data, teacher_input_size=16, teacher_resize_size=16)
    return tiny(None, out, **{**teacher, **kw})


def test_online_run_equals_a_cached_run_of_the_same_views(setup, tmp_path) -> None:
    """Same views: the online teacher's targets, banks and probes equal the 1-view cache's, so
    the loss sequence and the neighbour agreement match; and the run learns."""
    _, data, _, cache = setup
    cached, live = str(tmp_path / "cached"), str(tmp_path / "online")
    run(tiny(cache, cached, data=data, **SAME_VIEWS))
    result = run(online(setup, live, **SAME_VIEWS))
    assert result["finished"]
    ls = losses(live)
    assert len(ls) == 3 * 6
    assert ls == pytest.approx(losses(cached), rel=1e-4, abs=1e-5)
    assert agreements(live, "overlap10") == pytest.approx(agreements(cached, "overlap10"), abs=1e-6)
    assert sum(ls[-6:]) / 6 < 0.9 * sum(ls[:6]) / 6
    config = json.load(open(os.path.join(live, "config.json")))
    assert config["teacher"] == "custom" and config["cache"] is None and config["teacher_arch"] == "resnet18"


def test_the_online_teacher_sees_the_students_crop_resized_to_its_input_size(setup) -> None:
    """``embed``: the uint8 crop resized to the teacher's size, its mean/std, the frozen teacher, L2."""
    from distill.online_teacher import load_online_teacher

    _, data, weights, _ = setup
    from dataclasses import replace

    cfg = replace(online(setup, None), teacher_input_size=24, teacher_resize_size=24)
    teacher = load_online_teacher(cfg, torch.device("cpu"))
    assert teacher.dim == 512 and teacher.spec.input_size == 24
    crops = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    got = teacher.for_batch(crops, torch.arange(3))
    x = torch.nn.functional.interpolate(crops.float() / 255, size=(24, 24), mode="bilinear", antialias=True).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    reference.fc = torch.nn.Identity()
    want = torch.nn.functional.normalize(reference.eval()(x), dim=1)
    assert not got.is_inference() and got.shape == (3, 512)
    assert torch.allclose(got, want, atol=1e-5)


def test_online_run_resumes_exactly(setup, tmp_path) -> None:
    reference = str(tmp_path / "reference")
    run(online(setup, reference, epochs=2, momentum=0.9, variant="2q-momentum"))
    out = str(tmp_path / "stopped")
    run(online(setup, out, epochs=2, momentum=0.9, variant="2q-momentum", max_steps=7))  # mid-epoch 1
    assert len(losses(out)) == 7
    run(online(setup, out, epochs=2, momentum=0.9, variant="2q-momentum"))
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)


def test_the_weights_bytes_not_their_path_are_the_runs_identity(setup, tmp_path) -> None:
    root, _, weights, _ = setup
    out = str(tmp_path / "run")
    run(online(setup, out, epochs=1, max_steps=2))
    moved = str(tmp_path / "moved.pth")
    with open(weights, "rb") as src, open(moved, "wb") as dst:
        dst.write(src.read())
    assert run(online(setup, out, epochs=1, weights=moved))["finished"]  # same bytes elsewhere: resumes
    other = str(tmp_path / "other.pth")
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(RunMismatchError, match="teacher: online:sha256"):
        run(online(setup, out, epochs=1, weights=other))


def test_cache_and_teacher_are_mutually_exclusive(setup, tmp_path, python_env) -> None:
    _, data, weights, cache = setup
    cmd = [sys.executable, "-m", "distill.cli", "run", "--cache", cache, "--teacher", "custom", "--teacher-arch", "resnet18",
           "--weights", weights, "--data", data, "--out", str(tmp_path / "x")]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=python_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--cache" in done.stderr and "--teacher custom are mutually exclusive" in done.stderr
    assert not os.path.exists(str(tmp_path / "x"))
    with pytest.raises(UsageError, match="--weights apply to an online teacher only"):
        run(tiny(cache, str(tmp_path / "y"), weights=weights))
    with pytest.raises(UsageError, match="static-faiss .* needs --cache"):
        run(online(setup, str(tmp_path / "z"), bank="static-faiss", variant="1q"))
    with pytest.raises(UsageError, match="pass --data"):
        run(online(setup, str(tmp_path / "z"), data=None))
    with pytest.raises(UsageError, match="needs --arch"):
        run(online(setup, str(tmp_path / "z"), teacher_arch=None))


def test_an_online_run_exports_and_evaluates(setup, tmp_path) -> None:
    from evaluate.features import FeaturesConfig, extract_features
    from evaluate.knn import KnnConfig, knn

    _, data, _, _ = setup
    out = str(tmp_path / "run")
    run(online(setup, out, epochs=1))
    meta = export_student(out, str(tmp_path / "student.pth"))
    assert meta["teacher"] == "custom" and meta["finished"]
    backbone, _ = load_student(str(tmp_path / "student.pth"))
    from_run, _ = load_student(out)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(backbone(x), from_run(x), atol=1e-6)
    feats = str(tmp_path / "features")
    extract_features(FeaturesConfig(model=out, data=data, out=feats, device="cpu"))
    metrics = knn(KnnConfig(features=feats, protocol="compress", ks=(1, 20)))["metrics"]
    assert 0 <= metrics["nn"] <= 100 and 0 <= metrics["knn20"] <= 100


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_online_losses(setup, tmp_path, python_env) -> None:
    """The CLI path: an online run killed mid-run and rerun reproduces the uninterrupted losses."""

    _, data, weights, _ = setup
    reference = str(tmp_path / "reference")
    run(online(setup, reference, epochs=3, ckpt_every=2))
    expected = losses(reference)
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "distill.cli", "run", "--teacher", "custom", "--teacher-arch", "resnet18", "--weights", weights,
           "--teacher-input-size", "16", "--teacher-resize-size", "16", "--data", data, "--out", out, "--student", "tiny_cnn",
           "--dim", "16", "--input-size", "16", "--bank-size", "48", "--batch-size", "16", "--epochs", "3", "--lr", "0.1",
           "--lr-steps", "", "--crop-scale", "0.5,1.0", "--workers", "0", "--log-every", "1", "--ckpt-every", "2",
           "--probe-size", "64", "--no-progress"]
    env = {**python_env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed_at = kill_and_resume(cmd, env, out, after=3, deadline_s=600)  # generous: a loaded machine starts it slowly
    assert 3 <= killed_at < len(expected), "the kill must land mid-run (after the step-2 checkpoint)"
    assert losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)
