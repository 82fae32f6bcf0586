"""ViT / foundation-model teachers: every registry entry loads a synthetic checkpoint of each
public layout strictly (real width, depth 1) and its embeddings equal an independent forward of
the same weights; wrong files fail naming the tensor; nothing touches the network."""

from __future__ import annotations

import math
import os
import zipfile

import pytest
import torch
import torch.nn.functional as F

from cache_builder import vit_teachers as vt
from cache_builder.checkpoints import MissingWeightsError
from cache_builder.vit_checkpoints import ViTCheckpointError, ViTKeyError
from storage.errors import CompressError, UsageError
from tests.cache_builder import vit_layouts as lay

DEPTH = {"depth": 1}

# every test here runs offline (tests/conftest.py: no_network)
pytestmark = pytest.mark.usefixtures("no_network")


def images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_rows_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    cos = F.cosine_similarity(got.double(), want.double(), dim=1)
    assert bool((cos >= 0.999).all()), f"cosine per row {cos.tolist()}"
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def timm_reference(arch: str, state_dict: dict, img_size: int, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Tokens after the final norm of a timm model holding ``state_dict`` (timm names, pos_embed
    at its own grid) that interpolates position embeddings on the fly (``dynamic_img_size``)."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", img_size=img_size,
                              dynamic_img_size=True, depth=1, weight_init="skip", **kwargs).eval()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        return model.forward_features(x)


def build(name: str, path: str, size: int, **kwargs):
    teacher, spec, report = vt.build_vit_teacher(name, path, input_size=size, model_kwargs=DEPTH, **kwargs)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    return teacher, spec, report


def embed(teacher, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return teacher(x)


# ---------------------------------------------------------------------------------------------
# DINO


DINO = {"dino_vits16": (384, 16), "dino_vits8": (384, 8), "dino_vitb16": (768, 16), "dino_vitb8": (768, 8)}


@pytest.mark.parametrize("name", list(DINO))
def test_dino_released_and_full_checkpoint_match_timm(name, tmp_path) -> None:
    width, patch = DINO[name]
    size = 2 * patch
    sd = lay.dino_released(width, patch)
    x = images(size)
    tokens = timm_reference(vt.VIT_TEACHERS[name].arch, sd, 224, x)
    teacher, spec, report = build(name, lay.save(sd, str(tmp_path / "pretrain.pth")), size)
    assert report.layout == "dino" and report.location == "top level" and report.resampled
    assert spec.embed_dim == width and spec.embedding == "cls"
    assert_rows_close(embed(teacher, x), tokens[:, 0])

    student = {k: v + 1.0 for k, v in sd.items()}  # the teacher entry must win over the student
    full = lay.save(lay.dino_full(sd, student), str(tmp_path / "checkpoint.pth"))
    teacher, _, report = build(name, full, size)
    assert report.location == "['teacher'] backbone.*" and "dropped head ['head.last_layer', 'head.mlp']" in report.summary()
    assert_rows_close(embed(teacher, x), tokens[:, 0])


def test_dino_student_entry_with_module_prefix_loads(tmp_path) -> None:
    sd = lay.dino_released(384, 16)
    full = lay.dino_full(sd)
    del full["teacher"]
    teacher, _, report = build("dino_vits16", lay.save(full, str(tmp_path / "c.pth")), 32)
    assert report.location == "['student'] module.* backbone.*"
    x = images(32)
    assert_rows_close(embed(teacher, x), timm_reference("vit_small_patch16_224", sd, 224, x)[:, 0])


def test_embeddings_mean_and_cls_plus_mean(tmp_path) -> None:
    sd = lay.dino_released(384, 16)
    path = lay.save(sd, str(tmp_path / "w.pth"))
    x = images(48)
    tokens = timm_reference("vit_small_patch16_224", sd, 224, x)
    teacher, spec, _ = build("dino_vits16", path, 48, embedding="cls+mean")
    assert spec.embed_dim == 768 and spec.preprocessing()["embedding"] == "cls+mean"
    assert_rows_close(embed(teacher, x), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))
    teacher, spec, _ = build("dino_vits16", path, 48, embedding="mean")
    assert_rows_close(embed(teacher, x), tokens[:, 1:].mean(1))
    with pytest.raises(UsageError, match="--embedding 'cls'.*siglip_vitb16.*pool, mean"):
        vt.get_vit_teacher_spec("siglip_vitb16").with_embedding("cls")


