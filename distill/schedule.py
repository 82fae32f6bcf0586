"""The learning-rate schedule: steps at ``DistillConfig.milestones()`` or cosine over the run."""

from __future__ import annotations

import math

from distill.config import DistillConfig


def learning_rate(cfg: DistillConfig, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The lr of step ``step_in_epoch`` of ``epoch``: ``lr x lr_gamma ** (milestones passed)``,
    or ``lr x (1 + cos(pi x progress)) / 2`` over all ``epochs x steps_per_epoch`` steps."""
    if cfg.schedule == "cosine":
        progress = (epoch * steps_per_epoch + step_in_epoch) / max(1, cfg.epochs * steps_per_epoch)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.milestones())
