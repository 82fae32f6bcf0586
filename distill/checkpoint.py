"""Atomic checkpoint files, loaded with ``weights_only=True`` (checkpoints are untrusted input)."""

from __future__ import annotations

import os
from typing import Any

import torch


def save_atomic(obj: dict[str, Any], path: str) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