# ---------------------------------------------------------------------------------------------
# DINOv2


DINOV2 = {"s": 384, "b": 768, "l": 1024, "g": 1536}


@pytest.mark.parametrize("size_name", list(DINOV2))
@pytest.mark.parametrize("reg", [False, True])
def test_dinov2_meta_release_matches_timm(size_name, reg, tmp_path) -> None:
    width = DINOV2[size_name]
    name = f"dinov2_vit{size_name}14" + ("_reg" if reg else "")
    swiglu = 4096 if size_name == "g" else 0
    sd = lay.dinov2_meta(width, registers=4 if reg else 0, swiglu_hidden=swiglu)
    assert sd["pos_embed"].shape == (1, 1370, width)
    # Meta's semantics written out: mask_token unused, w12/w3 = packed SwiGLU fc1/fc2, registers
    # inserted after the CLS token without position embedding
    ref = {k.replace("mlp.w12", "mlp.fc1").replace("mlp.w3", "mlp.fc2"): v for k, v in sd.items() if k != "mask_token"}
    if reg:
        ref["reg_token"] = ref.pop("register_tokens")
        ref["cls_token"] = ref["cls_token"] + ref["pos_embed"][:, :1]
        ref["pos_embed"] = ref["pos_embed"][:, 1:]
    x = images(28)
    tokens = timm_reference(vt.VIT_TEACHERS[name].arch, ref, 518, x)
    teacher, spec, report = build(name, lay.save(sd, str(tmp_path / "dinov2.pth")), 28)
    assert report.layout == "dinov2" and "mask_token" in report.ignored
    grid_tokens = 4 if reg else 5
    assert report.resampled == (f"pos_embed {(1, 1370, width)} -> {(1, grid_tokens, width)}",)
    assert spec.embed_dim == width and spec.interpolation == "bicubic" and spec.resize_size == 32
    assert_rows_close(embed(teacher, x), tokens[:, 0])
    if size_name == "s":
        teacher, _, _ = build(name, str(tmp_path / "dinov2.pth"), 28, embedding="mean")
        assert_rows_close(embed(teacher, x), tokens[:, 5 if reg else 1:].mean(1))


# ---------------------------------------------------------------------------------------------
# DINOv3


