"""The demo's settings: its own (data subset, teacher size) plus a nested distillation config.

``DemoConfig.distill`` is a ``distill`` ``DistillConfig``: the paper's recipe with the demo's
overrides (``DISTILL_OVERRIDES``: a micro student at 32 px, 1q with a 4k queue, 20 epochs of a
cosine schedule at lr 0.05, crops of scale 0.5-1); its ``device``, ``workers``, ``seed`` and
``progress`` serve every stage of the demo. Nothing here imports torch (``--help`` is instant);
the nested config is built on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage.config_options import setting
from storage.errors import UsageError

# where the demo's distillation differs from DistillConfig's defaults (the paper's recipe)
DISTILL_OVERRIDES: dict[str, Any] = {
    "student": "micro_mobilenet", "dim": 128, "variant": "1q", "bank": "queue", "bank_size": 4096,
    "neighbours": 512, "random_anchors": 2048, "t_teacher": 0.04, "t_student": 0.04, "epochs": 20, "batch_size": 128,
    "lr": 0.05, "schedule": "cosine", "input_size": 32, "crop_scale": (0.5, 1.0), "workers": 2, "log_every": 10,
    "ckpt_every": 200, "probe_size": 512,
}


def demo_distill_config(**changes: Any) -> Any:
    """``DistillConfig(**DISTILL_OVERRIDES, **changes)``: the demo's distillation recipe."""
    from distill.config import DistillConfig

    return DistillConfig(**{**DISTILL_OVERRIDES, **changes})


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (defaults: 10k/2k images, about three to five minutes on a 2-core CPU).

    ``distill``: the nested ``DistillConfig`` (its ``cache``, ``data`` and ``out`` are set by
    ``run_demo``; ``student``, ``input_size`` and ``dim`` are the student the demo distils).
    """

    out: str = setting("runs/demo", "Output directory (rerunning reuses and resumes what is there).")
    train_per_class: int = setting(1000, "Balanced subset: train images per class (10 classes).")
    val_per_class: int = setting(200, "Balanced subset: val images per class.")
    full: bool = setting(False, "Use every image available (60k/10k with the full Fashion-MNIST installed; meant for a GPU).",
                         flag="--full/--subset")
    teacher_size: int = setting(64, "Teacher input size (28 px images are upsampled).")
    weights: str | None = setting(None, "MobileNetV2 ImageNet weights (default: looked up offline; see the README).")
    distill: Any = field(default_factory=demo_distill_config)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("train_per_class", "val_per_class", "teacher_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if hasattr(self.distill, "validate"):
            self.distill.validate()
