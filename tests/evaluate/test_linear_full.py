"""The augmented linear protocol: transform, schedule, and resume after a kill."""

from __future__ import annotations

import pytest
import torch

from evaluate.config import FeaturesConfig
from evaluate.features import extract_features
from evaluate.linear import LinearConfig, linear
from evaluate.linear_full import augmented_transform, epoch_lr
from evaluate.models import center_crop_transform
from tests.evaluate.test_features import make_image_folder

MODEL = "torchvision:resnet18"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_augmented_transform_replaces_center_crop() -> None:
    from torchvision import transforms

    tf = augmented_transform(center_crop_transform(32))
    kinds = [type(t) for t in tf.transforms]
    assert kinds[:2] == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip]
    assert transforms.CenterCrop not in kinds and transforms.Resize not in kinds and transforms.Normalize in kinds
    assert tf.transforms[0].size == (32, 32)
    with pytest.raises(ValueError, match="needs a torchvision Compose"):
        augmented_transform(lambda x: x)


def test_epoch_lr_steps() -> None:
    assert [epoch_lr(0.01, e, 40) for e in (0, 14, 15, 29, 30, 39)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4])


class Killed(Exception):
    pass


def test_resume_after_kill_gives_the_same_probe(tmp_path) -> None:
    root = make_image_folder(str(tmp_path / "data"))
    feats = str(tmp_path / "feats")
    extract_features(FeaturesConfig(model=MODEL, data=root, out=feats, image_size=16, batch_size=4))
    common = dict(features=feats, fast=False, model=MODEL, data=root, image_size=16, epochs=3, batch_size=4, lr=0.1)
    whole = linear(LinearConfig(**common, checkpoint=str(tmp_path / "a.pt")))
    assert whole["protocol"] == "compress" and whole["params"]["augmentation"].startswith("RandomResizedCrop")

    import evaluate.linear_full as lf

    def kill(epoch: int) -> None:
        if epoch == 0:
            raise Killed

    cfg = LinearConfig(**common, checkpoint=str(tmp_path / "b.pt"))
    with pytest.raises(Killed):
        lf.linear_full(cfg, after_epoch=kill)
    assert torch.load(str(tmp_path / "b.pt"), weights_only=True)["epoch"] == 1
    resumed = linear(cfg)
    a = torch.load(str(tmp_path / "a.pt"), weights_only=True)["probe"]
    b = torch.load(str(tmp_path / "b.pt"), weights_only=True)["probe"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed["metrics"] == whole["metrics"]
    # a checkpoint of another setting is refused
    with pytest.raises(ValueError, match="written for another model/data/setting"):
        linear(LinearConfig(**{**common, "lr": 0.2}, checkpoint=str(tmp_path / "b.pt")))


def test_full_protocol_reads_parquet_through_the_named_columns(tmp_path) -> None:
    from click.testing import CliRunner

    from evaluate.cli import main
    from evaluate.results import read_results
    from tests.cache_builder.shards import folder_to_parquet

    folder = make_image_folder(str(tmp_path / "folder"))
    data = folder_to_parquet(folder, str(tmp_path / "parquet"), image_column="pixels", label_column="target",
                             decoy_column="caption")  # two binary columns and no 'label': nothing to guess
    args = ["linear", "--full", "--model", MODEL, "--data", data, "--image-size", "16", "--epochs", "1",
            "--train-batch-size", "4", "--batch-size", "4", "--no-progress", "--feature-cache", str(tmp_path / "fc")]
    out = str(tmp_path / "linear.json")
    ok = CliRunner().invoke(main, [*args, "--image-column", "pixels", "--label-column", "target", "--out", out])
    assert ok.exit_code == 0, ok.output
    (result,) = read_results([out])
    assert result["protocol"] == "compress" and result["params"]["train_rows_used"] == 6
    assert (result["params"]["image_column"], result["params"]["label_column"]) == ("pixels", "target")
    bad = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "--image-column:" in bad.output and "pixels" in bad.output
    assert len(bad.output.strip().splitlines()) == 1, bad.output
