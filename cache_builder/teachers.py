"""The teacher zoo: one registry of frozen specs, and ``load_teacher``, the one entry point.

``TEACHERS`` holds the ResNet / MobileNet teachers (torchvision networks); the ViT and
foundation-model teachers (DINO, DINOv2, DINOv3, CLIP, SigLIP, any ``timm:<model_name>``) are
``vit_teachers.VIT_TEACHERS``. ``get_teacher_spec`` / ``resolve_spec`` / ``load_teacher_spec`` /
``load_teacher`` serve both kinds: a ``TeacherSpec`` or a ``vit_teachers.ViTTeacherSpec``
(``AnySpec``), which share the preprocessing interface (``uint8_transform``, ``eval_transform``,
``preprocessing``, ``with_sizes``, ``with_embedding``, ``mean``/``std``, ``embed_dim``).

A ``TeacherSpec`` says how to build the network, its embedding dimension, its preprocessing,
which checkpoint layouts it accepts (``checkpoints.LAYOUTS``), which heads are dropped, and
where the public weights come from. Weights are always read from a local file.

    spec = get_teacher_spec("moco_v2_r50")
    model, spec = load_teacher("moco_v2_r50", "moco_v2_800ep_pretrain.pth.tar")
    x = torch.stack([spec.eval_transform()(pil_image)])       # (1, 3, 224, 224) float
    emb = model(x)                                            # (1, 2048), not normalised
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from cache_builder import architectures
from cache_builder.checkpoints import LAYOUTS, Layout, LoadReport, MissingWeightsError, custom_layout, load_strict, read_checkpoint
from cache_builder.home import compress_home
from cache_builder.transforms import IMAGENET_MEAN, IMAGENET_STD, SWAV_STD, EvalTransform, Uint8Transform
from cache_builder.vit_teachers import TIMM_PREFIX, VIT_TEACHERS, ViTTeacherSpec, get_vit_teacher_spec, is_vit_teacher, load_vit_teacher
from storage.errors import CompressError, UsageError, unknown_name

log = logging.getLogger(__name__)

RESNET_HEADS = ("fc.",)
PYTORCH_RELEASE = "The release is a PyTorch file: use it as is."


class UnknownTeacherError(CompressError, KeyError):
    """A teacher name that is not in the registry (the message suggests close names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class TeacherSpec:
    """A frozen description of one teacher.

    Attributes:
        name: registry key (``simclr_r50x4``).
        arch: architecture name (``resnet50x4``).
        builder: builds the headless network: ``(B, 3, H, W)`` -> ``(B, embed_dim)``.
        embed_dim: embedding dimension D.
        layouts: names of accepted checkpoint layouts, tried in order.
        drop: key prefixes (after remapping) of heads that are dropped.
        input_size / resize_size / interpolation: ``Resize(resize_size)`` + ``CenterCrop(input_size)``.
        mean / std: per-channel normalisation after scaling to [0, 1]; ``None`` = inputs in [0, 1].
        source: the public release the weights come from.
        convert: how to obtain a PyTorch file from that release.
        custom_layouts: extra layouts built at run time (``custom`` teachers).
        options: the ``custom`` teacher's options (part of the cache identity).
        params / gflops: parameter count and GFLOPs (2 x multiply-adds) at 224 px of the headless
            network, recorded so that ``list-teachers`` builds nothing (a test checks them
            against ``architectures.count_parameters`` / ``gflops`` on the meta device).
    """

    name: str
    arch: str
    builder: Callable[[], nn.Module] = field(compare=False, repr=False)
    embed_dim: int
    layouts: tuple[str, ...]
    drop: tuple[str, ...]
    source: str
    convert: str = PYTORCH_RELEASE
    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    custom_layouts: tuple[Layout, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    params: int | None = None
    gflops: float | None = None

    @property
    def embedding(self) -> str:
        """``pool``: the pooled input of the classifier (the one embedding of these teachers)."""
        return "pool"

    def with_embedding(self, embedding: str | None) -> TeacherSpec:
        """``--embedding`` does not apply to these teachers: ``None`` only (the pooled features)."""
        if embedding is None:
            return self
        raise UsageError(f"--embedding {embedding!r} does not apply to teacher {self.name!r} (its embedding is its "
                         "pooled features); --embedding is for the ViT / timm teachers (cls, mean, cls+mean, pool)")

    # ---- preprocessing -----------------------------------------------------------------
    def with_sizes(self, input_size: int | None = None, resize_size: int | None = None) -> TeacherSpec:
        """The same teacher at another input size; ``resize_size`` defaults to ``input_size * 256/224``."""
        if input_size is None and resize_size is None:
            return self
        size = int(input_size or self.input_size)
        resize = int(resize_size) if resize_size is not None else round(size * 256 / 224)
        if size <= 0 or resize < size:
            raise UsageError(f"{self.name}: need 0 < --input-size <= --resize-size, got {size} and {resize}")
        return dataclasses.replace(self, input_size=size, resize_size=resize)

    def uint8_transform(self) -> Uint8Transform:
        """PIL image or uint8 ``(C, H, W)`` -> uint8 ``(3, S, S)`` (the CPU half of preprocessing)."""
        return Uint8Transform(self.input_size, self.resize_size, self.interpolation)

    def eval_transform(self) -> EvalTransform:
        """PIL image (any mode; grey/RGBA become RGB) or uint8 tensor ``(C, H, W)`` -> float32
        ``(3, input_size, input_size)``: resize, center crop, scale to [0, 1], mean/std if any."""
        return EvalTransform(self.uint8_transform(), self.mean, self.std)

    def preprocessing(self) -> dict[str, Any]:
        """The recipe as plain data (recorded in manifests)."""
        return {
            "resize": self.resize_size, "crop": self.input_size, "interpolation": self.interpolation,
            "input_range": "[0, 1]", "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }

    # ---- checkpoints -------------------------------------------------------------------
    def accepted_layouts(self) -> list[Layout]:
        return [LAYOUTS[n] for n in self.layouts] + list(self.custom_layouts)

    def expected_layout(self) -> str:
        return " | ".join(lay.name for lay in self.accepted_layouts())

    def missing_weights_message(self, path: str) -> str:
        layouts = "\n".join(f"    - {lay.name}: {lay.description}" for lay in self.accepted_layouts())
        return (
            f"weights for teacher {self.name!r} not found at {path}\n"
            f"  Put the file there (or pass --weights PATH; default directory: $COMPRESS_HOME/weights, "
            f"now {default_weights_dir()}).\n"
            f"  Public release: {self.source}\n"
            f"  Expected: a torch.save'd dict of tensors ({self.arch}, {self.embed_dim}-d embedding; heads "
            f"{list(self.drop)} are dropped) in one of these layouts:\n{layouts}\n"
            f"  How to get it: {self.convert}"
        )


def _resnet(width: int) -> Callable[[], nn.Module]:
    return partial(architectures.resnet50_width, width)


# (parameters, GFLOPs at 224 px) of the headless width-w ResNet-50 and of MobileNetV2
_RESNET_COST = {1: (23_508_032, 8.17), 2: (93_907_072, 32.23), 4: (375_378_176, 127.96), 5: (586_450_240, 199.64)}
_MOBILENET_V2_COST = (2_223_872, 0.6)


_SIMCLR_CONVERT = (
    "SimCLR v1 is released for TensorFlow (gs://simclr-checkpoints/simclrv1/pretrain/ResNet50_{w}x). "
    "Convert it with tonylins/simclr-converter (`python convert.py ResNet50_{w}x/model.ckpt-225206 "
    "resnet50-{w}x.pth`, torchvision-style names); or use the converted x4 file of the CompRess release "
    "(UMBCvision/CompRess README, TF-style conv2d_N names). Both layouts are accepted."
)


def _simclr(width: int) -> TeacherSpec:
    return TeacherSpec(
        name=f"simclr_r50x{width}", arch=f"resnet50x{width}", builder=_resnet(width), embed_dim=2048 * width,
        layouts=("torchvision", "simclr_tf"), drop=RESNET_HEADS, mean=None, std=None,
        params=_RESNET_COST[width][0], gflops=_RESNET_COST[width][1],
        source=f"SimCLR v1 ResNet-50 ({width}x), google-research/simclr (TensorFlow checkpoints)",
        convert=_SIMCLR_CONVERT.format(w=width),
    )


def _swav(width: int) -> TeacherSpec:
    suffix = "" if width == 1 else f"w{width}"
    release = "swav_800ep_pretrain.pth.tar" if width == 1 else f"swav_RN50w{width}_400ep_pretrain.pth.tar"
    return TeacherSpec(
        name=f"swav_r50{suffix}", arch=f"resnet50{'' if width == 1 else f'w{width}'}", builder=_resnet(width),
        embed_dim=2048 * width, layouts=("module", "torchvision"), drop=("fc.", "projection_head.", "prototypes."),
        std=SWAV_STD, params=_RESNET_COST[width][0], gflops=_RESNET_COST[width][1],
        source=f"facebookresearch/swav model zoo: {release} (flat dict, module.* keys)",
    )


def _torchvision_r50(name: str, source: str, convert: str | None = None, interpolation: str = "bilinear") -> TeacherSpec:
    return TeacherSpec(
        name=name, arch="resnet50", builder=_resnet(1), embed_dim=2048,
        layouts=("torchvision", "module", "module_backbone", "backbone"), drop=RESNET_HEADS, source=source,
        interpolation=interpolation, params=_RESNET_COST[1][0], gflops=_RESNET_COST[1][1],
        convert=convert or PYTORCH_RELEASE,
    )


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        _simclr(1), _simclr(2), _simclr(4),
        TeacherSpec(
            name="moco_v1_r50", arch="resnet50", builder=_resnet(1), embed_dim=2048, layouts=("moco",),
            drop=RESNET_HEADS, params=_RESNET_COST[1][0], gflops=_RESNET_COST[1][1],
            source="facebookresearch/moco: moco_v1_200ep_pretrain.pth.tar ({'state_dict': module.encoder_q.*})",
        ),
        TeacherSpec(
            name="moco_v2_r50", arch="resnet50", builder=_resnet(1), embed_dim=2048, layouts=("moco",),
            drop=RESNET_HEADS, params=_RESNET_COST[1][0], gflops=_RESNET_COST[1][1],
            source="facebookresearch/moco: moco_v2_800ep_pretrain.pth.tar (or 200ep; {'state_dict': module.encoder_q.*})",
        ),
        _swav(1), _swav(2), _swav(4), _swav(5),
        _torchvision_r50("barlowtwins_r50", "facebookresearch/barlowtwins: resnet50.pth (flat torchvision keys, no fc)"),
        _torchvision_r50("dino_r50", "facebookresearch/dino: dino_resnet50_pretrain.pth (flat torchvision keys, no fc)",
                         interpolation="bicubic"),
        _torchvision_r50("vicreg_r50", "facebookresearch/vicreg: resnet50.pth (flat torchvision keys, no fc)"),
        _torchvision_r50(
            "byol_r50", "BYOL (deepmind/deepmind-research, JAX) converted by ajtejankar/byol-convert: pretrain_res50x1.pth.tar",
            convert="BYOL is released for JAX: convert it with ajtejankar/byol-convert (`python convert.py`), "
                    "which writes torchvision names with fc and without num_batches_tracked.",
        ),
        _torchvision_r50("supervised_r50", "torchvision ResNet50_Weights.IMAGENET1K_V1 (resnet50-0676ba61.pth)",
                         convert="Download the torchvision weights file on a machine with internet and copy it."),
        TeacherSpec(
            name="supervised_mobilenet_v2", arch="mobilenet_v2", builder=architectures.mobilenet_v2_headless,
            embed_dim=1280, layouts=("mobilenet_v2",), drop=("classifier.",),
            params=_MOBILENET_V2_COST[0], gflops=_MOBILENET_V2_COST[1],
            source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth)",
            convert="Download the torchvision weights file on a machine with internet and copy it.",
        ),
    )
}