@pytest.mark.parametrize("name,width,heads", [("dinov3_vits16", 384, 6), ("dinov3_vitb16", 768, 12), ("dinov3_vitl16", 1024, 16)])
def test_dinov3_meta_release_matches_timm(name, width, heads, tmp_path) -> None:
    import timm
    from timm.models.eva import checkpoint_filter_fn

    sd = lay.dinov3_meta(width, heads)
    x = images(32)
    ref = timm.create_model(vt.VIT_TEACHERS[name].arch, pretrained=False, num_classes=0, global_pool="token", depth=1).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref), strict=True)
    with torch.no_grad():
        tokens = ref.forward_features(x)
    teacher, spec, report = build(name, lay.save(sd, str(tmp_path / "dinov3.pth")), 32)
    assert report.layout == "dinov3" and {"mask_token", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask"} <= set(report.ignored)
    assert_rows_close(embed(teacher, x), tokens[:, 0])
    # the k part of the file's qkv bias is masked in Meta's model: changing it changes nothing
    sd["blocks.0.attn.qkv.bias"][width:2 * width] += 5.0
    teacher, _, _ = build(name, lay.save(sd, str(tmp_path / "dinov3b.pth")), 32)
    assert_rows_close(embed(teacher, x), tokens[:, 0])
    assert spec.preprocessing()["resize"] == 36 and spec.mean == (0.485, 0.456, 0.406)


# ---------------------------------------------------------------------------------------------
# CLIP


def clip_encode_image(sd: dict, x: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """OpenAI CLIP's ``VisionTransformer.forward`` written from its state dict (QuickGELU)."""
    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)

    t = F.conv2d(x, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(t.shape[0], 1, -1)
    t = ln(torch.cat([cls, t], dim=1) + sd["visual.positional_embedding"], "visual.ln_pre")
    b = 0
    while f"visual.transformer.resblocks.{b}.ln_1.weight" in sd:
        p = f"visual.transformer.resblocks.{b}"
        h = ln(t, f"{p}.ln_1")
        q, k, v = F.linear(h, sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"]).chunk(3, dim=-1)
        def split(z: torch.Tensor) -> torch.Tensor:
            return z.unflatten(-1, (heads, -1)).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // heads), dim=-1) @ split(v)
        t = t + F.linear(att.transpose(1, 2).flatten(2), sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"])
        h = F.linear(ln(t, f"{p}.ln_2"), sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])
        t = t + F.linear(h * torch.sigmoid(1.702 * h), sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"])
        b += 1
    return ln(t[:, 0], "visual.ln_post") @ sd["visual.proj"]


CLIP = {"clip_vitb16": (768, 16, 512, 12), "clip_vitl14": (1024, 14, 768, 16)}


@pytest.mark.parametrize("name", list(CLIP))
def test_clip_openai_and_open_clip_layouts_equal_encode_image(name, tmp_path) -> None:
    width, patch, proj, heads = CLIP[name]
    size = 2 * patch
    sd = lay.openai_clip(width, patch, proj, grid=2)
    x = images(size)
    with torch.no_grad():
        want = clip_encode_image(sd, x, patch, heads)
    teacher, spec, report = build(name, lay.save(sd, str(tmp_path / "clip.pth")), size)
    assert report.layout == "openai_clip" and "ignored non-teacher" in report.summary()
    assert "text_projection" in report.ignored and not report.resampled
    assert spec.embed_dim == proj and spec.mean == vt.CLIP_MEAN and spec.resize_size == size
    assert_rows_close(embed(teacher, x), want)
    teacher, _, report = build(name, lay.save(lay.open_clip_checkpoint(sd), str(tmp_path / "open_clip.pt")), size)
    assert report.location == "['state_dict'] module.*"
    assert_rows_close(embed(teacher, x), want)


def test_clip_release_grid_is_resampled(tmp_path) -> None:
    sd = lay.openai_clip(768, 16, 512, grid=14, text=False)
    teacher, _, report = build("clip_vitb16", lay.save(sd, str(tmp_path / "clip.pth")), 48)
    assert report.resampled == ("pos_embed (1, 197, 768) -> (1, 10, 768)",)
    assert embed(teacher, images(48)).shape == (2, 512)


# ---------------------------------------------------------------------------------------------
# SigLIP, hub directories, safetensors


@pytest.fixture(scope="module")
def siglip():
    import timm

    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, img_size=32, depth=1).eval()
    model.load_state_dict(lay.randomized(model.state_dict()))
    x = images(32)
    with torch.no_grad():
        return model.state_dict(), x, model(x)


def test_siglip_hub_directory_and_open_clip_trunk(siglip, tmp_path) -> None:
    sd, x, want = siglip
    hub = lay.save_hub_dir(str(tmp_path / "hub"), sd, {"architecture": "vit_base_patch16_siglip_224", "num_classes": 0})
    teacher, spec, report = build("siglip_vitb16", hub, 32)
    assert report.path.endswith("model.safetensors") and report.layout == "timm"
    assert spec.embedding == "pool" and spec.embed_dim == 768 and spec.resize_mode == "squash"
    assert_rows_close(embed(teacher, x), want)
    path = lay.save(lay.open_clip_timm_trunk(sd), str(tmp_path / "open_clip_pytorch_model.bin"))
    teacher, _, report = build("siglip_vitb16", path, 32)
    assert report.layout == "open_clip_timm" and "logit_bias" in report.ignored
    assert_rows_close(embed(teacher, x), want)


def test_safetensors_file_loads(tmp_path) -> None:
    from safetensors.torch import save_file

    sd = lay.dino_released(384, 16)
    save_file(sd, str(tmp_path / "dino.safetensors"))
    x = images(32)
    teacher, _, _ = build("dino_vits16", str(tmp_path / "dino.safetensors"), 32)
    assert_rows_close(embed(teacher, x), timm_reference("vit_small_patch16_224", sd, 224, x)[:, 0])


# ---------------------------------------------------------------------------------------------
# timm:<model_name>


def test_timm_vit_hub_dir_drops_classifier_and_uses_its_pretrained_cfg(tmp_path) -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32).eval()
    model.load_state_dict(lay.randomized(model.state_dict()))
    cfg = {"input_size": [3, 32, 32], "crop_pct": 0.8, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}
    hub = lay.save_hub_dir(str(tmp_path / "hub"), model.state_dict(),
                           {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "pretrained_cfg": cfg})
    teacher, spec, report = vt.build_vit_teacher("timm:vit_tiny_patch16_224", hub)
    assert (spec.input_size, spec.resize_size, spec.interpolation, spec.mean, spec.std) == (32, 40, "bilinear", (0.5,) * 3, (0.25,) * 3)
    assert "dropped head ['head']" in report.summary() and spec.embed_dim == 192
    assert spec.embeddings == ("pool", "cls", "mean", "cls+mean")
    x = images(32)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert_rows_close(embed(teacher, x), want)


def test_timm_cnn_from_pth(tmp_path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False).eval()
    path = lay.save({"state_dict": model.state_dict()}, str(tmp_path / "r18.pth"))
    teacher, spec, _report = vt.build_vit_teacher("timm:resnet18", path)
    crop_pct = timm.models.get_pretrained_cfg("resnet18").crop_pct
    assert spec.embed_dim == 512 and spec.embeddings == ("pool",)
    assert (spec.input_size, spec.resize_size) == (224, math.floor(224 / crop_pct))
    x = images(64)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert_rows_close(embed(teacher, x), want)
    with pytest.raises(UsageError, match="not available"):
        vt.build_vit_teacher("timm:resnet18", path, embedding="cls")


def test_timm_names_are_checked() -> None:
    with pytest.raises(UsageError, match="unknown timm model 'vit_smal_patch16_224'.*timm:vit_small_patch16_224"):
        vt.get_vit_teacher_spec("timm:vit_smal_patch16_224")
    with pytest.raises(UsageError, match="unknown teacher 'dinov2_vits16' \\(did you mean .*'dinov2_vits14'"):
        vt.get_vit_teacher_spec("dinov2_vits16")
    assert vt.is_vit_teacher("timm:anything") and vt.is_vit_teacher("clip_vitl14") and not vt.is_vit_teacher("moco_v2_r50")


def test_hub_dir_with_another_architecture_is_refused(tmp_path) -> None:
    lay.save_hub_dir(str(tmp_path / "hub"), {"x": torch.zeros(1)}, {"architecture": "resnet50"})
    with pytest.raises(UsageError, match="config.json.*'resnet50'"):
        vt.get_vit_teacher_spec("timm:resnet18", str(tmp_path / "hub"))


# ---------------------------------------------------------------------------------------------
# wrong files


def test_vitb_file_for_vits_teacher_names_first_mismatching_tensor(tmp_path) -> None:
    path = lay.save(lay.dino_released(768, 16), str(tmp_path / "vitb.pth"))
    with pytest.raises(ViTKeyError, match=r"first mismatching tensor 'cls_token': file \(1, 1, 768\), model \(1, 1, 384\)") as e:
        build("dino_vits16", path, 32)
    assert isinstance(e.value, CompressError)


def test_patch_size_mismatch_is_refused_not_resampled(tmp_path) -> None:
    path = lay.save(lay.dino_released(384, 8), str(tmp_path / "vits8.pth"))
    with pytest.raises(ViTKeyError, match=r"'patch_embed.proj.weight' has shape \(384, 3, 8, 8\).*\(384, 3, 16, 16\)"):
        build("dino_vits16", path, 32)


def test_missing_key_is_named(tmp_path) -> None:
    sd = lay.dinov2_meta(384)
    del sd["blocks.0.attn.qkv.weight"]
    with pytest.raises(ViTKeyError, match=r"missing 1 tensors(.|\n)*blocks\.0\.attn\.qkv\.weight"):
        build("dinov2_vits14", lay.save(sd, str(tmp_path / "w.pth")), 28)


def test_unknown_layout_and_unreadable_files(tmp_path) -> None:
    with pytest.raises(ViTKeyError, match="matches none of the accepted layouts"):
        build("dinov3_vits16", lay.save({"conv1.weight": torch.zeros(1)}, str(tmp_path / "r.pth")), 32)
    with pytest.raises(MissingWeightsError, match="weights for teacher 'dino_vits16' not found at .*absent.pth"):
        build("dino_vits16", str(tmp_path / "absent.pth"), 32)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ViTCheckpointError, match="must hold one of model.safetensors"):
        build("dino_vits16", str(tmp_path / "empty"), 32)
    with zipfile.ZipFile(tmp_path / "ViT-B-16.pt", "w") as z:  # what torch.jit.save writes
        z.writestr("ViT-B-16/constants.pkl", b"")
        z.writestr("ViT-B-16/code/__torch__/model.py", b"")
    with pytest.raises(ViTCheckpointError, match="TorchScript archive.*torch.jit.load"):
        build("clip_vitb16", str(tmp_path / "ViT-B-16.pt"), 32)


# ---------------------------------------------------------------------------------------------
# specs and preprocessing


def test_registry_entries_and_recipes() -> None:
    names = vt.vit_teacher_names()
    assert len(names) == 18 and names[:4] == list(DINO)
    for name in names:
        spec = vt.VIT_TEACHERS[name]
        assert spec.source and spec.layouts and spec.embedding in spec.embeddings
        if spec.family in ("dino", "dinov2", "dinov3"):
            assert (spec.resize_size, spec.input_size, spec.interpolation, spec.mean) == (256, 224, "bicubic", vt.IMAGENET_MEAN)
            assert spec.embedding == "cls"
    clip = vt.VIT_TEACHERS["clip_vitl14"]
    assert (clip.resize_size, clip.input_size, clip.interpolation, clip.std, clip.embed_dim) == (224, 224, "bicubic", vt.CLIP_STD, 768)
    assert vt.VIT_TEACHERS["dinov2_vitg14"].with_sizes(448).resize_size == 512
    assert vt.VIT_TEACHERS["clip_vitb16"].with_sizes(336).resize_size == 336


def test_siglip_squashes_instead_of_cropping() -> None:
    img = torch.zeros(3, 40, 80, dtype=torch.uint8)
    img[:, :, :10] = 255  # a bar at the left edge that a centre crop would cut away
    spec = vt.VIT_TEACHERS["siglip_vitb16"].with_sizes(32)
    out = spec.uint8_transform()(img)
    assert out.shape == (3, 32, 32) and out[:, :, 0].float().mean() > 200
    x = spec.eval_transform()(img)
    assert x.dtype == torch.float32 and float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_bfloat16_weights(tmp_path) -> None:
    sd = lay.dino_released(384, 16)
    path = lay.save(sd, str(tmp_path / "w.pth"))
    x = images(32)
    teacher, _, _ = build("dino_vits16", path, 32, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    got = embed(teacher, x.bfloat16()).float()
    want = timm_reference("vit_small_patch16_224", sd, 224, x)[:, 0]
    assert bool((F.cosine_similarity(got, want, dim=1) >= 0.99).all())
