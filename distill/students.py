"""Student architectures: one registry of frozen specs (like timm's ``default_cfgs``).

A student is ``backbone -> linear head to dim``; the backbone maps a normalised image batch
``(B, 3, H, W)`` to features ``(B, F)``; only the backbone is exported. Any torchvision
classification model name not in the registry works too (its classifier becomes the head), and
so does any timm model as ``timm:<model_name>`` (``distill.timm_students``). ``list_students``
describes the registry (parameters and GFLOPs counted on the meta device).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cache_builder.architectures import count_parameters, gflops, torchvision_headless
from cache_builder.transforms import IMAGENET_MEAN, IMAGENET_STD
from storage.errors import UsageError, unknown_name


@dataclass(frozen=True)
class StudentSpec:
    """How to build one student and feed it.

    Attributes:
        name: registry name.
        architecture: torchvision function name (or ``tiny_cnn``).
        feature_dim: F, the backbone's output dimension.
        input_size: default training/eval crop size.
        builder: returns the backbone ``nn.Module`` (already headless).
        mean, std: input normalisation.
        parameters, gflops: the backbone's parameter count and forward GFLOPs at ``input_size``
            (cached for ``list-students``; a test recounts them on the meta device); None when unknown.
        interpolation: resize interpolation of the evaluation transform (``bilinear``, ``bicubic``).
        crop_pct: None: evaluation resizes to ``S`` below 224 px and ``S * 256 / 224`` from
            224 px; a float (timm's ``pretrained_cfg``): ``floor(S / crop_pct)`` at every size.
    """

    name: str
    architecture: str
    feature_dim: int
    input_size: int
    builder: Callable[[], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    parameters: int | None = None
    gflops: float | None = None
    interpolation: str = "bilinear"
    crop_pct: float | None = None


class PooledConvNet(nn.Module):
    """``features`` (a conv stack) followed by global average pooling: ``(B, 3, H, W) -> (B, out_dim)``."""

    def __init__(self, layers: list[nn.Module], out_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class TinyCNN(PooledConvNet):
    """A small conv net for the offline demo: 4 conv-BN-ReLU stages (stride 2 from the second),
    each but the first followed by a depthwise-separable pair; ~0.2M parameters,
    (B, 3, 64, 64) -> (B, 256)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        layers: list[nn.Module] = []
        channels = 3
        for i, w in enumerate(widths):
            layers += _conv_bn_relu(channels, w, stride=1 if i == 0 else 2)
            if i > 0:
                layers += [nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), *_conv_bn_relu(w, w, kernel=1)]
            channels = w
        super().__init__(layers, channels)


class MicroMobileNet(PooledConvNet):
    """A depthwise-separable CNN for small images (the offline demo's student).

    A 3x3 stem (stride 1) followed by MobileNet-v1 blocks (3x3 depthwise + 1x1 pointwise, each
    with BN-ReLU) at the widths and strides of ``stages``, then global average pooling.
    With the defaults at 32 px: ``(B, 3, 32, 32) -> (B, 256)``, about 56k parameters and
    1.9 M multiply-adds per image, >10x fewer than MobileNetV2 at 64 px (2.2 M / 25 M).
    """

    def __init__(self, stem: int = 16, stages: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (64, 1), (128, 2), (256, 1))) -> None:
        layers = _conv_bn_relu(3, stem)
        channels = stem
        for width, stride in stages:
            layers += _conv_bn_relu(channels, channels, stride=stride, groups=channels) + _conv_bn_relu(channels, width, kernel=1)
            channels = width
        super().__init__(layers, channels)


def _torchvision_backbone(arch: str) -> nn.Module:
    """A headless torchvision model (``cache_builder.architectures.torchvision_headless``); AlexNet
    keeps its classifier up to fc7 + ReLU (the reference's AlexNet student features)."""
    if arch == "alexnet":
        import torchvision

        model = torchvision.models.get_model(arch, weights=None)
        model.classifier = nn.Sequential(*list(model.classifier.children())[:-1])
        return model
    return torchvision_headless(arch)[0]


