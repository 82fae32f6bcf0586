"""Distributed helpers that are the identity on one process.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``init_from_env`` starts a process
group: NCCL for CUDA devices, gloo otherwise (CPU tests).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as td

_started_here = False


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "auto") -> None:
    """Join the process group torchrun describes; nothing on a single process."""
    global _started_here
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    use_cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    td.init_process_group(backend="nccl" if use_cuda else "gloo")
    _started_here = True


def shutdown() -> None:
    """Leave the group this module started. No barrier: after an error on one rank the others
    must fail fast (their next collective errors out) rather than wait forever."""
    global _started_here
    if _started_here and is_distributed():
        td.destroy_process_group()
    _started_here = False


def barrier() -> None:
    if is_distributed():
        td.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]
