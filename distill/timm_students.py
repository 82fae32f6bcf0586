"""Students from timm: ``--student timm:<model_name>`` for any model ``timm.list_models()`` knows.

The backbone is ``timm.create_model(name, pretrained=False, num_classes=0)`` (headless: its
forward maps a normalised ``(B, 3, H, W)`` batch to pooled features ``(B, F)``; F is measured by
one forward on the meta device, e.g. 1024 for ``mobilenetv3_small_050`` whose head conv stays).
Models whose ``pretrained_cfg`` declares a fixed input size (ViT, DeiT, EVA, Swin) are created
with ``dynamic_img_size=True`` so that any ``--input-size`` works (position embeddings are
interpolated in the forward); the state dict is the same as without it, so an export loads
strictly into a plain ``timm.create_model(name, num_classes=0)``.

Preprocessing comes from the model's default ``pretrained_cfg``: ``mean``/``std``,
``interpolation`` and ``crop_pct`` (evaluation: ``Resize(floor(S / crop_pct))`` +
``CenterCrop(S)``), default input size its ``input_size``. Nothing is downloaded:
``pretrained=False`` always and ``HF_HUB_OFFLINE=1`` is set before timm is used. A name may
carry a pretrained tag (``resnet18.a1_in1k``): the tag only selects the ``pretrained_cfg``.

    spec = timm_student_spec("timm:mobilenetv3_small_050")
    backbone = spec.builder()                  # (B, 3, 32, 32) -> (B, 1024)
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from typing import Any

import torch
from torch import nn

from cache_builder.architectures import count_parameters, embedding_dim, gflops
from distill.students import StudentSpec
from storage.errors import UsageError

TIMM_PREFIX = "timm:"
# a few timm students worth trying (shown by ``compress-distill list-students``; all small)
EXAMPLES = ("timm:mobilenetv3_small_050", "timm:mobilenetv3_small_100", "timm:mobilenetv4_conv_small", "timm:efficientnet_b0",
            "timm:convnext_atto", "timm:fastvit_t8", "timm:resnet18", "timm:vit_tiny_patch16_224")


def is_timm_student(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def _timm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, whatever timm is asked
    import timm

    return timm


def create_kwargs(model_name: str) -> dict[str, Any]:
    """The extra ``timm.create_model`` arguments of a student: ``num_classes=0`` and, for models
    with a fixed input size, ``dynamic_img_size=True`` (neither changes the state dict's keys)."""
    cfg = _timm().models.get_pretrained_cfg(model_name)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if cfg is not None and cfg.fixed_input_size:
        kwargs["dynamic_img_size"] = True
    return kwargs


def create_backbone(model_name: str) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, **create_kwargs(model_name))``, headless.

    Raises:
        UsageError: the model does not accept ``dynamic_img_size`` although it has a fixed size.
    """
    kwargs = create_kwargs(model_name)
    try:
        return _timm().create_model(model_name, pretrained=False, **kwargs)
    except TypeError as e:
        if "dynamic_img_size" not in kwargs:
            raise
        raise UsageError(f"--student timm:{model_name}: this fixed-input-size timm model does not support "
                         f"dynamic_img_size ({e}); pick another model") from e


def _check_name(model_name: str) -> None:
    timm = _timm()
    if model_name and timm.is_model(model_name.split(".", 1)[0]):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(TIMM_PREFIX + c) for c in close)}?)" if close else ""
    raise UsageError(f"--student: unknown timm model {model_name!r}{hint}; "
                     "see compress-distill list-students --timm PATTERN (or timm.list_models())")


@functools.lru_cache(maxsize=64)
def timm_student_spec(name: str) -> StudentSpec:
    """The ``StudentSpec`` of ``timm:<model_name>`` (built once on the meta device to measure F).

    Raises:
        UsageError: an unknown timm model, with "did you mean" suggestions.
    """
    model_name = name.removeprefix(TIMM_PREFIX)
    _check_name(model_name)
    cfg = _timm().models.get_pretrained_cfg(model_name)
    found: dict[str, Any] = cfg.to_dict() if cfg is not None else {}
    size = int(found.get("input_size", (3, 224, 224))[-1])
    with torch.device("meta"):
        feature_dim = embedding_dim(create_backbone(model_name), size)
    return StudentSpec(
        name=TIMM_PREFIX + model_name, architecture=TIMM_PREFIX + model_name, feature_dim=feature_dim, input_size=size,
        builder=functools.partial(create_backbone, model_name),
        mean=tuple(found.get("mean") or (0.485, 0.456, 0.406)),
        std=tuple(found.get("std") or (0.229, 0.224, 0.225)),
        interpolation=str(found.get("interpolation") or "bicubic"), crop_pct=float(found.get("crop_pct") or 0.875),
    )


def timm_sidecar(spec: StudentSpec) -> dict[str, Any]:
    """What an export's sidecar records to rebuild a timm student without this project:
    ``{"model": name, "create_kwargs": {...}}`` for ``timm.create_model(model, **create_kwargs)``."""
    model_name = spec.name.removeprefix(TIMM_PREFIX)
    return {"model": model_name, "create_kwargs": create_kwargs(model_name), "version": _timm().__version__}


def describe(name: str, input_size: int | None = None) -> dict[str, Any]:
    """A ``list-students`` row for ``timm:<model_name>``: parameters and GFLOPs of the backbone at
    ``input_size`` (default: its own), counted on the meta device (nothing is allocated)."""
    spec = timm_student_spec(name)
    size = int(input_size or spec.input_size)
    with torch.device("meta"):
        backbone = spec.builder().eval()  # eval: BatchNorm on a (1, C, 1, 1) batch refuses train mode
    return {"name": spec.name, "architecture": spec.architecture, "feature_dim": spec.feature_dim, "input_size": size,
            "parameters": count_parameters(backbone), "gflops": gflops(backbone, size)}


def matching_models(pattern: str, limit: int = 50) -> list[str]:
    """``timm:<name>`` for the timm models matching a shell ``pattern`` (``*mobilenetv3*``); a
    pattern without wildcards matches as a substring. At most ``limit`` names, sorted."""
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = [n for n in _timm().list_models() if fnmatch.fnmatchcase(n, glob)]
    return [TIMM_PREFIX + n for n in sorted(names)[:limit]]
