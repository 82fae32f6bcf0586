"""Teacher registry and strict checkpoint loading against synthetic files of every layout."""

from __future__ import annotations

import os

import pytest
import torch

from cache_builder import teachers
from cache_builder.checkpoints import CheckpointError, CheckpointKeyError, group_keys, tf_resnet50_name
from tests.cache_builder import synthetic as syn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ref():
    """(state dict, features of the plain torchvision resnet50 with fc removed) for one seed."""
    model = syn.resnet50_reference(seed=1)
    sd = model.state_dict()
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        feats = model(X)
    return sd, feats


@pytest.mark.parametrize("name", list(teachers.TEACHERS))
def test_every_registry_entry_builds_with_its_dim(name: str) -> None:
    spec = teachers.get_teacher_spec(name)
    model = teachers.build_meta(spec)
    out = model(torch.empty(2, 3, spec.input_size, spec.input_size, device="meta"))
    assert tuple(out.shape) == (2, spec.embed_dim)
    assert spec.layouts and spec.drop
    assert spec.eval_transform() is not None
    from cache_builder import architectures

    # the counts list-teachers prints come from the spec: they must be those of the network
    assert spec.params == architectures.count_parameters(model)
    assert spec.gflops == pytest.approx(architectures.gflops(model, 224), abs=0.01)


def test_registry_values() -> None:
    dims = {"simclr_r50x1": 2048, "simclr_r50x2": 4096, "simclr_r50x4": 8192, "swav_r50w5": 10240,
            "moco_v2_r50": 2048, "supervised_mobilenet_v2": 1280}
    for name, d in dims.items():
        assert teachers.get_teacher_spec(name).embed_dim == d
    assert teachers.get_teacher_spec("simclr_r50x4").mean is None
    assert teachers.get_teacher_spec("swav_r50").std[0] == 0.228
    assert teachers.get_teacher_spec("moco_v1_r50").std[0] == 0.229
    assert teachers.get_teacher_spec("dino_r50").interpolation == "bicubic"


def test_unknown_teacher_lists_known_names() -> None:
    with pytest.raises(teachers.UnknownTeacherError, match="simclr_r50x4.*moco_v2_r50"):
        teachers.get_teacher_spec("simclr_r50x8")
    with pytest.raises(teachers.UnknownTeacherError, match="did you mean 'moco_v2_r50'"):
        teachers.get_teacher_spec("moco_v2_r5O")
    from storage.errors import CompressError

    assert issubclass(teachers.UnknownTeacherError, CompressError) and issubclass(teachers.MissingWeightsError, CompressError)
    assert issubclass(CheckpointError, CompressError)


def test_torchvision_headless_is_the_one_head_stripping() -> None:
    from cache_builder.architectures import headless_dim, torchvision_headless
    from storage.errors import UsageError

    model, dropped = torchvision_headless("resnet18")
    assert dropped == ("fc.",) and isinstance(model.fc, torch.nn.Identity) and headless_dim("resnet18") == 512
    alex, dropped = torchvision_headless("alexnet", penultimate=True)  # the reference's fc7 student
    assert dropped == ("classifier.6.",) and len(alex.classifier) == 6
    assert headless_dim("alexnet", penultimate=True) == 4096 and headless_dim("alexnet") == 9216
    assert headless_dim("mobilenet_v2") == 1280 and headless_dim("resnet18", "layer3") == 256
    with pytest.raises(UsageError, match="did you mean 'resnet18'"):
        torchvision_headless("resnet81")


LAYOUT_CASES = {
    "simclr_r50x1": [syn.simclr_tonylins, syn.simclr_tf],
    "moco_v1_r50": [lambda sd: syn.moco_released(sd, v2=False)],
    "moco_v2_r50": [syn.moco_released],
    "swav_r50": [syn.swav],
    "barlowtwins_r50": [syn.flat_backbone, syn.barlow_full],
    "dino_r50": [syn.flat_backbone, syn.dino_full],
    "vicreg_r50": [syn.flat_backbone],
    "byol_r50": [syn.byol],
    "supervised_r50": [lambda sd: dict(sd)],
}


@pytest.mark.parametrize("name,make", [(n, m) for n, ms in LAYOUT_CASES.items() for m in ms])
def test_layout_loads_strictly_and_matches_torchvision(name, make, ref, tmp_path, capsys) -> None:
    sd, expected = ref
    path = syn.save(make(sd), str(tmp_path / "w.pth"))
    model, spec = teachers.load_teacher(name, path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        got = model(X)
    assert got.shape == (2, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    out = capsys.readouterr().out
    assert "loaded" in out
    if make is syn.byol:
        assert "filled 53 absent num_batches_tracked" in out and "dropped head ['fc']" in out
    if make is syn.swav:
        assert "dropped head ['module.projection_head', 'module.prototypes'] (10 keys)" in out


def test_moco_full_checkpoint_loads_encoder_q_not_encoder_k(ref, tmp_path) -> None:
    sd, expected = ref
    other = {k: (v * 0.5 + 0.1 if v.is_floating_point() else v) for k, v in sd.items()}  # a different encoder_k
    path = syn.save(syn.moco_full(sd, other), str(tmp_path / "moco.pth"))
    model, _ = teachers.load_teacher("moco_v2_r50", path)
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)


def test_legacy_serialization_loads(ref, tmp_path) -> None:
    sd, expected = ref
    path = syn.save(syn.swav(sd), str(tmp_path / "swav.pth"), legacy=True)
    model, _ = teachers.load_teacher("swav_r50", path)
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)


