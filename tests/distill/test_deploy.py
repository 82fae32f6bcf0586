"""compress-distill export to ONNX / TorchScript / safetensors: reload -> same embeddings,
dynamic batch, raw-input graphs, INT8 within bounds, atomic writes, one-line errors."""

from __future__ import annotations

import builtins
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from cache_builder.transforms import normalize_batch as normalise
from distill.cli import main
from distill.deploy import export_deployable
from distill.deploy_config import ExportConfig
from distill.export import export_untrained, load_student
from distill.quantize import sample_images
from tests.distill.deploy_fixtures import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    return make_run(str(tmp_path_factory.mktemp("deploy")))


def _images(run: str, n: int = 8) -> torch.Tensor:
    from cache_builder.image_list import discover_splits

    _, meta = load_student(run)
    listing = discover_splits(os.path.join(os.path.dirname(run), "data"))["train"]
    return sample_images(listing, n, 3, meta["eval_transform"])[0]


def _reference(path: str, u8: torch.Tensor, normalize: bool = True) -> np.ndarray:
    backbone, meta = load_student(path)
    with torch.no_grad():
        y = backbone(normalise(u8, meta["eval_transform"]["mean"], meta["eval_transform"]["std"]))
    return (F.normalize(y, dim=1) if normalize else y).numpy()


