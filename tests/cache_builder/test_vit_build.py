"""ViT / timm teachers through `compress-cache build` on a tiny image folder: the cached rows equal
an independent forward (timm's own, or CLIP's encode_image written out) of the same weights on
images preprocessed independently with torchvision, one case per checkpoint layout family;
--embedding and --input-size; bad checkpoints fail with one line naming the tensor; nothing
touches the network. Registry models are built at depth 1 (``shallow``); the synthetic
checkpoints (tests/cache_builder/vit_layouts.py) have depth 1 and the real widths."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torchvision.transforms import InterpolationMode, v2

import storage
from cache_builder import vit_teachers as vt
from cache_builder.cli import main
from tests.cache_builder import vit_layouts as lay
from tests.cache_builder.test_vit_teachers import clip_encode_image
from tests.images import write_image_folder

SIZE = 32

# every test here runs offline (tests/conftest.py: no_network)
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def shallow(monkeypatch):
    """Registry teachers built with one block (the synthetic checkpoints have one)."""
    create = vt.create_vit_model
    monkeypatch.setattr(vt, "create_vit_model", lambda spec, model_kwargs=None: create(spec, {"depth": 1, **(model_kwargs or {})}))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("vit_data")
    write_image_folder(str(root / "train"), 2, 3, size=40, jitter=12, seed=3)
    return str(root)


def cli_build(teacher: str, weights: str, data: str, out: str, *extra: str, input_size: int | None = SIZE):
    args = ["build", "--teacher", teacher, "--weights", weights, "--data", data, "--out", out, "--workers", "0",
            "--batch-size", "4", "--no-progress", "--no-knn", *extra]
    if input_size is not None:
        args += ["--input-size", str(input_size)]
    return CliRunner().invoke(main, args)


def built(teacher: str, weights: str, data: str, out: str, *extra: str, input_size: int | None = SIZE) -> storage.Store:
    res = cli_build(teacher, weights, data, out, *extra, input_size=input_size)
    assert res.exit_code == 0, res.output
    return storage.open_store(os.path.join(out, "train"))


def preprocessed(store: storage.Store, data: str, resize: int, crop: int, mean, std, squash: bool = False,
                 interpolation: str = "bicubic") -> torch.Tensor:
    """The store's images (in row order) preprocessed with plain torchvision: ``(N, 3, crop, crop)``."""
    from PIL import Image

    mode = InterpolationMode(interpolation)
    resize_op = v2.Resize((crop, crop) if squash else resize, interpolation=mode, antialias=True)
    tf = v2.Compose([resize_op, v2.CenterCrop(crop), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(list(mean), list(std))])
    paths = store.load_metadata().paths
    return torch.stack([tf(Image.open(os.path.join(data, "train", p)).convert("RGB")) for p in paths])


def rows(store: storage.Store) -> torch.Tensor:
    return torch.from_numpy(np.asarray(store.load_all(), dtype=np.float32))


def assert_rows_match(store: storage.Store, want: torch.Tensor) -> None:
    got = rows(store)
    assert got.shape == want.shape
    cos = F.cosine_similarity(got.double(), F.normalize(want.double(), dim=1), dim=1)
    assert bool((cos >= 0.999).all()), f"cosine per row {cos.tolist()}"


