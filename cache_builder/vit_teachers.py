"""ViT and foundation-model teachers on timm: DINO, DINOv2 (+ registers), DINOv3, CLIP, SigLIP,
and any timm model (``timm:<model_name>``). See docs/cache.md, "ViT and foundation-model teachers".

A ``ViTTeacherSpec`` is frozen: timm architecture and its create arguments, embeddings, accepted
checkpoint layouts (``vit_checkpoints.LAYOUTS``), the release's evaluation preprocessing and the
public source of the weights. Models are created with ``pretrained=False`` always; weights come
only from the user's file or directory (``HF_HUB_OFFLINE=1`` is set before timm is used).

    teacher, spec, report = build_vit_teacher("dinov2_vits14", "dinov2_vits14_pretrain.pth")
    x = torch.stack([spec.eval_transform()(pil_image)])   # (1, 3, 224, 224) float, ImageNet mean/std
    emb = teacher(x)                                      # (1, 384): CLS token after the final norm

Embeddings (``--embedding``), computed from the tokens after the final norm ``(B, N, D)``:
``cls`` = token 0, ``mean`` = mean of the patch tokens (prefix tokens -- CLS, registers -- left
out), ``cls+mean`` = both concatenated ``(B, 2D)``, ``pool`` = the model's own output embedding
(CLIP: the projected CLS token, i.e. ``encode_image``; SigLIP: the attention-pooled MAP head;
CNNs: their global pool; DINO family: the CLS token again).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cache_builder.build_config import EMBEDDINGS  # the --embedding choices: the DINO family and timm offer all
from cache_builder.checkpoints import LoadReport, MissingWeightsError
from cache_builder.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, SquashUint8Transform, Uint8Transform
from cache_builder.vit_checkpoints import detect_layout, hub_config, load_vit_strict, read_weights, unwrap
from storage.errors import UsageError, unknown_name

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ViTTeacherSpec:
    """A frozen description of one ViT / timm teacher.

    Attributes:
        name: registry key (``dinov2_vits14``) or ``timm:<model_name>``.
        arch: timm model name given to ``timm.create_model`` (``pretrained=False``).
        family: ``dino | dinov2 | dinov3 | clip | siglip | timm``.
        width: token width D of the backbone.
        pool_dim: dimension of the ``pool`` embedding (CLIP: its projection dim).
        embedding: the embedding this spec produces (the release's default until chosen).
        embeddings: the embeddings this teacher can give.
        layouts: accepted checkpoint layouts, tried in order.
        create: extra ``timm.create_model`` arguments (``num_classes``, ``global_pool``, ...).
        drop: converted key prefixes that are heads the teacher does not use (reported).
        input_size / resize_size / interpolation / resize_mode: the release's eval recipe:
            ``shorter`` = ``Resize(resize_size)`` (shorter side) + ``CenterCrop(input_size)``;
            ``squash`` = ``Resize((input_size, input_size))``.
        mean / std: per-channel normalisation after scaling to [0, 1].
        crop_pct: ``input_size / resize_size`` kept when ``with_sizes`` changes the input size.
        source: the public release of the weights; convert: how to get a loadable file from it.
        params / gflops: parameters and GFLOPs at 224 px of the default embedding's network,
            recorded so that ``list-teachers`` builds nothing (a test checks them on the meta device).
    """

    name: str
    arch: str
    family: str
    width: int
    pool_dim: int
    embedding: str
    embeddings: tuple[str, ...]
    layouts: tuple[str, ...]
    source: str
    convert: str = "The release is a PyTorch file: use it as is."
    create: tuple[tuple[str, Any], ...] = ()
    drop: tuple[str, ...] = ()
    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bicubic"
    resize_mode: str = "shorter"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 224 / 256
    fixed_input_size: bool = True
    params: int | None = None
    gflops: float | None = None

    @property
    def options(self) -> tuple[tuple[str, Any], ...]:
        """The ``timm.create_model`` arguments (part of the cache identity, like ``custom``'s options)."""
        return self.create

    def expected_layout(self) -> str:
        return " | ".join(self.layouts)

    def missing_weights_message(self, path: str) -> str:
        from cache_builder.vit_checkpoints import LAYOUTS

        layouts = "\n".join(f"    - {n}: {LAYOUTS[n].description}" for n in self.layouts)
        return (
            f"weights for teacher {self.name!r} not found at {path}\n"
            f"  Pass --weights FILE_OR_DIR (a .pth/.safetensors file or a hub directory with config.json + model.safetensors).\n"
            f"  Public release: {self.source}\n"
            f"  Expected ({self.arch}, {self.embed_dim or '?'}-d {self.embedding} embedding) one of these layouts:\n{layouts}\n"
            f"  How to get it: {self.convert}"
        )

    @property
    def embed_dim(self) -> int:
        """Dimension D of ``self.embedding``."""
        return self.embedding_dim(self.embedding)

    def embedding_dim(self, embedding: str) -> int:
        return {"cls": self.width, "mean": self.width, "cls+mean": 2 * self.width, "pool": self.pool_dim}[embedding]

    def with_embedding(self, embedding: str | None) -> ViTTeacherSpec:
        """The same teacher giving ``embedding`` (``None`` = the release's default)."""
        if embedding is None:
            return self
        if embedding not in self.embeddings:
            raise UsageError(f"--embedding {embedding!r} is not available for teacher {self.name!r}; "
                             f"choose one of {', '.join(self.embeddings)}")
        return dataclasses.replace(self, embedding=embedding)

    def with_sizes(self, input_size: int | None = None, resize_size: int | None = None) -> ViTTeacherSpec:
        """The same teacher at another input size (resize kept at ``input_size / crop_pct`` unless
        ``resize_size`` is given; ``squash`` teachers resize straight to the input size). The
        position embeddings are resampled to the new grid when the weights are loaded."""
        if input_size is None and resize_size is None:
            return self
        size = int(input_size or self.input_size)
        if size <= 0:
            raise UsageError(f"--input-size must be positive, got {size}")
        if self.resize_mode == "squash":
            if resize_size is not None and resize_size != size:
                raise UsageError(f"--resize-size does not apply to {self.name!r}, which resizes the whole image to --input-size")
            return dataclasses.replace(self, input_size=size, resize_size=size)
        resize = int(resize_size) if resize_size is not None else max(math.floor(size / self.crop_pct), size)
        if resize < size:
            raise UsageError(f"{self.name}: need --input-size <= --resize-size, got {size} and {resize}")
        return dataclasses.replace(self, input_size=size, resize_size=resize)

    # ---- preprocessing (same interface as teachers.TeacherSpec) ---------------------------
    def uint8_transform(self) -> Uint8Transform | SquashUint8Transform:
        """PIL image or uint8 ``(C, H, W)`` -> uint8 ``(3, S, S)`` (the CPU half of preprocessing)."""
        if self.resize_mode == "squash":
            return SquashUint8Transform(self.input_size, self.interpolation)
        return Uint8Transform(self.input_size, self.resize_size, self.interpolation)

    def eval_transform(self) -> EvalTransform:
        """PIL image or uint8 tensor -> float32 ``(3, S, S)``: resize/crop, [0, 1], mean/std."""
        return EvalTransform(self.uint8_transform(), self.mean, self.std)  # type: ignore[arg-type]

    def preprocessing(self) -> dict[str, Any]:
        """The recipe as plain data (recorded in manifests), with the embedding."""
        return {
            "resize": self.resize_size, "crop": self.input_size, "interpolation": self.interpolation,
            "resize_mode": self.resize_mode, "input_range": "[0, 1]", "mean": list(self.mean), "std": list(self.std),
            "embedding": self.embedding,
        }


# ---------------------------------------------------------------------------------------------
# registry

# every weight is overwritten by the strict load: timm's ViT init (trunc_normal_ of a 1.1B-parameter
# ViT-g takes long) is skipped; Eva (DINOv3) has no such switch
_SKIP_INIT = (("weight_init", "skip"),)
_TOKEN = (("num_classes", 0), ("global_pool", "token"))


def _dino(name: str, arch: str, width: int, release: str) -> ViTTeacherSpec:
    return ViTTeacherSpec(
        name=name, arch=arch, family="dino", width=width, pool_dim=width, embedding="cls", embeddings=EMBEDDINGS,
        layouts=("dino", "timm"), create=_TOKEN + _SKIP_INIT,
        source=f"facebookresearch/dino: {release}_pretrain.pth (backbone) or {release}_pretrain_full_checkpoint.pth "
               "('teacher' / 'student' dicts, heads dropped)",
    )


def _dinov2(size: str, arch_size: str, width: int, reg: bool) -> ViTTeacherSpec:
    suffix, arch_reg = ("_reg", "_reg4") if reg else ("", "")
    return ViTTeacherSpec(
        name=f"dinov2_vit{size}14{suffix}", arch=f"vit_{arch_size}_patch14{arch_reg}_dinov2", family="dinov2",
        width=width, pool_dim=width, embedding="cls", embeddings=EMBEDDINGS, layouts=("dinov2", "timm"), create=_TOKEN + _SKIP_INIT,
        source=f"facebookresearch/dinov2: dinov2_vit{size}14{'_reg4' if reg else ''}_pretrain.pth (pos_embed at 518 px, "
               "resampled to the input size)",
    )


def _dinov3(size: str, arch_size: str, width: int) -> ViTTeacherSpec:
    return ViTTeacherSpec(
        name=f"dinov3_vit{size}16", arch=f"vit_{arch_size}_patch16_dinov3_qkvb", family="dinov3", width=width,
        pool_dim=width, embedding="cls", embeddings=EMBEDDINGS, layouts=("dinov3", "timm"), create=_TOKEN,
        source=f"facebookresearch/dinov3: dinov3_vit{size}16_pretrain_lvd1689m-*.pth (Meta layout, storage tokens, RoPE)",
        convert="Request access on the facebookresearch/dinov3 page and use the downloaded .pth as is.",
    )


def _clip(name: str, arch: str, width: int, proj: int, release: str, hub: str) -> ViTTeacherSpec:
    return ViTTeacherSpec(
        name=name, arch=arch, family="clip", width=width, pool_dim=proj, embedding="pool",
        embeddings=("pool", "cls", "mean", "cls+mean"), layouts=("openai_clip", "timm"),
        create=(("num_classes", proj), ("global_pool", "token")) + _SKIP_INIT, resize_size=224, crop_pct=1.0,
        mean=CLIP_MEAN, std=CLIP_STD,
        source=f"openai/CLIP {release} image tower (OpenAI or open_clip 'openai' weights; {hub} on the HF hub)",
        convert=f"OpenAI's {release} is a TorchScript archive: save its state dict once with torch.save("
                f"torch.jit.load('{release}', map_location='cpu').state_dict(), 'clip.pth'); open_clip's "
                "open_clip_pytorch_model.bin and the HF-hub directory load as they are.",
    )


# (parameters, GFLOPs at 224 px) of each entry's default embedding network, counted on the meta
# device (tests/cache_builder/test_vit_build.py checks them); SigLIP's attention-pool head defeats
# torch's FLOP counter, so its GFLOPs are not recorded
_COST: dict[str, tuple[int, float | None]] = {
    "dino_vits16": (21_665_664, 9.2), "dino_vits8": (21_670_272, 44.81), "dino_vitb16": (85_798_656, 35.13),
    "dino_vitb8": (85_807_872, 156.3), "dinov2_vits14": (21_628_800, 12.25), "dinov2_vitb14": (85_724_928, 46.32),
    "dinov2_vitl14": (303_227_904, 162.02), "dinov2_vitg14": (1_134_769_664, 598.78),
    "dinov2_vits14_reg": (21_629_952, 12.46), "dinov2_vitb14_reg": (85_727_232, 47.08),
    "dinov2_vitl14_reg": (303_230_976, 164.64), "dinov2_vitg14_reg": (1_134_774_272, 608.35),
    "dinov3_vits16": (21_596_160, 9.4), "dinov3_vitb16": (85_659_648, 35.86), "dinov3_vitl16": (303_128_576, 125.68),
    "clip_vitb16": (86_193_152, 35.13), "clip_vitl14": (303_966_976, 162.03), "siglip_vitb16": (92_884_224, None),
}


VIT_TEACHERS: dict[str, ViTTeacherSpec] = {
    spec.name: dataclasses.replace(spec, params=_COST[spec.name][0], gflops=_COST[spec.name][1])
    for spec in (
        _dino("dino_vits16", "vit_small_patch16_224", 384, "dino_deitsmall16"),
        _dino("dino_vits8", "vit_small_patch8_224", 384, "dino_deitsmall8"),
        _dino("dino_vitb16", "vit_base_patch16_224", 768, "dino_vitbase16"),
        _dino("dino_vitb8", "vit_base_patch8_224", 768, "dino_vitbase8"),
        *(_dinov2(s, a, w, reg) for reg in (False, True)
          for s, a, w in (("s", "small", 384), ("b", "base", 768), ("l", "large", 1024), ("g", "giant", 1536))),
        _dinov3("s", "small", 384), _dinov3("b", "base", 768), _dinov3("l", "large", 1024),
        _clip("clip_vitb16", "vit_base_patch16_clip_quickgelu_224", 768, 512, "ViT-B-16.pt", "timm/vit_base_patch16_clip_224.openai"),
        _clip("clip_vitl14", "vit_large_patch14_clip_quickgelu_224", 1024, 768, "ViT-L-14.pt", "timm/vit_large_patch14_clip_224.openai"),
        ViTTeacherSpec(
            name="siglip_vitb16", arch="vit_base_patch16_siglip_224", family="siglip", width=768, pool_dim=768,
            embedding="pool", embeddings=("pool", "mean"), layouts=("open_clip_timm", "timm"),
            create=(("num_classes", 0), ("global_pool", "map")) + _SKIP_INIT, resize_size=224, crop_pct=1.0, resize_mode="squash",
            interpolation="bilinear", mean=SIGLIP_MEAN, std=SIGLIP_STD,
            source="google-research/big_vision SigLIP B/16 224 (WebLI), as converted on the HF hub: "
                   "timm/vit_base_patch16_siglip_224.webli (timm names) or timm/ViT-B-16-SigLIP (open_clip, visual.trunk.*)",
            convert="Download the HF-hub directory (config.json + model.safetensors) on a machine with internet and copy it.",
        ),
    )
}


def vit_teacher_names() -> list[str]:
    return list(VIT_TEACHERS)


def is_vit_teacher(name: str) -> bool:
    """Whether ``name`` is served by this module (a registry entry or ``timm:<model_name>``)."""
    return name in VIT_TEACHERS or name.startswith(TIMM_PREFIX)


def timm_teacher_spec(name: str, weights: str | None = None) -> ViTTeacherSpec:
    """The spec of ``timm:<model_name>``: preprocessing from the hub directory's ``config.json``
    ``pretrained_cfg`` when ``weights`` is one, else from timm's own ``pretrained_cfg`` of the name."""
    import timm

    model_name = name.removeprefix(TIMM_PREFIX)
    arch = model_name.split(".", 1)[0]
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(TIMM_PREFIX + c) for c in close)}?)" if close else ""
        raise UsageError(f"unknown timm model {arch!r} in --teacher {name!r}{hint}; see timm.list_models()")
    config = hub_config(weights) if weights and os.path.isdir(weights) else {}
    declared = str(config.get("architecture", arch)).split(".", 1)[0]
    if declared != arch:
        raise UsageError(f"--teacher {name!r} does not match {os.path.join(str(weights), 'config.json')}: "
                         f"its architecture is {declared!r}")
    found = timm.models.get_pretrained_cfg(model_name)
    cfg: dict[str, Any] = (found.to_dict() if found is not None else {}) | dict(config.get("pretrained_cfg") or {})
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    squash = cfg.get("crop_mode") == "squash"
    create = tuple(sorted(dict(config.get("model_args") or {}, num_classes=0).items()))
    return ViTTeacherSpec(
        name=f"{TIMM_PREFIX}{model_name}", arch=arch, family="timm", width=0, pool_dim=0, embedding="pool",
        embeddings=EMBEDDINGS, layouts=("dinov3", "dinov2", "openai_clip", "open_clip_timm", "timm_any"), create=create,
        drop=(str(cfg.get("classifier") or "head") + ".",), input_size=size,
        resize_size=size if squash else math.floor(size / crop_pct), interpolation=str(cfg.get("interpolation") or "bicubic"),
        resize_mode="squash" if squash else "shorter", mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(cfg.get("std") or IMAGENET_STD), crop_pct=1.0 if squash else crop_pct,
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
        source=f"your own file or a timm / HF-hub directory for {model_name} (config.json + model.safetensors)",
    )