def _onnx(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def _export(run: str, out: str, **kw) -> dict:
    return export_deployable(ExportConfig(run=run, out=out, **kw))


def test_onnx_reloads_with_the_same_embeddings_and_a_dynamic_batch(run, tmp_path) -> None:
    out = str(tmp_path / "s.onnx")
    side = _export(run, out)
    u8 = _images(run)
    mean, std = side["mean"], side["std"]
    ref = _reference(run, u8)
    full = _onnx(out, normalise(u8, mean, std).numpy())
    assert np.abs(full - ref).max() < 1e-4
    assert (F.cosine_similarity(torch.from_numpy(full), torch.from_numpy(ref)) >= 0.9999).all()
    one = _onnx(out, normalise(u8[:1], mean, std).numpy())
    seven = _onnx(out, normalise(u8[:7], mean, std).numpy())
    np.testing.assert_allclose(one, full[:1], atol=1e-5)
    np.testing.assert_allclose(seven, full[:7], atol=1e-5)
    assert side["parity"]["vs_pytorch"]["min_cosine"] >= 0.9999 and side["opset"] >= 17
    saved = json.load(open(out + ".json"))
    assert saved["format"] == "onnx" and saved["bytes"] == os.path.getsize(out) and saved["input"]["name"] == "images"
    assert saved["cache_fingerprint"] and saved["teacher"] == "synthetic"


def test_raw_input_graph_equals_normalise_then_run(run, tmp_path) -> None:
    plain, raw = str(tmp_path / "p.onnx"), str(tmp_path / "raw.onnx")
    side = _export(run, plain)
    _export(run, raw, raw_input=True)
    u8 = _images(run)
    np.testing.assert_allclose(_onnx(raw, u8.numpy()), _onnx(plain, normalise(u8, side["mean"], side["std"]).numpy()), atol=1e-5)
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_outputs()[0].name == "embedding"


def test_no_normalize_gives_the_raw_backbone_features(run, tmp_path) -> None:
    out = str(tmp_path / "n.onnx")
    side = _export(run, out, normalize=False)
    u8 = _images(run)
    np.testing.assert_allclose(_onnx(out, normalise(u8, side["mean"], side["std"]).numpy()), _reference(run, u8, normalize=False),
                               rtol=1e-4, atol=1e-4)


def test_torchscript_loads_with_torch_jit_alone(run, tmp_path) -> None:
    out = str(tmp_path / "s.pt")
    side = _export(run, out)
    u8 = _images(run)
    graph = torch.jit.load(out)
    x = normalise(u8, side["mean"], side["std"])
    with torch.no_grad():
        np.testing.assert_allclose(graph(x).numpy(), _reference(run, u8), atol=1e-5)
        np.testing.assert_allclose(graph(x[:1]).numpy(), graph(x).numpy()[:1], atol=1e-5)


@pytest.mark.parametrize("student,size", [("tiny_cnn", 16), ("mobilenet_v2", 32)])
def test_safetensors_load_strictly_into_the_architecture(student, size, tmp_path) -> None:
    pth = str(tmp_path / "u.pth")
    export_untrained(student, 16, size, pth)
    out = str(tmp_path / "st")
    _export(pth, out, allow_unfinished=True)
    config = json.load(open(tmp_path / "st" / "config.json"))
    assert config["format"] == "safetensors" and config["architecture"] == student and config["image_size"] == size
    state = load_file(str(tmp_path / "st" / "model.safetensors"))
    if student == "mobilenet_v2":  # as a user without CompRess does it
        import torchvision

        model = torchvision.models.mobilenet_v2()
        model.classifier = torch.nn.Identity()
    else:
        from distill.students import get_student_spec

        model = get_student_spec(student).builder()
    model.load_state_dict(state, strict=True)
    u8 = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        got = model.eval()(normalise(u8, config["mean"], config["std"])).numpy()
    backbone, _ = load_student(pth)
    with torch.no_grad():
        np.testing.assert_allclose(got, backbone(normalise(u8, config["mean"], config["std"])).numpy(), atol=1e-5)


def test_torchvision_student_onnx_parity(tmp_path) -> None:
    pth = str(tmp_path / "r18.pth")
    export_untrained("resnet18", 16, 32, pth)
    out = str(tmp_path / "r18.onnx")
    side = _export(pth, out, allow_unfinished=True)
    u8 = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    got = _onnx(out, normalise(u8, side["mean"], side["std"]).numpy())
    ref = _reference(pth, u8)
    assert F.cosine_similarity(torch.from_numpy(got), torch.from_numpy(ref)).min() >= 0.9999
    np.testing.assert_allclose(_onnx(out, normalise(u8[:1], side["mean"], side["std"]).numpy()), got[:1], atol=1e-5)
    assert side["parity"]["images"].startswith("8 random uint8")  # an export without training data


def test_int8_is_calibrated_reproducibly_and_stays_close(run, tmp_path) -> None:
    a, b = str(tmp_path / "a.int8.onnx"), str(tmp_path / "b.int8.onnx")
    sa = _export(run, a, quantize="int8", calibration_images=32)
    sb = _export(run, b, quantize="int8", calibration_images=32)
    assert sa["calibration"]["fingerprint"] == sb["calibration"]["fingerprint"] and sa["calibration"]["images"] == 32
    assert sa["parity"]["vs_fp32"]["mean_cosine"] > 0.99
    assert sa["bytes"] < 0.5 * sa["parity"]["fp32_bytes"]
    u8 = _images(run)
    x = normalise(u8, sa["mean"], sa["std"]).numpy()
    np.testing.assert_array_equal(_onnx(a, x), _onnx(b, x))
    sc = _export(run, str(tmp_path / "c.int8.onnx"), quantize="int8", calibration_images=32, seed=5)
    assert sc["calibration"]["fingerprint"] != sa["calibration"]["fingerprint"]


def test_fp16_graph_keeps_float32_io(run, tmp_path) -> None:
    out = str(tmp_path / "h.onnx")
    side = _export(run, out, quantize="fp16")
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and side["parity"]["vs_fp32"]["min_cosine"] > 0.999


def test_a_failure_mid_export_leaves_no_file_under_the_final_name(run, tmp_path, monkeypatch) -> None:
    import onnx

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    out = tmp_path / "s.onnx"
    result = CliRunner().invoke(main, ["export", run, "--out", str(out)])
    assert result.exit_code == 1 and "cannot write the export" in result.output and str(out) in result.output
    assert os.listdir(tmp_path) == []


def test_missing_onnxruntime_is_one_line_naming_the_extra(run, tmp_path, monkeypatch) -> None:
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr("importlib.import_module", lambda name: fake(name))
    result = CliRunner().invoke(main, ["export", run, "--out", str(tmp_path / "s.onnx")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime" in lines[0] and "[deploy]" in lines[0]
    assert not os.path.exists(tmp_path / "s.onnx")


@pytest.mark.parametrize("args,culprit", [
    (["--out", "x.bin"], "--out"),
    (["--out", "x.onnx", "--format", "tflite"], "--format"),
    (["--out", "x.pt", "--quantize", "int8"], "--quantize"),
    (["--out", "x.safetensors", "--raw-input"], "--raw-input"),
    (["--out", "x.onnx", "--quantize", "int8", "--calibration-images", "0"], "--calibration-images"),
])
def test_bad_options_are_one_line_usage_errors(run, args, culprit) -> None:
    result = CliRunner().invoke(main, ["export", run, *args])
    assert result.exit_code == 2 and culprit in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unfinished_run_needs_allow_unfinished(tmp_path) -> None:
    pth = str(tmp_path / "u.pth")
    export_untrained("tiny_cnn", 16, 16, pth)  # finished: False, epoch 0
    result = CliRunner().invoke(main, ["export", pth, "--out", str(tmp_path / "u.onnx")])
    assert result.exit_code == 1 and "--allow-unfinished" in result.output and "epoch 0" in result.output
    assert not os.path.exists(tmp_path / "u.onnx")
    result = CliRunner().invoke(main, ["export", pth, "--out", str(tmp_path / "u.onnx"), "--allow-unfinished"])
    assert result.exit_code == 0, result.output
    assert "UNFINISHED" in result.output and "min cosine" in result.output and os.path.isfile(tmp_path / "u.onnx")


def test_the_pth_export_is_unchanged(run, tmp_path) -> None:
    result = CliRunner().invoke(main, ["export", run, "--out", str(tmp_path / "s.pth")])
    assert result.exit_code == 0, result.output
    assert json.load(open(tmp_path / "s.json"))["architecture"] == "tiny_cnn"


def test_timm_student_exports_to_every_format_with_the_same_embeddings(tmp_path) -> None:
    import timm

    pth = str(tmp_path / "m.pth")
    export_untrained("timm:mobilenetv3_small_050", 16, 32, pth)
    u8 = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    side = _export(pth, str(tmp_path / "m.onnx"), allow_unfinished=True)
    x = normalise(u8, side["mean"], side["std"])
    ref = _reference(pth, u8)
    assert F.cosine_similarity(torch.from_numpy(_onnx(str(tmp_path / "m.onnx"), x.numpy())), torch.from_numpy(ref)).min() >= 0.9999
    _export(pth, str(tmp_path / "m.pt"), allow_unfinished=True)
    with torch.no_grad():
        scripted = F.normalize(torch.jit.load(str(tmp_path / "m.pt"))(x), dim=1).numpy()
    np.testing.assert_allclose(scripted, ref, atol=1e-5)
    _export(pth, str(tmp_path / "st"), allow_unfinished=True)
    config = json.load(open(tmp_path / "st" / "config.json"))
    assert config["architecture"] == "timm:mobilenetv3_small_050"
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)  # as a user without CompRess does it
    model.load_state_dict(load_file(str(tmp_path / "st" / "model.safetensors")), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(F.normalize(model.eval()(x), dim=1).numpy(), ref, atol=1e-5)