def timm_tokens(arch: str, state_dict: dict, img_size: int, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """Tokens after the final norm of an independent timm model (position embeddings at the
    checkpoint's grid, interpolated on the fly)."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", img_size=img_size,
                              dynamic_img_size=True, depth=1, **kwargs).eval()
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        return model.forward_features(x)


def provenance(store: storage.Store) -> dict:
    return store.manifest.provenance


IMAGENET = (vt.IMAGENET_MEAN, vt.IMAGENET_STD)


# ---------------------------------------------------------------------------------------------
# one case per layout family


def test_dino_release_and_full_checkpoint_build(shallow, data, tmp_path) -> None:
    sd = lay.dino_released(384, 16)
    store = built("dino_vits16", lay.save(sd, str(tmp_path / "dino.pth")), data, str(tmp_path / "c"))
    x = preprocessed(store, data, 36, SIZE, *IMAGENET)
    want = timm_tokens("vit_small_patch16_224", sd, 224, x)[:, 0]
    assert_rows_match(store, want)
    prov = provenance(store)
    assert prov["embedding"] == "cls" and prov["weights_layout"] == "dino" and store.manifest.d == 384
    assert prov["preprocessing"] == {"resize": 36, "crop": 32, "interpolation": "bicubic", "resize_mode": "shorter",
                                     "input_range": "[0, 1]", "mean": list(vt.IMAGENET_MEAN), "std": list(vt.IMAGENET_STD),
                                     "embedding": "cls"}
    assert "pos_embed (1, 197, 384) -> (1, 5, 384)" in prov["weights_load"]

    full = lay.save(lay.dino_full(sd, {k: v + 1.0 for k, v in sd.items()}), str(tmp_path / "checkpoint.pth"))
    store = built("dino_vits16", full, data, str(tmp_path / "full"))
    assert_rows_match(store, want)
    assert "['teacher'] backbone.*" in provenance(store)["weights_load"]


def test_dinov2_at_224_is_a_16x16_grid_and_registers_at_another_size(shallow, data, tmp_path) -> None:
    sd = lay.dinov2_meta(384)
    store = built("dinov2_vits14", lay.save(sd, str(tmp_path / "v2.pth")), data, str(tmp_path / "c"), input_size=None)
    assert "pos_embed (1, 1370, 384) -> (1, 257, 384)" in provenance(store)["weights_load"]  # 1 + 16 x 16 tokens
    x = preprocessed(store, data, 256, 224, *IMAGENET)
    ref = {k: v for k, v in sd.items() if k != "mask_token"}
    assert_rows_match(store, timm_tokens("vit_small_patch14_dinov2", ref, 518, x)[:, 0])

    sd = lay.dinov2_meta(384, registers=4)
    store = built("dinov2_vits14_reg", lay.save(sd, str(tmp_path / "reg.pth")), data, str(tmp_path / "r"), input_size=42)
    assert "pos_embed (1, 1370, 384) -> (1, 9, 384)" in provenance(store)["weights_load"]  # 3 x 3 grid, no cls position
    ref = {k: v for k, v in sd.items() if k != "mask_token"}
    ref["reg_token"] = ref.pop("register_tokens")
    ref["cls_token"] = ref["cls_token"] + ref["pos_embed"][:, :1]
    ref["pos_embed"] = ref["pos_embed"][:, 1:]
    x = preprocessed(store, data, 48, 42, *IMAGENET)
    assert_rows_match(store, timm_tokens("vit_small_patch14_reg4_dinov2", ref, 518, x)[:, 0])


def test_dinov3_meta_layout_builds(shallow, data, tmp_path) -> None:
    import timm
    from timm.models.eva import checkpoint_filter_fn

    sd = lay.dinov3_meta(384, 6)
    store = built("dinov3_vits16", lay.save(sd, str(tmp_path / "v3.pth")), data, str(tmp_path / "c"))
    ref = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0, global_pool="token", depth=1).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref), strict=True)
    x = preprocessed(store, data, 36, SIZE, *IMAGENET)
    with torch.no_grad():
        assert_rows_match(store, ref.forward_features(x)[:, 0])


def test_openai_clip_layout_builds_encode_image(shallow, data, tmp_path) -> None:
    sd = lay.openai_clip(768, 16, 512, grid=2)
    store = built("clip_vitb16", lay.save(sd, str(tmp_path / "clip.pth")), data, str(tmp_path / "c"))
    assert store.manifest.d == 512 and provenance(store)["embedding"] == "pool"
    x = preprocessed(store, data, SIZE, SIZE, vt.CLIP_MEAN, vt.CLIP_STD)
    with torch.no_grad():
        assert_rows_match(store, clip_encode_image(sd, x, 16, 12))


def test_siglip_hub_directory_and_open_clip_trunk_build(shallow, data, tmp_path) -> None:
    import timm

    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, img_size=SIZE, depth=1).eval()
    model.load_state_dict(lay.randomized(model.state_dict()))
    hub = lay.save_hub_dir(str(tmp_path / "hub"), model.state_dict(), {"architecture": "vit_base_patch16_siglip_224"})
    store = built("siglip_vitb16", hub, data, str(tmp_path / "c"))
    x = preprocessed(store, data, SIZE, SIZE, vt.SIGLIP_MEAN, vt.SIGLIP_STD, squash=True, interpolation="bilinear")
    with torch.no_grad():
        want = model(x)
    assert_rows_match(store, want)
    assert provenance(store)["weights_sha256"] == storage.hashing.file_sha256(os.path.join(hub, "model.safetensors"))
    trunk = lay.save(lay.open_clip_timm_trunk(model.state_dict()), str(tmp_path / "open_clip_pytorch_model.bin"))
    assert_rows_match(built("siglip_vitb16", trunk, data, str(tmp_path / "t")), want)


def test_safetensors_file_builds(shallow, data, tmp_path) -> None:
    from safetensors.torch import save_file

    sd = lay.dino_released(768, 16, seed=4)
    save_file(sd, str(tmp_path / "dino.safetensors"))
    store = built("dino_vitb16", str(tmp_path / "dino.safetensors"), data, str(tmp_path / "c"))
    x = preprocessed(store, data, 36, SIZE, *IMAGENET)
    assert_rows_match(store, timm_tokens("vit_base_patch16_224", sd, 224, x)[:, 0])


def test_timm_teacher_builds_offline_from_hub_dir_and_pth(data, tmp_path) -> None:
    """No monkeypatched depth: the hub directory's config.json says depth 1 (model_args), its
    pretrained_cfg the preprocessing; the socket guard (no_network) fails any connection."""
    import timm

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("huggingface.co", 443))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=SIZE, depth=1).eval()
    model.load_state_dict(lay.randomized(model.state_dict(), seed=2))
    cfg = {"input_size": [3, SIZE, SIZE], "crop_pct": 0.8, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}
    hub = lay.save_hub_dir(str(tmp_path / "hub"), model.state_dict(), {
        "architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": {"depth": 1, "img_size": SIZE},
        "pretrained_cfg": cfg})
    store = built("timm:vit_tiny_patch16_224", hub, data, str(tmp_path / "c"), input_size=None)
    x = preprocessed(store, data, 40, SIZE, (0.5,) * 3, (0.25,) * 3, interpolation="bilinear")
    with torch.no_grad():
        assert_rows_match(store, model.forward_head(model.forward_features(x), pre_logits=True))
    assert "dropped head ['head']" in provenance(store)["weights_load"] and store.manifest.d == 192
    store = built("timm:vit_tiny_patch16_224", hub, data, str(tmp_path / "m"), "--embedding", "mean", input_size=None)
    with torch.no_grad():
        assert_rows_match(store, model.forward_features(x)[:, 1:].mean(1))

    cnn = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():  # BatchNorm statistics away from the (0, 1) default, variances positive
        for m in cnn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    store = built("timm:resnet18", lay.save({"state_dict": cnn.state_dict()}, str(tmp_path / "r18.pth")), data, str(tmp_path / "r"))
    crop_pct = timm.models.get_pretrained_cfg("resnet18").crop_pct
    x = preprocessed(store, data, int(SIZE / crop_pct), SIZE, *IMAGENET)
    with torch.no_grad():
        assert_rows_match(store, cnn.forward_head(cnn.forward_features(x), pre_logits=True))


# ---------------------------------------------------------------------------------------------
# --embedding


def test_embedding_option_is_built_recorded_and_part_of_the_identity(shallow, data, tmp_path) -> None:
    sd = lay.dino_released(384, 16, seed=7)
    w = lay.save(sd, str(tmp_path / "dino.pth"))
    out = str(tmp_path / "c")
    store = built("dino_vits16", w, data, out, "--embedding", "cls+mean")
    tokens = timm_tokens("vit_small_patch16_224", sd, 224, preprocessed(store, data, 36, SIZE, *IMAGENET))
    assert store.manifest.d == 768 and provenance(store)["embedding"] == "cls+mean"
    assert_rows_match(store, torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1))
    with open(os.path.join(out, "build_config.json")) as f:
        assert json.load(f)["teacher_spec"]["embedding"] == "cls+mean"
    res = cli_build("dino_vits16", w, data, out, "--embedding", "mean")  # another embedding: another cache
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_embedding_refused_where_it_does_not_apply(data, tmp_path) -> None:
    import torchvision

    w = str(tmp_path / "r18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), w)
    res = cli_build("custom", w, data, str(tmp_path / "c"), "--arch", "resnet18", "--embedding", "cls")
    assert res.exit_code == 2 and "--embedding 'cls' does not apply to teacher 'custom'" in res.output
    sig = lay.save({"x": torch.zeros(1)}, str(tmp_path / "s.pth"))
    res = cli_build("siglip_vitb16", sig, data, str(tmp_path / "s"), "--embedding", "cls")
    assert res.exit_code != 0 and "--embedding" in res.output
    res = cli_build("dino_vits16", sig, data, str(tmp_path / "d"), "--embedding", "max")
    assert res.exit_code == 2 and "--embedding" in res.output


# ---------------------------------------------------------------------------------------------
# bad checkpoints through the CLI: one line, exit 1


def _error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    return lines[0]


def test_wrong_size_checkpoint_names_first_tensor_and_shapes(shallow, data, tmp_path) -> None:
    vitb = lay.save(lay.dino_released(768, 16), str(tmp_path / "vitb.pth"))
    line = _error_line(cli_build("dino_vits16", vitb, data, str(tmp_path / "c")))
    assert "first mismatching tensor 'cls_token': file (1, 1, 768), model (1, 1, 384)" in line


def test_missing_key_is_named(shallow, data, tmp_path) -> None:
    sd = lay.dinov2_meta(384)
    del sd["blocks.0.attn.qkv.weight"]
    line = _error_line(cli_build("dinov2_vits14", lay.save(sd, str(tmp_path / "w.pth")), data, str(tmp_path / "c")))
    assert "missing 1 tensors" in line and "blocks.0.attn.qkv.weight" in line


def test_missing_weights_says_where_they_come_from(data, tmp_path) -> None:
    line = _error_line(cli_build("dinov2_vitl14", str(tmp_path / "absent.pth"), data, str(tmp_path / "c")))
    assert "weights for teacher 'dinov2_vitl14' not found" in line and "facebookresearch/dinov2" in line


# ---------------------------------------------------------------------------------------------
# speed / memory helpers (CPU side of the GPU path) and list-teachers


def test_low_precision_weights_keep_norms_float32_and_match(shallow, tmp_path) -> None:
    from cache_builder.embed import Embedder, cast_weights_

    teacher, spec, _ = vt.build_vit_teacher("dino_vits16", lay.save(lay.dino_released(384, 16), str(tmp_path / "w.pth")),
                                            input_size=SIZE)
    x = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    fp32 = Embedder(teacher, torch.device("cpu"), mean=spec.mean, std=spec.std, low_precision_weights=True)
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # CPU: float32, no autocast
    want = torch.from_numpy(fp32(x, "float32"))
    cast_weights_(teacher, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in teacher.named_parameters()}
    assert dtypes["model.blocks.0.attn.qkv.weight"] == torch.bfloat16 and dtypes["model.pos_embed"] == torch.bfloat16
    assert dtypes["model.norm.weight"] == torch.float32 and dtypes["model.blocks.0.norm1.bias"] == torch.float32
    from cache_builder.transforms import normalize_batch

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = F.normalize(teacher(normalize_batch(x, spec.mean, spec.std)).float(), dim=1)
    assert bool((F.cosine_similarity(got, want, dim=1) > 0.99).all())


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14_reg", "clip_vitb16"])
def test_recorded_counts_are_the_networks(name) -> None:
    from cache_builder import architectures

    spec = vt.VIT_TEACHERS[name]
    with torch.device("meta"):
        model = vt.ViTEmbedding(vt.create_vit_model(spec).eval(), spec.embedding)
    assert spec.params == architectures.count_parameters(model)
    assert spec.gflops == pytest.approx(architectures.gflops(model, 224), abs=0.01)


@pytest.mark.slow
def test_every_recorded_count_is_the_networks() -> None:
    from cache_builder import architectures

    for name, spec in vt.VIT_TEACHERS.items():
        with torch.device("meta"):
            model = vt.ViTEmbedding(vt.create_vit_model(spec).eval(), spec.embedding)
            out = model(torch.empty(1, 3, 224, 224))
        assert tuple(out.shape) == (1, spec.embed_dim), name
        assert spec.params == architectures.count_parameters(model), name
        if spec.gflops is not None:
            assert spec.gflops == pytest.approx(architectures.gflops(model, 224), abs=0.01), name


def test_list_teachers_shows_vit_entries_without_building(monkeypatch) -> None:
    import timm

    def no_build(*args, **kwargs):
        raise AssertionError("list-teachers built a network")

    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(vt, "create_vit_model", no_build)
    res = CliRunner().invoke(main, ["list-teachers"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in vt.VIT_TEACHERS:
        assert any(line.startswith(name + " ") for line in lines), name
    g = next(line for line in lines if line.startswith("dinov2_vitg14 "))
    assert "vit_giant_patch14_dinov2" in g and "1536" in g and "1134.8M" in g and "dinov2 | timm" in g
    assert "source: facebookresearch/dinov2: dinov2_vitg14_pretrain.pth" in res.output
    assert "timm:<model_name>" in res.output


def test_compress_eval_model_accepts_vit_and_timm_teachers(shallow, data, tmp_path) -> None:
    """``--model teacher:NAME:WEIGHTS`` of compress-eval (evaluate.models) with a ViT teacher and
    ``teacher:timm:<model_name>:HUB_DIR``."""
    import timm
    from PIL import Image

    from evaluate.models import resolve_model

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=SIZE, depth=1).eval()
    model.load_state_dict(lay.randomized(model.state_dict(), seed=4))
    hub = lay.save_hub_dir(str(tmp_path / "hub"), model.state_dict(), {
        "architecture": "vit_tiny_patch16_224", "model_args": {"depth": 1, "img_size": SIZE},
        "pretrained_cfg": {"input_size": [3, SIZE, SIZE], "crop_pct": 1.0}})
    resolved = resolve_model(f"teacher:timm:vit_tiny_patch16_224:{hub}")
    assert resolved.identity["name"] == "timm:vit_tiny_patch16_224"
    assert resolved.identity["weights_sha256"] == storage.hashing.file_sha256(os.path.join(hub, "model.safetensors"))
    img = Image.open(os.path.join(data, "train", "class_0", "000.png"))
    x = resolved.transform(img).unsqueeze(0)
    assert x.shape == (1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(resolved.module(x), model(x), rtol=1e-4, atol=1e-4)

    path = lay.save(lay.dino_released(384, 16), str(tmp_path / "dino.pth"))
    resolved = resolve_model(f"teacher:dino_vits16:{path}")
    assert resolved.transform(img).shape == (3, 224, 224) and "bicubic" in resolved.identity["preprocessing"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_build_is_bf16_and_a_vitg_never_holds_fp32_weights_there(shallow, data, tmp_path, monkeypatch) -> None:
    """On CUDA: the ViT cache equals the CPU float32 cache (bf16 autocast + bf16 weights), and a
    full-depth DINOv2 ViT-g (1.13B parameters: 4.5 GB in float32) peaks below 3.5 GB on the GPU."""
    from safetensors.torch import save_file

    sd = lay.dino_released(384, 16, seed=9)
    w = lay.save(sd, str(tmp_path / "dino.pth"))
    cpu = rows(built("dino_vits16", w, data, str(tmp_path / "cpu"), "--device", "cpu"))
    gpu = rows(built("dino_vits16", w, data, str(tmp_path / "gpu"), "--device", "cuda"))
    assert bool((F.cosine_similarity(cpu, gpu, dim=1) > 0.995).all())

    monkeypatch.undo()  # full depth from here on
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = vt.VIT_TEACHERS["dinov2_vitg14"]
    full = vt.create_vit_model(spec)
    path = str(tmp_path / "vitg.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in full.state_dict().items()}, path)
    del full
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    store = built("dinov2_vitg14", path, data, str(tmp_path / "g"), "--device", "cuda", input_size=None)
    peak = torch.cuda.max_memory_allocated()
    assert store.manifest.d == 1536 and bool(np.isfinite(rows(store).numpy()).all())
    assert peak < 3.5e9, f"peak GPU memory {peak / 1e9:.2f} GB: float32 weights were on the GPU"


def _synthetic(name: str, tmp_path) -> tuple[str, int]:
    """A synthetic depth-1 checkpoint of registry entry ``name`` in its release's layout, and a
    test input size (two patches a side)."""
    import timm

    spec = vt.VIT_TEACHERS[name]
    patch = int(spec.arch.split("patch")[1].split("_")[0])
    path = str(tmp_path / f"{name}.pth")
    if spec.family == "dino":
        return lay.save(lay.dino_released(spec.width, patch), path), 2 * patch
    if spec.family == "dinov2":
        sd = lay.dinov2_meta(spec.width, registers=4 if name.endswith("_reg") else 0,
                             swiglu_hidden=4096 if spec.width == 1536 else 0)
        return lay.save(sd, path), 2 * patch
    if spec.family == "dinov3":
        return lay.save(lay.dinov3_meta(spec.width, spec.width // 64), path), 2 * patch
    if spec.family == "clip":
        return lay.save(lay.openai_clip(spec.width, patch, spec.pool_dim, grid=2), path), 2 * patch
    model = timm.create_model(spec.arch, pretrained=False, num_classes=0, img_size=2 * patch, depth=1)
    return lay.save_hub_dir(str(tmp_path / name), lay.randomized(model.state_dict()), {"architecture": spec.arch}), 2 * patch


@pytest.mark.slow
@pytest.mark.parametrize("name", list(vt.VIT_TEACHERS))
def test_every_registry_entry_builds_the_teachers_rows(name, shallow, data, tmp_path) -> None:
    """Every entry through `compress-cache build`: rows = the loaded teacher (checked against
    timm / encode_image in test_vit_teachers.py) on torchvision-preprocessed images."""
    weights, size = _synthetic(name, tmp_path)
    store = built(name, weights, data, str(tmp_path / "c"), input_size=size)
    teacher, spec, _ = vt.build_vit_teacher(name, weights, input_size=size, model_kwargs={"depth": 1})
    x = preprocessed(store, data, spec.resize_size, size, spec.mean, spec.std, squash=spec.resize_mode == "squash",
                     interpolation=spec.interpolation)
    with torch.inference_mode():
        assert_rows_match(store, teacher(x))
    assert store.manifest.d == spec.embed_dim and provenance(store)["embedding"] == spec.embedding
