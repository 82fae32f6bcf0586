"""Feature extraction from an image folder, cache reuse and invalidation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from evaluate.config import FeaturesConfig
from evaluate.feature_set import load_feature_set
from evaluate.features import cached_features, extract_features
from evaluate.image_folder import list_split
from evaluate.models import resolve_model
from storage import StoreMismatchError
from tests.images import write_image_folder


def make_image_folder(root: str, per_class: dict[str, int] | None = None) -> str:
    """``root/<split>/{cat,dog}/<i>.png`` (``tests.images``), by default 3 train and 2 val images per class."""
    write_image_folder(root, ("cat", "dog"), per_class or {"train": 3, "val": 2}, size=20, name="{i}")
    return root


MODEL = "torchvision:resnet18"
OPTS = dict(image_size=16, batch_size=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_listing_is_sorted_and_labelled(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"))
    listing = list_split(root, "val")
    assert listing.paths == ("val/cat/0.png", "val/cat/1.png", "val/dog/0.png", "val/dog/1.png")
    assert listing.labels == (0, 0, 1, 1) and listing.classes == ("cat", "dog")


def test_extract_writes_normalised_labelled_stores_and_reuses(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"))
    out = str(tmp_path / "feats")
    info = extract_features(FeaturesConfig(model=MODEL, data=root, out=out, **OPTS))
    assert not info["reused"] and info["split_sizes"] == {"train": 6, "val": 4}
    fs = load_feature_set(out)
    assert fs.train.d == 512 and fs.train.paths[0] == "train/cat/0.png"
    np.testing.assert_array_equal(fs.train.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(np.linalg.norm(fs.val.features, axis=1), 1.0, atol=2e-3)
    # matches the model run directly on the first image
    model = resolve_model(MODEL, image_size=16)
    from PIL import Image

    with Image.open(os.path.join(root, "train/cat/0.png")) as img, torch.no_grad():
        direct = torch.nn.functional.normalize(model.module(model.transform(img.convert("RGB"))[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(fs.train.features[0], direct, atol=2e-3)
    again = extract_features(FeaturesConfig(model=MODEL, data=root, out=out, **OPTS))
    assert again["reused"] and again["fingerprint"] == info["fingerprint"]
    assert json.load(open(os.path.join(out, "features.json")))["reused"] is True


def test_other_model_into_same_out_is_refused(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"))
    out = str(tmp_path / "feats")
    extract_features(FeaturesConfig(model=MODEL, data=root, out=out, **OPTS))
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        extract_features(FeaturesConfig(model=MODEL, data=root, out=out, image_size=24, batch_size=4))


def test_cache_reuse_and_invalidation(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"))
    cache = str(tmp_path / "cache")
    first = cached_features(MODEL, root, cache, **OPTS)
    second = cached_features(MODEL, root, cache, **OPTS)
    assert second["reused"] and second["out"] == first["out"]
    # data change: a new image -> new fingerprint, re-extracted elsewhere
    make_image_folder(root, {"val": 3})
    third = cached_features(MODEL, root, cache, **OPTS)
    assert not third["reused"] and third["out"] != first["out"] and third["split_sizes"]["val"] == 6
    # model change: other weights -> re-extracted
    weights = str(tmp_path / "w.pth")
    import torchvision

    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    fourth = cached_features(f"{MODEL}:{weights}", root, cache, **OPTS)
    assert not fourth["reused"] and fourth["out"] not in (first["out"], third["out"])


def test_bad_model_specs(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        resolve_model("torchvision:nonet")
    with pytest.raises(ValueError, match="expected teacher:NAME:WEIGHTS"):
        resolve_model("teacher:moco")
    with pytest.raises(ValueError, match="not a student run dir"):
        resolve_model(str(tmp_path / "nothing"))


def test_empty_split_folder_is_refused(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"), {"train": 2})
    os.makedirs(os.path.join(root, "val", "cat"))
    with pytest.raises(ValueError, match="val: the split is empty"):
        list_split(root, "val")


def test_cli_model_data_caches_under_run_and_reuses(tmp_path) -> None:
    from click.testing import CliRunner

    from evaluate.cli import main

    root = make_image_folder(str(tmp_path / "data"))
    args = ["knn", "--model", MODEL, "--data", root, "--image-size", "16", "--feature-cache", str(tmp_path / "fc"),
            "-k", "1", "-k", "3", "--out", str(tmp_path / "r.json")]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "extracted features" in first.output
    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert "reusing features" in second.output
    result = json.load(open(tmp_path / "r.json"))
    assert result["model"]["name"] == "resnet18" and result["split_sizes"] == {"train": 6, "val": 4}


def test_cli_full_linear_and_cluster_grid_from_model_and_data(tmp_path) -> None:
    from click.testing import CliRunner

    from evaluate.cli import main

    root = make_image_folder(str(tmp_path / "data"))
    common = ["--model", MODEL, "--data", root, "--image-size", "16", "--feature-cache", str(tmp_path / "fc")]
    out = str(tmp_path / "lin.json")
    res = CliRunner().invoke(main, ["linear", *common, "--full", "--epochs", "2", "--train-batch-size", "4", "--out", out],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.load(open(out))
    assert result["protocol"] == "compress" and os.path.exists(str(tmp_path / "lin-checkpoint.pt"))
    grid = str(tmp_path / "grid.png")
    res = CliRunner().invoke(main, ["cluster", *common, "--clusters", "2", "--grid", grid, "--out", str(tmp_path / "c.json")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(grid) as img:
        assert img.size == (64 * 8, 64 * 2)  # one row per cluster, 8 thumbnail slots per row
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels[:, :64] != 255).any(axis=2).all()  # the first slot of every row holds an image


def test_teacher_and_student_specs_load_real_models(tmp_path) -> None:
    """``teacher:NAME:WEIGHTS`` goes through the teacher registry, a run dir / export through
    ``distill.export.load_student``; both give working extractors with their own preprocessing."""
    import torchvision
    from PIL import Image

    from distill.engine import run
    from distill.export import export_student
    from tests.distill.synthetic import make_cache, make_images
    from tests.distill.test_engine import tiny

    weights = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    teacher = resolve_model(f"teacher:supervised_mobilenet_v2:{weights}")
    assert teacher.identity["kind"] == "teacher"
    assert teacher.identity["weights_sha256"].startswith("sha256:") and len(teacher.identity["weights_sha256"]) == 71
    image = Image.new("RGB", (40, 30), (120, 30, 200))
    x = teacher.transform(image)
    assert x.shape[0] == 3 and teacher.module(x[None]).shape == (1, 1280)

    data = make_images(str(tmp_path / "data"), per_class=8)
    cache = make_cache(str(tmp_path / "cache"), data)
    run_dir = str(tmp_path / "run")
    run(tiny(cache, run_dir, epochs=1, batch_size=8, bank_size=16, probe_size=8))
    student = resolve_model(run_dir)
    assert student.run_dir == run_dir and student.identity["metadata"]["student"] == "tiny_cnn"
    xs = student.transform(image)
    assert xs.shape == (3, 16, 16) and student.module(xs[None]).shape == (1, 256)
    export_student(run_dir, str(tmp_path / "s.pth"))
    exported = resolve_model(str(tmp_path / "s.pth"))
    assert torch.allclose(exported.module(xs[None]), student.module(xs[None]), atol=1e-6)
    with pytest.raises(ValueError, match="weights file .* does not exist"):
        resolve_model(f"teacher:moco_v2_r50:{tmp_path / 'missing.pth'}")
