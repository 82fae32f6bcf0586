"""Student architectures: one registry of frozen specs (like timm's ``default_cfgs``).

A student is ``backbone -> linear head to dim``; the backbone maps a normalised image batch
``(B, 3, H, W)`` to features ``(B, F)``; only the backbone is exported. Any torchvision
classification model name not in the registry works too (its classifier becomes the head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from cache_builder.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class StudentSpec:
    """How to build one student and feed it.

    Attributes:
        name: registry name.
        architecture: torchvision function name (or ``tiny_cnn``).
        feature_dim: F, the backbone's output dimension.
        input_size: default training/eval crop size.
        classifier_attr: attribute holding the classifier that becomes Identity.
        builder: returns the backbone ``nn.Module`` (already headless).
    """

    name: str
    architecture: str
    feature_dim: int
    input_size: int
    builder: Callable[[], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class TinyCNN(nn.Module):
    """A small conv net for the offline demo: 4 conv-BN-ReLU stages (stride 2 from the second),
    global average pooling; ~0.2M parameters, (B, 3, 64, 64) -> (B, 256)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(channels, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i > 0:
                layers += [nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            channels = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class MicroMobileNet(nn.Module):
    """A depthwise-separable CNN for small images (the offline demo's student).

    A 3x3 stem (stride 1) followed by MobileNet-v1 blocks (3x3 depthwise + 1x1 pointwise, each
    with BN-ReLU) at the widths and strides of ``stages``, then global average pooling.
    With the defaults at 32 px: ``(B, 3, 32, 32) -> (B, 256)``, about 56k parameters and
    1.9 M multiply-adds per image, >10x fewer than MobileNetV2 at 64 px (2.2 M / 25 M).
    """

    def __init__(self, stem: int = 16, stages: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (64, 1), (128, 2), (256, 1))) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        channels = stem
        for width, stride in stages:
            layers += [
                nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _torchvision_headless(arch: str) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    if arch == "alexnet":
        # the reference's fc7 form: keep classifier up to the second 4096-d layer + ReLU
        model.classifier = nn.Sequential(*list(model.classifier.children())[:-1])
        return model
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            setattr(model, attr, nn.Identity())
            return model
    raise ValueError(f"torchvision model {arch!r} has no fc/classifier/head attribute to replace")


def _feature_dim(arch: str) -> int:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = [m for m in (head.modules() if isinstance(head, nn.Module) else []) if isinstance(m, nn.Linear)]
        if linears:
            return linears[0].in_features
    raise ValueError(f"cannot find the feature dimension of torchvision model {arch!r}")


def _tv(name: str, dim: int, size: int = 224) -> StudentSpec:
    return StudentSpec(name, name, dim, size, lambda: _torchvision_headless(name))


STUDENTS: dict[str, StudentSpec] = {
    "resnet18": _tv("resnet18", 512),
    "resnet34": _tv("resnet34", 512),
    "resnet50": _tv("resnet50", 2048),
    "mobilenet_v2": _tv("mobilenet_v2", 1280),
    "alexnet": _tv("alexnet", 4096),
    "tiny_cnn": StudentSpec("tiny_cnn", "tiny_cnn", 256, 64, TinyCNN),
    "micro_mobilenet": StudentSpec("micro_mobilenet", "micro_mobilenet", 256, 32, MicroMobileNet),
}


def get_student_spec(name: str) -> StudentSpec:
    """The registry spec, or one made on the fly for any torchvision classification model."""
    if name in STUDENTS:
        return STUDENTS[name]
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return StudentSpec(name, name, _feature_dim(name), 224, lambda: _torchvision_headless(name))
    raise ValueError(f"unknown student {name!r}; registered: {', '.join(STUDENTS)} (or any torchvision classification model name)")


class Student(nn.Module):
    """``backbone`` (B,3,H,W)->(B,F) followed by ``head`` (B,F)->(B,dim)."""

    def __init__(self, spec: StudentSpec, dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"--dim must be positive, got {dim}")
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
    return {"resize": size if size < 224 else int(round(size * 256 / 224)), "crop": size, "mean": list(spec.mean), "std": list(spec.std)}


def build_eval_transform(recipe: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """Callable: PIL image -> float tensor ``(3, crop, crop)`` (RGB, resized, center-cropped, normalised)."""
    from torchvision import transforms as T

    from cache_builder.image_decode import rgb_image

    return T.Compose([
        T.Lambda(rgb_image),
        T.Resize(recipe["resize"], antialias=True),
        T.CenterCrop(recipe["crop"]),
        T.ToTensor(),
        T.Normalize(recipe["mean"], recipe["std"]),
    ])
