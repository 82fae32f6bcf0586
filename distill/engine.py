"""Stage 2's entry point: ``run(DistillConfig)`` trains a student with the CompRess objective.

``run`` resolves the config (``distill.config.resolve_config``: every option validated and the
cache opened before any file is written), builds the trainer (``distill.trainer``) and trains,
resuming when ``out`` holds the same run (``distill.run_identity``).
"""

from __future__ import annotations

import logging
from typing import Any

from distill.config import DistillConfig, resolve_config

__all__ = ["DistillConfig", "resolve_config", "run"]

log = logging.getLogger(__name__)


def run(cfg: DistillConfig) -> dict[str, Any]:
    """Resolve defaults, write ``config.json`` into the run dir and train (resuming if possible).

    Returns ``{"out", "global_step", "epoch", "finished"}``.
    """
    from cache_builder import distributed as D
    from distill.trainer import build_trainer

    cfg = resolve_config(cfg)
    log.info("%s", cfg.schedule_summary())
    try:
        return build_trainer(cfg).train()
    finally:
        D.shutdown()