def test_moco_without_module_prefix_fails_loudly(ref, tmp_path) -> None:
    sd, _ = ref
    ckpt = syn.moco_released(sd)
    ckpt["state_dict"] = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    path = syn.save(ckpt, str(tmp_path / "m.pth"))
    with pytest.raises(CheckpointKeyError, match=r"matches none of the accepted layouts(.|\n)*encoder_q\.conv1\.\* \(1\)"):
        teachers.load_teacher("moco_v2_r50", path)


def test_truncated_checkpoint_reports_missing_keys_by_prefix(ref, tmp_path) -> None:
    sd, _ = ref
    flat = syn.flat_backbone(sd)
    cut = {k: v for k, v in flat.items() if not k.startswith("layer4.2.")}
    path = syn.save(cut, str(tmp_path / "t.pth"))
    with pytest.raises(CheckpointKeyError) as err:
        teachers.load_teacher("dino_r50", path)
    msg = str(err.value)
    assert "missing 15 keys" in msg and "layer4.2.* (15)" in msg and "unexpected" not in msg


def test_wrong_architecture_reports_unexpected_and_shapes(tmp_path) -> None:
    import torchvision

    r18 = torchvision.models.resnet18().state_dict()
    path = syn.save(dict(r18), str(tmp_path / "r18.pth"))
    with pytest.raises(CheckpointKeyError) as err:
        teachers.load_teacher("supervised_r50", path)
    msg = str(err.value)
    assert "missing" in msg and "layer1.0.* " in msg and "wrong shape" in msg


def test_extra_unknown_keys_are_unexpected(ref, tmp_path) -> None:
    sd, _ = ref
    flat = syn.flat_backbone(sd)
    flat["projector.0.weight"] = torch.zeros(3, 3)
    path = syn.save(flat, str(tmp_path / "x.pth"))
    with pytest.raises(CheckpointKeyError, match=r"unexpected 1 keys(.|\n)*projector\.0\.\*"):
        teachers.load_teacher("vicreg_r50", path)


def test_unsafe_pickle_is_refused(tmp_path) -> None:
    import argparse

    path = str(tmp_path / "student.pth")
    torch.save({"opt": argparse.Namespace(a=1), "model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        teachers.load_teacher("supervised_r50", path)


def test_missing_weights_message_says_where_and_how(tmp_path) -> None:
    path = str(tmp_path / "nope" / "simclr_r50x4.pth")
    with pytest.raises(teachers.MissingWeightsError) as err:
        teachers.load_teacher("simclr_r50x4", path)
    msg = str(err.value)
    assert path in msg and "TensorFlow" in msg and "simclr-converter" in msg and "conv2d_N" in msg


def test_default_weights_path_uses_compress_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COMPRESS_HOME", str(tmp_path))
    assert teachers.default_weights_path("moco_v2_r50") == os.path.join(str(tmp_path), "weights", "moco_v2_r50.pth")
    # a timm name's colon (not allowed in Windows file names) becomes an underscore
    assert teachers.default_weights_path("timm:vit_small_patch14_dinov2.lvd142m") == os.path.join(
        str(tmp_path), "weights", "timm_vit_small_patch14_dinov2.lvd142m.pth")


@pytest.mark.parametrize("width", [2, 4])
def test_wide_simclr_both_layouts_load_the_same_tensors(width, tmp_path) -> None:
    sd = syn.stride0_resnet_state_dict(width, seed=width)
    a = syn.save(syn.simclr_tonylins(sd), str(tmp_path / "a.pth"))
    b = syn.save(syn.simclr_tf(sd), str(tmp_path / "b.pth"))
    assert os.path.getsize(a) < 20e6
    ma, _ = teachers.load_teacher(f"simclr_r50x{width}", a)
    mb, _ = teachers.load_teacher(f"simclr_r50x{width}", b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert set(sa) == set(sb) and len(sa) == 318
    for k in sa:
        va, vb = sa[k], sb[k]
        assert va.shape == vb.shape
        first = (slice(None),) + (0,) * (va.dim() - 1) if va.dim() else ()
        assert torch.equal(va[first], vb[first]), k
    assert sa["conv1.weight"].shape[0] == 64 * width


def test_swav_w5_loads(tmp_path) -> None:
    sd = syn.stride0_resnet_state_dict(5, seed=5)
    flat = {"module." + k: v for k, v in sd.items() if not k.startswith("fc.")}
    flat["module.prototypes.weight"] = torch.randn(3000, 128)
    model, spec = teachers.load_teacher("swav_r50w5", syn.save(flat, str(tmp_path / "w5.pth")))
    assert spec.embed_dim == 10240 and model.state_dict()["layer4.2.conv3.weight"].shape[0] == 10240


def test_tf_name_mapping_matches_reference_table() -> None:
    assert tf_resnet50_name("conv1.weight") == "conv2d.weight"
    assert tf_resnet50_name("layer1.0.downsample.0.weight") == "conv2d_1.weight"
    assert tf_resnet50_name("layer1.0.conv1.weight") == "conv2d_2.weight"
    assert tf_resnet50_name("layer2.0.downsample.1.running_var") == "batch_normalization_11.running_var"
    assert tf_resnet50_name("layer2.0.conv2.weight") == "conv2d_13.weight"
    assert tf_resnet50_name("layer4.0.conv2.weight") == "conv2d_45.weight"
    assert tf_resnet50_name("layer4.2.conv3.weight") == "conv2d_52.weight"


def test_mobilenet_v2_loads_and_input_size_override(tmp_path) -> None:
    import torchvision

    ref = syn.randomize_(torchvision.models.mobilenet_v2(), seed=3)
    path = syn.save(ref.state_dict(), str(tmp_path / "mnv2.pth"))
    model, spec = teachers.load_teacher("supervised_mobilenet_v2", path)
    ref.classifier = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X), rtol=1e-4, atol=1e-4)
    small = spec.with_sizes(64)
    assert (small.input_size, small.resize_size) == (64, 73)
    from PIL import Image

    grey = Image.new("L", (90, 70), color=128)
    out = small.eval_transform()(grey)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], (torch.full((64, 64), 128 / 255) - 0.485) / 0.229)