CUSTOM = "custom"
AnySpec = TeacherSpec | ViTTeacherSpec


def teacher_names() -> list[str]:
    return [*TEACHERS, *VIT_TEACHERS, TIMM_PREFIX + "<model_name>", CUSTOM]


def get_teacher_spec(name: str, weights: str | None = None) -> AnySpec:
    """The registered spec called ``name`` (a ``TEACHERS`` or ``VIT_TEACHERS`` key, or
    ``timm:<model_name>``, whose preprocessing may come from the hub directory ``weights``);
    unknown names raise listing the known ones. ``custom`` needs an architecture: use ``custom_spec``."""
    if name == CUSTOM:
        raise UnknownTeacherError("teacher 'custom' has no fixed spec: build it with custom_spec(arch=...) (CLI: --arch)")
    if is_vit_teacher(name):
        return get_vit_teacher_spec(name, weights)
    if name not in TEACHERS:
        raise UnknownTeacherError(unknown_name("teacher", name, teacher_names()))
    return TEACHERS[name]


def custom_spec(arch: str, prefix: str = "", embed_layer: str | None = None,
                mean: tuple[float, float, float] | None = IMAGENET_MEAN,
                std: tuple[float, float, float] | None = IMAGENET_STD) -> TeacherSpec:
    """Spec of a ``custom`` teacher: any torchvision model ``arch``, keys under ``prefix``,
    embedding = the pooled input of the classifier, or the node ``embed_layer``."""
    with torch.device("meta"):  # validates arch/layer early without allocating weights
        meta_model, dropped = architectures.torchvision_headless(arch, embed_layer)
    dim = architectures.embedding_dim(meta_model)
    return TeacherSpec(
        name=CUSTOM, arch=arch, builder=lambda: architectures.torchvision_headless(arch, embed_layer)[0], embed_dim=dim,
        layouts=(), drop=dropped, source="user-provided", mean=mean, std=std,
        custom_layouts=(custom_layout(prefix),),
        options=(("arch", arch), ("prefix", prefix), ("embed_layer", embed_layer)),
    )