def get_vit_teacher_spec(name: str, weights: str | None = None) -> ViTTeacherSpec:
    """A registry entry, or the spec of ``timm:<model_name>`` (raises ``UsageError`` for unknown names)."""
    if name.startswith(TIMM_PREFIX):
        return timm_teacher_spec(name, weights)
    if name not in VIT_TEACHERS:
        raise UsageError(unknown_name("teacher", name, vit_teacher_names() + [TIMM_PREFIX + "<model_name>"]))
    return VIT_TEACHERS[name]


# ---------------------------------------------------------------------------------------------
# the network


class ViTEmbedding(nn.Module):
    """A frozen timm model as a teacher: normalised float ``(B, 3, S, S)`` -> ``(B, D)`` embedding
    (``embedding`` of the module docstring; not L2-normalised)."""

    model: Any  # a timm model (forward_features / forward_head)

    def __init__(self, model: nn.Module, embedding: str) -> None:
        super().__init__()
        self.model = model
        self.embedding = embedding
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding == "pool":
            return self.model(x)
        tokens = self.model.forward_features(x)  # (B, N, D) after the final norm
        cls = tokens[:, 0]
        mean = tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[self.embedding]


def _pool_dim(model: Any) -> int:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.out_features
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def create_vit_model(spec: ViTTeacherSpec, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``timm.create_model(spec.arch, pretrained=False, ...)`` at the spec's input size (random weights)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    kwargs: dict[str, Any] = dict(spec.create)
    if spec.fixed_input_size:
        kwargs["img_size"] = spec.input_size  # position embeddings resampled to this grid at load
    kwargs.update(model_kwargs or {})
    return timm.create_model(spec.arch, pretrained=False, **kwargs)


def load_vit_teacher(
    spec: ViTTeacherSpec,
    weights: str,
    embedding: str | None = None,
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[ViTEmbedding, ViTTeacherSpec, LoadReport]:
    """Build ``spec``'s timm model on the CPU and load ``weights`` into it strictly.

    Args:
        spec: from ``get_vit_teacher_spec`` (at its input size: ``with_sizes``).
        weights: a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file or a hub-style directory.
        embedding: ``cls | mean | cls+mean | pool``; ``None`` = the spec's (the release's default).
        dtype: cast the loaded weights (``torch.bfloat16`` keeps a ViT-g at 2 bytes a parameter).
        model_kwargs: extra ``timm.create_model`` arguments (``depth`` for reduced test models).

    Returns:
        ``(teacher, spec, report)``: the teacher on the CPU in eval mode without gradients, mapping
        ``(B, 3, S, S)`` to ``(B, spec.embed_dim)``; the spec with the chosen embedding (and, for
        ``timm:`` teachers, the widths read from the built model).
    """
    if not weights or not os.path.exists(weights):
        raise MissingWeightsError(spec.missing_weights_message(weights))
    model = create_vit_model(spec, model_kwargs)
    obj, file = read_weights(weights)
    unwrapped = unwrap(obj, file)
    layout = detect_layout(set(unwrapped.state_dict), spec.layouts, file)
    report = load_vit_strict(model, unwrapped, layout, file, drop=spec.drop)
    model.eval().requires_grad_(False)
    if dtype is not None:
        model.to(dtype)
    if spec.family == "timm":
        width = int(getattr(model, "num_features", 0) or getattr(model, "embed_dim", 0))
        has_cls = getattr(model, "cls_token", None) is not None
        tokens = (("cls", "mean", "cls+mean") if has_cls else ("mean",)) if hasattr(model, "num_prefix_tokens") else ()
        spec = dataclasses.replace(spec, width=width, pool_dim=_pool_dim(model), embeddings=("pool",) + tokens)
    spec = spec.with_embedding(embedding)
    return ViTEmbedding(model, spec.embedding).eval(), spec, report


def build_vit_teacher(
    name: str,
    weights: str,
    embedding: str | None = None,
    input_size: int | None = None,
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[ViTEmbedding, ViTTeacherSpec, LoadReport]:
    """``load_vit_teacher`` of the spec called ``name`` (a ``VIT_TEACHERS`` key or
    ``timm:<model_name>``) at ``input_size`` (``None`` = 224 / the timm default; position
    embeddings are resampled from the checkpoint's grid to ``S / patch``)."""
    spec = get_vit_teacher_spec(name, weights).with_sizes(input_size)
    return load_vit_teacher(spec, weights, embedding, dtype, model_kwargs)
