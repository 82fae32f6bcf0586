"""compress-eval on exported files: the same protocols through onnxruntime / torch.jit /
safetensors give the run's numbers, and the result records the runtime and file."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from distill.deploy import export_deployable
from distill.deploy_config import ExportConfig
from evaluate.cli import main
from evaluate.models import resolve_model
from tests.distill.deploy_fixtures import make_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("deployed"))
    run = make_run(root, per_class=12, val_per_class=6)
    files = {"onnx": os.path.join(root, "s.onnx"), "raw": os.path.join(root, "raw.onnx"), "pt": os.path.join(root, "s.pt"),
             "st": os.path.join(root, "st")}
    for key, out in files.items():
        export_deployable(ExportConfig(run=run, out=out, raw_input=key == "raw"))
    return run, os.path.join(root, "data"), files


def _knn(model: str, data: str, tmp: str, name: str) -> dict:
    out = os.path.join(tmp, f"{name}.json")
    result = CliRunner().invoke(main, ["knn", "--model", model, "--data", data, "--feature-cache", os.path.join(tmp, "fc"),
                                       "--out", out, "--no-progress", "-k", "1,5"])
    assert result.exit_code == 0, result.output
    return json.load(open(out))


def test_knn_on_every_export_equals_knn_on_the_run(exported, tmp_path) -> None:
    run, data, files = exported
    base = _knn(run, data, str(tmp_path), "run")["metrics"]
    for key in ("onnx", "raw", "pt", "st"):
        result = _knn(files[key], data, str(tmp_path), key)
        for metric, value in base.items():
            assert abs(result["metrics"][metric] - value) <= 0.1, (key, metric)
        assert result["model"]["kind"] == "deployed" and result["model"]["file"].startswith(os.path.dirname(files[key]))
    assert _knn(files["onnx"], data, str(tmp_path), "again")["model"]["runtime"].startswith("onnxruntime")


def test_features_of_an_onnx_file_match_the_run_row_by_row(exported, tmp_path) -> None:
    import numpy as np

    from evaluate.features import FeaturesConfig, extract_features
    from storage import open_store

    run, data, files = exported
    rows = {}
    for key, model in (("run", run), ("onnx", files["onnx"]), ("raw", files["raw"])):
        extract_features(FeaturesConfig(model=model, data=data, out=str(tmp_path / key), dtype="float32", device="cpu"))
        rows[key] = open_store(str(tmp_path / key / "val")).load_all("numpy")
    for key in ("onnx", "raw"):
        cos = (rows[key] * rows["run"]).sum(1)
        assert cos.min() >= 0.9999, key
    assert np.abs(rows["onnx"] - rows["run"]).max() < 1e-4


def test_a_missing_sidecar_is_one_line(exported, tmp_path) -> None:
    _, _, files = exported
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(open(files["onnx"], "rb").read())
    with pytest.raises(Exception, match="sidecar"):
        resolve_model(str(bare))
