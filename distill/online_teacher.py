"""The online teacher: ``compress-distill run --teacher NAME --weights W`` (no cache).

The frozen teacher (``cache_builder.teachers``: any registry teacher, or ``custom``) runs every
step on the student's own augmented view; everything else (loss, banks, schedule, checkpoints,
exact resume) is the cached path's. ``OnlineTeacher`` offers the same interface to the trainer
as ``distill.targets.TeacherTargets`` (``images``, ``views``, ``crops``, ``dim``,
``fingerprint``, ``teacher_name``, ``for_batch``, ``reference``):

* ``for_batch(images)``: the student's uint8 crops ``(B, 3, S, S)`` on the device -> float in
  [0, 1] -> resized (bilinear, antialiased) to the teacher's input size T (skipped when S == T)
  -> the teacher's mean/std -> the teacher (eval mode, frozen, ``torch.inference_mode``, bf16
  autocast on GPUs) -> float32 L2-normalised ``(B, D)``.
* ``reference(rows)``: the teacher's embeddings of the fixed reference view of each row, the
  teacher's own eval preprocessing (``Resize(resize) + CenterCrop(input)`` of its spec, at
  ``--teacher-input-size`` / ``--teacher-resize-size``): exactly the rows a 1-view cache of the
  same teacher holds. The banks are filled from ``bank_size`` of them at the start (one teacher
  pass over those images, as the cached path takes cached rows) and the neighbour-agreement
  probe uses them (computed once: the probe rows are fixed).
* ``fingerprint``: teacher name and options, weights sha256 and preprocessing; it takes the
  place of the store's content fingerprint in the run identity (``distill.run_identity``), next
  to the data listing's fingerprint. The weights path itself may change between resumes.

Random numbers: the teacher draws none (eval mode), so the student's data order and views, and
hence exact resume, are those of the cached path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cache_builder.dataset import ImageDataset
from cache_builder.image_list import ImageList, discover_splits
from cache_builder.teachers import AnySpec, TeacherSpec, load_teacher_spec, resolve_spec
from cache_builder.transforms import channel_constants
from distill.config import DistillConfig
from distill.precision import autocast
from storage.hashing import file_sha256

log = logging.getLogger(__name__)


@dataclass
class OnlineTeacher:
    """A frozen teacher run on the training device, in place of a cache.

    Attributes:
        model: the headless teacher (eval, frozen): preprocessed ``(B, 3, T, T)`` -> ``(B, D)``.
        spec: its spec at the input/resize sizes of this run.
        images: the training listing (row i = image i).
        device: the training device.
        weights_sha256: ``sha256:<hex>`` of the weights file.
        dim: the embedding dimension D (probed with one forward).
        batch_size / workers: for the reference-view passes.
    """

    model: nn.Module
    spec: AnySpec
    images: ImageList
    device: torch.device
    weights_sha256: str
    dim: int
    batch_size: int = 256
    workers: int = 0
    crops: None = None  # the student draws its own crops (no cached views)
    views: None = None
    _memo: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def teacher_name(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        """``online:sha256:<hex>`` of the teacher's identity (name, arch, options, weights, preprocessing)."""
        options = self.spec.options if isinstance(self.spec, TeacherSpec) else self.spec.create  # ViT: timm.create_model kwargs
        identity = {"teacher": self.spec.name, "arch": self.spec.arch, "options": [list(o) for o in options],
                    "weights_sha256": self.weights_sha256, "preprocessing": self.spec.preprocessing(), "dim": self.dim}
        return "online:sha256:" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` (any device) -> float32 L2-normalised ``(B, D)`` on the device."""
        x = images.to(self.device, non_blocking=True)
        with torch.inference_mode():
            x = x.float().div_(255.0)
            size = self.spec.input_size
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
            if self.spec.mean is not None and self.spec.std is not None:
                m, s = channel_constants(tuple(self.spec.mean), tuple(self.spec.std), x.device)
                x = (x - m) / s
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device):
                out = self.model(x)
            out = F.normalize(out.float(), dim=1)
        return out.clone()  # a normal tensor (not an inference tensor): it enters the loss and the banks

    def for_batch(self, images: torch.Tensor, rows: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher targets of one training batch: ``embed`` of the student's crops ``images``
        (``rows``/``views`` are the cached path's arguments, unused here)."""
        return self.embed(images)

    def reference(self, rows: torch.Tensor) -> torch.Tensor:
        """``(R, D)`` float32 teacher embeddings of the reference views of ``rows`` (the teacher's
        own centre crop), on the device; the last result is kept (the probe rows are fixed)."""
        key = tuple(int(r) for r in rows.tolist())
        if key not in self._memo:
            self._memo.clear()
            self._memo[key] = self._embed_rows(list(key))
        return self._memo[key]

    def _embed_rows(self, rows: list[int]) -> torch.Tensor:
        dataset = ImageDataset(self.images, rows, self.spec.uint8_transform())
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers, shuffle=False,
                            pin_memory=self.device.type == "cuda")
        out = [self.embed(images) for _, images, _ in loader]
        return torch.cat(out) if out else torch.empty(0, self.dim, device=self.device)


def teacher_spec(cfg: DistillConfig) -> AnySpec:
    """The spec of ``cfg.teacher`` at ``--teacher-input-size`` / ``--teacher-resize-size`` (raises
    ``UsageError`` / ``UnknownTeacherError`` for a bad name or options)."""
    assert cfg.teacher is not None
    spec = resolve_spec(cfg.teacher, arch=cfg.teacher_arch, prefix=cfg.teacher_prefix, embed_layer=cfg.teacher_embed_layer,
                        weights=cfg.weights)
    return spec.with_sizes(cfg.teacher_input_size, cfg.teacher_resize_size)


def load_online_teacher(cfg: DistillConfig, device: torch.device) -> OnlineTeacher:
    """The frozen teacher of resolved ``cfg`` (``cfg.teacher``, ``cfg.weights``) on ``device``,
    over the training listing of ``cfg.data``; weights loaded strictly (``load_teacher_spec``)."""
    assert cfg.weights is not None and cfg.data is not None
    model, spec, _ = load_teacher_spec(teacher_spec(cfg), cfg.weights, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = discover_splits(cfg.data)["train"]
    teacher = OnlineTeacher(model, spec, images, device, file_sha256(cfg.weights), dim=0, batch_size=cfg.batch_size,
                            workers=cfg.workers)
    probe = torch.zeros(2, 3, spec.input_size, spec.input_size, dtype=torch.uint8)
    teacher.dim = int(teacher.embed(probe).shape[1])
    log.info("online teacher %s (%s, %d-d) at %d px: it runs every step on the student's crops (no cache)",
             spec.name, spec.arch, teacher.dim, spec.input_size)
    return teacher


__all__ = ["OnlineTeacher", "load_online_teacher", "teacher_spec"]
