"""Resolving a model argument to a frozen backbone, its preprocessing and its identity.

Accepted forms:

* ``teacher:NAME:WEIGHTS`` — a registry teacher, ViT teachers and ``teacher:timm:<model_name>:WEIGHTS`` included
  (WEIGHTS a file, or for ViT / timm teachers a hub directory; ``cache_builder.teachers.load_teacher``);
* ``torchvision:ARCH[:WEIGHTS]`` — any torchvision classification model, classifier replaced
  by ``Identity``; WEIGHTS is a state-dict file (strict loading), random weights (seed 0)
  without it. Preprocessing: ImageNet mean/std, Resize(size * 256/224) + CenterCrop(size);
* a student run directory or an exported ``.pth`` (``distill.export.load_student``), any
  student architecture including ``timm:<model_name>`` (its preprocessing -- mean/std,
  interpolation, crop_pct -- is the ``eval_transform`` recipe the run or sidecar records).
* a deployed export: ``FILE.onnx`` (onnxruntime), ``FILE.pt`` (TorchScript) or
  ``DIR-or-FILE.safetensors`` (``evaluate.deployed``; the identity records the runtime and file).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cache_builder.transforms import IMAGENET_MEAN, IMAGENET_STD
from storage.errors import UsageError, unknown_name
from storage.hashing import file_sha256


@dataclass(frozen=True)
class ResolvedModel:
    """A backbone ready for feature extraction.

    Attributes:
        module: maps ``(B, 3, H, W)`` float images to ``(B, D)`` features (eval mode).
        transform: PIL image -> ``(3, H, W)`` tensor.
        identity: JSON-ready description (kind, name, weights checksum, preprocessing).
        run_dir: the student run directory, when the model is one.
    """

    module: Any
    transform: Callable
    identity: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None


def center_crop_transform(image_size: int = 224) -> Callable:
    """Resize(image_size * 256 / 224) + CenterCrop(image_size) + ImageNet mean/std."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(round(image_size * 256 / 224)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_torchvision(arch: str, weights: str | None = None, image_size: int | None = None) -> ResolvedModel:
    """A torchvision classification model without its head
    (``cache_builder.architectures.torchvision_headless``); a weights file must hold every key
    of the full model (strict loading, the head's keys dropped).

    Raises:
        UsageError: an unknown architecture (``--model torchvision:ARCH``).
    """
    import torch
    import torchvision

    from cache_builder.architectures import torchvision_headless

    known = sorted(torchvision.models.list_models(module=torchvision.models))
    if arch not in known:
        raise UsageError(f"--model torchvision:{arch}: " + unknown_name("architecture", arch, known))
    torch.manual_seed(0)
    model, dropped = torchvision_headless(arch)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        head = {k for k in state if k.startswith(tuple(dropped))}
        if not head and dropped:
            raise UsageError(f"--model torchvision:{arch}:{weights}: no classifier keys ({', '.join(dropped)}*) in the file; "
                             "expected the full torchvision state dict")
        model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=True)
    model = model.eval()
    size = image_size or 224
    identity = {
        "kind": "torchvision", "name": arch,
        "weights": os.path.abspath(weights) if weights else "random (seed 0)",
        "weights_sha256": file_sha256(weights) if weights else None,
        "preprocessing": f"Resize({round(size * 256 / 224)}) CenterCrop({size}) ImageNet mean/std",
    }
    return ResolvedModel(model, center_crop_transform(size), identity)


def load_registry_teacher(name: str, weights: str) -> ResolvedModel:
    """A teacher from ``cache_builder``'s registry with its checkpoint."""
    from cache_builder.teachers import load_teacher
    from cache_builder.vit_checkpoints import hub_weights_file

    module, spec = load_teacher(name, weights)
    weights_file = hub_weights_file(weights) if os.path.isdir(weights) else weights
    identity = {"kind": "teacher", "name": name, "weights": os.path.abspath(weights),
                "weights_sha256": file_sha256(weights_file), "preprocessing": repr(spec.eval_transform())}
    return ResolvedModel(module.eval(), spec.eval_transform(), identity)


def load_student_model(path: str) -> ResolvedModel:
    """A student run directory or exported ``.pth`` (``distill.export.load_student``)."""
    from distill.export import load_student
    from distill.students import build_eval_transform

    module, metadata = load_student(path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith((".pth", ".pt"))
    )
    h = hashlib.sha256()
    for f in files:
        h.update(file_sha256(f).encode())
    identity = {"kind": "student", "name": os.path.basename(os.path.normpath(path)), "path": os.path.abspath(path),
                "weights_sha256": "sha256:" + h.hexdigest(), "preprocessing": repr(metadata["eval_transform"]),
                "metadata": {k: v for k, v in metadata.items() if k != "eval_transform" and isinstance(v, (str, int, float, bool))}}
    transform = build_eval_transform(metadata["eval_transform"])
    return ResolvedModel(module.eval(), transform, identity, path if os.path.isdir(path) else None)


def resolve_model(spec: str, *, image_size: int | None = None) -> ResolvedModel:
    """Resolve a ``--model`` argument (see module docstring).

    Raises:
        UsageError: a malformed spec or a path that does not exist (naming ``--model``).
    """
    if spec.startswith("teacher:"):
        timm_name = spec.startswith("teacher:timm:")  # teacher:timm:<model_name>:WEIGHTS
        parts = spec.split(":", 3 if timm_name else 2)
        if timm_name and len(parts) == 4:
            parts = [parts[0], f"{parts[1]}:{parts[2]}", parts[3]]
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise UsageError(f"--model {spec!r}: expected teacher:NAME:WEIGHTS")
        if not os.path.exists(parts[2]):  # ViT / timm teachers also take a hub directory
            raise UsageError(f"--model {spec!r}: weights file {parts[2]} does not exist")
        return load_registry_teacher(parts[1], parts[2])
    if spec.startswith("torchvision:"):
        parts = spec.split(":", 2)
        if not parts[1]:
            raise UsageError(f"--model {spec!r}: expected torchvision:ARCH[:WEIGHTS]")
        weights = parts[2] if len(parts) == 3 and parts[2] else None
        if weights and not os.path.isfile(weights):
            raise UsageError(f"--model {spec!r}: weights file {weights} does not exist")
        return load_torchvision(parts[1], weights, image_size)
    if os.path.exists(spec):
        from evaluate.deployed import is_deployed, load_deployed

        if is_deployed(spec):
            module, transform, identity = load_deployed(spec)
            return ResolvedModel(module, transform, identity)
        return load_student_model(spec)
    raise UsageError(f"--model {spec!r}: not a student run dir, .pth, .onnx, .pt or .safetensors export, "
                     "nor teacher:NAME:WEIGHTS, nor torchvision:ARCH[:WEIGHTS]")