def resolve_spec(name: str, arch: str | None = None, prefix: str = "", embed_layer: str | None = None,
                 weights: str | None = None) -> AnySpec:
    """``get_teacher_spec`` or, for ``custom``, ``custom_spec`` (which requires ``arch``)."""
    if name == CUSTOM:
        if not arch:
            raise UsageError("teacher 'custom' needs --arch (a torchvision model name, e.g. resnet18)")
        return custom_spec(arch, prefix, embed_layer)
    if arch or prefix or embed_layer:
        raise UsageError(f"--arch/--prefix/--embed-layer apply to teacher 'custom' only, not {name!r}")
    return get_teacher_spec(name, weights)


def default_weights_dir() -> str:
    """``$COMPRESS_HOME/weights`` (``$COMPRESS_HOME`` defaults to ``~/.cache/compress``)."""
    return os.path.join(compress_home(), "weights")


def default_weights_path(name: str) -> str:
    """``$COMPRESS_HOME/weights/<name>.pth`` (``timm:<model>`` as ``timm_<model>.pth``)."""
    from cache_builder.home import file_name

    return os.path.join(default_weights_dir(), f"{file_name(name)}.pth")


def build_meta(spec: TeacherSpec) -> nn.Module:
    """The teacher's network on the meta device (no memory, no init): for shapes, counts, FLOPs."""
    with torch.device("meta"):
        return spec.builder().eval()