def test_custom_teacher_with_prefix_and_embed_layer(tmp_path) -> None:
    import torchvision

    ref = syn.randomize_(torchvision.models.resnet18(), seed=4)
    path = syn.save({"model": {"backbone." + k: v for k, v in ref.state_dict().items()}}, str(tmp_path / "c.pth"))
    model, spec = teachers.load_teacher("custom", path, arch="resnet18", prefix="backbone.")
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(X), ref(X), rtol=1e-4, atol=1e-4)
    assert spec.embed_dim == 512
    model3, spec3 = teachers.load_teacher("custom", path, arch="resnet18", prefix="backbone.", embed_layer="layer3")
    assert spec3.embed_dim == 256 and model3(X).shape == (2, 256)
    with pytest.raises(ValueError, match="needs --arch"):
        teachers.load_teacher("custom", path)


def test_eval_transform_pil_and_tensor_agree_on_shape_and_range() -> None:
    spec = teachers.get_teacher_spec("simclr_r50x1").with_sizes(32, 36)
    img = torch.randint(0, 256, (1, 50, 40), dtype=torch.uint8)
    out = spec.eval_transform()(img)
    assert out.shape == (3, 32, 32) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_group_keys_format() -> None:
    text = group_keys(["layer1.0.conv1.weight", "layer1.0.bn1.bias", "fc.bias"])
    assert "layer1.0.* (2)" in text and "fc.* (1)" in text


def test_cli_list_teachers_prints_every_entry() -> None:
    from click.testing import CliRunner

    from cache_builder.cli import main

    res = CliRunner().invoke(main, ["list-teachers", "--no-flops"])
    assert res.exit_code == 0, res.output
    for name in teachers.teacher_names():
        assert name in res.output
    line = next(row for row in res.output.splitlines() if row.startswith("simclr_r50x4 "))
    assert "8192" in line and "375.4M" in line and "simclr_tf" in line


def test_cli_list_teachers_builds_no_network(monkeypatch) -> None:
    """It used to build every network to count parameters (5-8 s): the counts are in the specs."""
    from click.testing import CliRunner

    from cache_builder.cli import main

    def no_build(*args, **kwargs):
        raise AssertionError("list-teachers built a network")

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", no_build)
    monkeypatch.setattr(teachers, "build_meta", no_build)
    res = CliRunner().invoke(main, ["list-teachers"])
    assert res.exit_code == 0, res.output
    for name in teachers.teacher_names():
        assert name in res.output
    line = next(row for row in res.output.splitlines() if row.startswith("simclr_r50x4 "))
    assert "375.4M" in line and "128.0" in line


def test_permuted_tf_kernels_are_made_contiguous(ref, tmp_path) -> None:
    """tonylins/simclr-converter stores conv weights as permute(3, 2, 0, 1) views of TF kernels."""
    sd, expected = ref
    permuted = {k: (v.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1) if v.dim() == 4 else v) for k, v in sd.items()}
    assert not permuted["conv1.weight"].is_contiguous()
    model, _ = teachers.load_teacher("simclr_r50x1", syn.save(syn.simclr_tonylins(permuted), str(tmp_path / "p.pth")))
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=1e-4, atol=1e-4)