def _feature_dim(arch: str) -> int:
    """F of a torchvision model: the input width of its classifier's first linear layer."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    for attr in ("fc", "head", "heads", "classifier"):
        head = getattr(model, attr, None)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if linears:
            return linears[0].in_features
    raise UsageError(f"--student {arch}: cannot find the feature dimension of this torchvision model (no linear classifier)")


def _tv(name: str, dim: int, parameters: int, gflops: float, size: int = 224) -> StudentSpec:
    return StudentSpec(name, name, dim, size, lambda: _torchvision_backbone(name), parameters=parameters, gflops=gflops)


STUDENTS: dict[str, StudentSpec] = {
    "resnet18": _tv("resnet18", 512, 11_176_512, 3.627),
    "resnet34": _tv("resnet34", 512, 21_284_672, 7.326),
    "resnet50": _tv("resnet50", 2048, 23_508_032, 8.174),
    "mobilenet_v2": _tv("mobilenet_v2", 1280, 2_223_872, 0.599),
    "alexnet": _tv("alexnet", 4096, 57_003_840, 1.420),
    "tiny_cnn": StudentSpec("tiny_cnn", "tiny_cnn", 256, 64, TinyCNN, parameters=479_840, gflops=0.1476),
    "micro_mobilenet": StudentSpec("micro_mobilenet", "micro_mobilenet", 256, 32, MicroMobileNet, parameters=52_512, gflops=0.003484),
}


def get_student_spec(name: str) -> StudentSpec:
    """The registry spec, or one made on the fly for any torchvision classification model or
    ``timm:<model_name>`` (``distill.timm_students.timm_student_spec``).

    Raises ``UsageError`` (with "did you mean" suggestions) for an unknown name.
    """
    if name in STUDENTS:
        return STUDENTS[name]
    from distill.timm_students import is_timm_student, timm_student_spec

    if is_timm_student(name):
        return timm_student_spec(name)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name in known:
        return StudentSpec(name, name, _feature_dim(name), 224, lambda: _torchvision_backbone(name))
    raise UsageError("--student: " + unknown_name("student", name, list(STUDENTS))
                     + " (or any torchvision classification model name, or timm:<model_name>; see compress-distill list-students)")


def count_backbone(spec: StudentSpec) -> tuple[int, float]:
    """``(parameters, GFLOPs at spec.input_size)`` of the backbone, built on the meta device."""
    with torch.device("meta"):
        backbone = spec.builder()
    return count_parameters(backbone), gflops(backbone, spec.input_size)


def list_students(timm_names: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
    """The registry: ``{"name", "architecture", "feature_dim", "input_size", "parameters",
    "gflops"}`` per student (backbone at its default input size; the cached counts), followed by
    the rows of the ``timm:<model_name>`` students in ``timm_names`` (counted on the meta device)."""
    from distill.timm_students import describe

    rows = [{"name": s.name, "architecture": s.architecture, "feature_dim": s.feature_dim, "input_size": s.input_size,
             "parameters": s.parameters, "gflops": s.gflops} for s in STUDENTS.values()]
    return rows + [describe(n) for n in timm_names]


class Student(nn.Module):
    """``backbone`` (B,3,H,W)->(B,F) followed by ``head`` (B,F)->(B,dim)."""

    def __init__(self, spec: StudentSpec, dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise UsageError(f"--dim must be positive, got {dim}")
        self.spec = spec
        self.backbone = spec.builder()
        self.head = nn.Linear(spec.feature_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_student(name: str, dim: int = 128) -> Student:
    return Student(get_student_spec(name), dim)


def eval_transform_recipe(spec: StudentSpec, input_size: int | None = None) -> dict[str, Any]:
    """JSON-able description of the eval preprocessing (stored in exports)."""
    size = input_size or spec.input_size
    if spec.crop_pct is not None:  # timm's recipe: Resize(floor(S / crop_pct), interpolation) + CenterCrop(S)
        return {"resize": int(math.floor(size / spec.crop_pct)), "crop": size, "mean": list(spec.mean), "std": list(spec.std),
                "interpolation": spec.interpolation, "crop_pct": spec.crop_pct}
    return {"resize": size if size < 224 else int(round(size * 256 / 224)), "crop": size, "mean": list(spec.mean), "std": list(spec.std)}


def build_eval_transform(recipe: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """Callable: PIL image -> float tensor ``(3, crop, crop)`` (RGB, resized with the recipe's
    ``interpolation`` -- bilinear when absent --, center-cropped, normalised)."""
    from torchvision import transforms as T

    from cache_builder.image_decode import rgb_image

    return T.Compose([
        T.Lambda(rgb_image),
        T.Resize(recipe["resize"], interpolation=T.InterpolationMode(recipe.get("interpolation", "bilinear")), antialias=True),
        T.CenterCrop(recipe["crop"]),
        T.ToTensor(),
        T.Normalize(recipe["mean"], recipe["std"]),
    ])