def load_teacher_spec(spec: AnySpec, weights_path: str, device: str | torch.device = "cpu", *,
                      embedding: str | None = None) -> tuple[nn.Module, AnySpec, LoadReport]:
    """Build ``spec``'s network and load ``weights_path`` strictly (``checkpoints.load_strict``,
    or ``vit_checkpoints.load_vit_strict`` for a ``ViTTeacherSpec``, whose ``weights_path`` may be
    a hub directory).

    Args:
        embedding: ``--embedding`` (ViT / timm teachers; ``None`` = the spec's default).
    Returns:
        ``(model, spec, report)``; ``model`` is in eval mode, frozen, on ``device``; ``spec`` has
        the chosen embedding.
    Raises:
        MissingWeightsError: the file does not exist (the message says where it comes from).
        checkpoints.CheckpointError: unreadable file or key mismatch (the first mismatching tensor named).
        UsageError: an ``embedding`` the teacher cannot give.
    """
    if isinstance(spec, ViTTeacherSpec):
        vit_model, vit_spec, report = load_vit_teacher(spec, weights_path, embedding)
        log.info("%s: %s", vit_spec.name, report.summary())
        return vit_model.to(device), vit_spec, report
    spec = spec.with_embedding(embedding)
    if not os.path.isfile(weights_path):
        raise MissingWeightsError(spec.missing_weights_message(weights_path))
    checkpoint = read_checkpoint(weights_path)
    model = build_meta(spec)
    report = load_strict(model, checkpoint, spec.accepted_layouts(), spec.drop, weights_path)
    model = model.to(device).eval().requires_grad_(False)
    log.info("%s: %s", spec.name, report.summary())
    return model, spec, report


def load_teacher(name: str, weights_path: str, device: str | torch.device = "cpu", *, embedding: str | None = None,
                 input_size: int | None = None, **custom_kwargs: Any) -> tuple[nn.Module, AnySpec]:
    """Frozen teacher ``name`` with weights from the local file (or, for ViT / timm teachers, hub
    directory) ``weights_path``.

    Args:
        embedding / input_size: as ``--embedding`` / ``--input-size`` of ``compress-cache build``.
        custom_kwargs: for ``name="custom"``: ``arch``, ``prefix``, ``embed_layer``.
    Returns:
        ``(model, spec)``: ``model`` is in eval mode and maps a preprocessed float batch
        ``(B, 3, H, W)`` (see ``spec.eval_transform()``) to ``(B, D)`` un-normalised embeddings.
    """
    spec = resolve_spec(name, weights=weights_path, **custom_kwargs).with_sizes(input_size)
    model, spec, report = load_teacher_spec(spec, weights_path, device, embedding=embedding)
    print(f"[compress-cache] {spec.name}: {report.summary()}")
    return model, spec
