"""Handing over a plain backbone: ``export_student`` and ``load_student``.

An export is ``NAME.pth`` (a torchvision-compatible backbone state dict: no head, no 1q
projection, no ``module.`` prefixes) plus ``NAME.json`` (the sidecar). For torchvision
architectures it loads strictly into a fresh model whose classifier is replaced by
``nn.Identity()`` (``fc`` for ResNets, ``classifier`` for MobileNetV2; AlexNet keeps its
classifier up to fc7)::

    m = torchvision.models.resnet18(); m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("r18.pth", weights_only=True), strict=True)

Sidecar keys: ``architecture``, ``student``, ``feature_dim``, ``image_size``,
``eval_transform`` (recipe for ``distill.students.build_eval_transform``), ``teacher``,
``cache_fingerprint``, ``run_fingerprint``, ``epochs``, ``steps``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from distill.checkpoint import load_checkpoint, save_atomic
from distill.engine import CHECKPOINT
from distill.students import build_student, eval_transform_recipe, get_student_spec


def _checkpoint_path(run_dir: str) -> str:
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT} (not a compress-distill run directory?)")
    return path


def _metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(ckpt["config"])
    spec = get_student_spec(ckpt["student_name"])
    return {
        "architecture": spec.architecture,
        "student": spec.name,
        "feature_dim": spec.feature_dim,
        "image_size": int(ckpt["input_size"]),
        "eval_transform": eval_transform_recipe(spec, int(ckpt["input_size"])),
        "teacher": ckpt.get("teacher", "unknown"),
        "cache": config.get("cache"),
        "run_fingerprint": ckpt["fingerprint"],
        "epochs": int(ckpt["epoch"]),
        "steps": int(ckpt["global_step"]),
        "dim": int(config["dim"]),
    }


def export_student(run_dir: str, out: str) -> dict[str, Any]:
    """Write ``out`` (backbone state dict) and its ``.json`` sidecar; returns the sidecar."""
    ckpt = load_checkpoint(_checkpoint_path(run_dir))
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ckpt["student"].items() if k.startswith(prefix)}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    meta = _metadata(ckpt)
    _write_export(state, meta, out)
    return meta


def export_untrained(student: str, dim: int, input_size: int | None, out: str, seed: int = 0) -> dict[str, Any]:
    """Export the randomly initialised backbone a run with ``seed`` starts from (the
    "untrained student" baseline), in the same format as ``export_student``. An existing
    export of the same student, dim, size and seed is kept as it is."""
    spec = get_student_spec(student)
    size = int(input_size or spec.input_size)
    meta = {
        "architecture": spec.architecture, "student": spec.name, "feature_dim": spec.feature_dim, "image_size": size,
        "eval_transform": eval_transform_recipe(spec, size), "teacher": "none (untrained)", "cache": None,
        "run_fingerprint": None, "epochs": 0, "steps": 0, "dim": int(dim), "seed": int(seed),
    }
    if os.path.isfile(out) and os.path.isfile(sidecar_path(out)) and json.load(open(sidecar_path(out))) == meta:
        return meta
    torch.manual_seed(seed)  # as distill.engine.Trainer does before building the student
    _write_export(build_student(student, dim).backbone.state_dict(), meta, out)
    return meta


def _write_export(state: dict[str, torch.Tensor], meta: dict[str, Any], out: str) -> None:
    """``out`` (backbone state dict, atomically) and its ``.json`` sidecar."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_atomic(state, out)
    with open(sidecar_path(out) + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(sidecar_path(out) + ".tmp", sidecar_path(out))


def sidecar_path(weights: str) -> str:
    return os.path.splitext(weights)[0] + ".json"


def load_student(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """A backbone in eval mode, ``(B, 3, S, S)`` normalised images -> ``(B, feature_dim)``,
    and its metadata (see module docstring), from a run directory or an exported ``.pth``."""
    if os.path.isdir(path):
        ckpt = load_checkpoint(_checkpoint_path(path))
        meta = _metadata(ckpt)
        student = build_student(meta["student"], meta["dim"])
        student.load_state_dict(ckpt["student"], strict=True)
        backbone = student.backbone
    else:
        side = sidecar_path(path)
        if not os.path.isfile(side):
            raise FileNotFoundError(f"{path}: the export's sidecar {side} is missing (it says which architecture to build)")
        meta = json.load(open(side))
        backbone = get_student_spec(meta["student"]).builder()
        state = load_checkpoint(path)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit {meta['student']}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return backbone.eval(), meta
