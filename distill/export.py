"""Handing over a plain backbone: ``export_student`` and ``load_student``.

An export is ``NAME.pth`` (a torchvision-compatible backbone state dict: no head, no 1q
projection, no ``module.`` prefixes) plus ``NAME.json`` (the sidecar). For torchvision
architectures it loads strictly into a fresh model whose classifier is replaced by
``nn.Identity()`` (``fc`` for ResNets, ``classifier`` for MobileNetV2; AlexNet keeps its
classifier up to fc7)::

    m = torchvision.models.resnet18(); m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load("r18.pth", weights_only=True), strict=True)

A timm student (``--student timm:<model_name>``) exports the headless timm model's own state
dict, which a plain timm loads strictly, without this project::

    m = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    m.load_state_dict(torch.load("student.pth", weights_only=True), strict=True)

(its sidecar's ``timm`` entry: ``{"model", "create_kwargs", "version"}``; ``create_kwargs`` adds
``dynamic_img_size=True`` for ViT-like models, which serves other input sizes but does not change
the keys).

Sidecar keys: ``architecture``, ``student``, ``feature_dim``, ``image_size``,
``eval_transform`` (recipe for ``distill.students.build_eval_transform``), ``teacher``,
``cache``, ``run_fingerprint``, ``finished``, ``epochs`` (epochs completed), ``epoch``,
``steps``, ``dim``, and ``timm`` for a timm student. ``export_student`` refuses a run that has not finished unless
``allow_unfinished`` (``--allow-unfinished``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from distill.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, load_weights, save_atomic
from distill.students import StudentSpec, build_student, eval_transform_recipe, get_student_spec
from storage.atomic import write_json_atomic
from storage.errors import CompressError


class UnfinishedRunError(CompressError):
    """Export of a run that has not trained all its epochs, without ``--allow-unfinished``."""


def _checkpoint_path(run_dir: str) -> str:
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise CheckpointError(f"{run_dir}: no {CHECKPOINT} (not a compress-distill run directory?)")
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
        "finished": bool(ckpt["finished"]),
        "epochs": int(ckpt["epoch"]),
        "epoch": int(ckpt["epoch"]),
        "steps": int(ckpt["global_step"]),
        "dim": int(config["dim"]),
    } | _timm_entry(spec)


def _timm_entry(spec: StudentSpec) -> dict[str, Any]:
    """``{"timm": timm_sidecar(spec)}`` for a timm student, else ``{}``."""
    from distill.timm_students import is_timm_student, timm_sidecar

    return {"timm": timm_sidecar(spec)} if is_timm_student(spec.name) else {}


def export_student(run_dir: str, out: str, allow_unfinished: bool = False) -> dict[str, Any]:
    """Write ``out`` (backbone state dict) and its ``.json`` sidecar; returns the sidecar.

    Raises:
        UnfinishedRunError: the run has not trained all its epochs and not ``allow_unfinished``.
    """
    ckpt = load_checkpoint(_checkpoint_path(run_dir))
    if not ckpt["finished"] and not allow_unfinished:
        total = json.loads(ckpt["config"])["epochs"]
        raise UnfinishedRunError(
            f"{run_dir}: the run is unfinished (epoch {ckpt['epoch']} of {total}, step {ckpt['global_step']}, "
            f"{ckpt['step_in_epoch']} steps into epoch {ckpt['epoch'] + 1}); rerun it to finish, or pass --allow-unfinished")
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
        "run_fingerprint": None, "finished": False, "epochs": 0, "epoch": 0, "steps": 0, "dim": int(dim), "seed": int(seed),
    } | _timm_entry(spec)
    if os.path.isfile(out) and os.path.isfile(sidecar_path(out)):
        with open(sidecar_path(out)) as f:
            if json.load(f) == meta:
                return meta
    torch.manual_seed(seed)  # as distill.trainer.Trainer does before building the student
    _write_export(build_student(student, dim).backbone.state_dict(), meta, out)
    return meta


def _write_export(state: dict[str, torch.Tensor], meta: dict[str, Any], out: str) -> None:
    """``out`` (backbone state dict, atomically) and its ``.json`` sidecar."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_atomic(state, out)
    write_json_atomic(sidecar_path(out), meta)


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
            raise CheckpointError(f"{path}: the export's sidecar {side} is missing (it says which architecture to build)")
        with open(side) as f:
            meta = json.load(f)
        backbone = get_student_spec(meta["student"]).builder()
        state = load_weights(path)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not fit {meta['student']}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return backbone.eval(), meta
