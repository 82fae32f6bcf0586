"""Process-group helpers for both stages; every one is the identity on a single process.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``init_from_env`` joins the process
group: NCCL when the process's device is a GPU, gloo otherwise (CPU tests). ``shutdown`` leaves
a group this module started (without a barrier: after an error on one rank the others must fail
fast, their next collective erroring out, rather than wait forever). ``check_same_across_ranks``
compares exact checksums of tensors that must be identical on every rank (stage 2's banks and
student) and raises ``RankDivergenceError`` on any difference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as td

from cache_builder.devices import local_rank, resolve_device
from storage.errors import CompressError

__all__ = [
    "RankDivergenceError", "all_gather_cat", "all_gather_object", "barrier", "broadcast_object", "check_same_across_ranks",
    "init_from_env", "is_distributed", "local_rank", "mean_over_ranks", "rank", "shutdown", "tensor_checksum", "world_size",
]

_CHUNK = 1 << 22  # elements per checksum chunk (bounds the int64 temporary)
_started_here = False


class RankDivergenceError(CompressError, RuntimeError):
    """A tensor that must be identical on every rank differs between ranks."""


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device | str = "auto") -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); nothing on one process.

    Args:
        device: this process's device, or a ``--device`` name (``cache_builder.devices``);
            a CUDA device becomes the current device before NCCL starts (each rank talks
            through its own GPU).
    """
    global _started_here
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        td.init_process_group("nccl")
    else:
        td.init_process_group("gloo")
    _started_here = True


def shutdown() -> None:
    """Leave the group this module started (no-op otherwise, and on one process)."""
    global _started_here
    if _started_here and is_distributed():
        td.destroy_process_group()
    _started_here = False


def barrier() -> None:
    if is_distributed():
        td.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank in rank order; ``x`` itself on one process."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    td.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` on one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of scalar/tensor ``x`` over ranks (a copy); ``x`` on one process."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    td.all_reduce(y)
    return y / world_size()


def tensor_checksum(t: torch.Tensor) -> torch.Tensor:
    """Exact, order-independent checksum of ``t``'s bytes: ``(2,)`` int64 on ``t``'s device.

    The bytes are read as 16-bit words; the checksum is (sum of words, sum of word x (position
    mod 65521 + 1)) in wrapping int64 arithmetic, so equal tensors give equal checksums on every
    device and thread count, and a change of any single word changes it.
    """
    flat = t.detach().contiguous().reshape(-1)
    if flat.element_size() == 1 or flat.numel() * flat.element_size() % 2:
        flat = flat.view(torch.uint8).to(torch.int16)  # bool/uint8/odd sizes: one word per byte
    else:
        flat = flat.view(torch.int16)
    total = torch.zeros(2, dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        words = flat[start:start + _CHUNK].to(torch.int64)
        weights = torch.arange(start, start + words.numel(), device=flat.device, dtype=torch.int64) % 65521 + 1
        total[0] += words.sum()
        total[1] += (words * weights).sum()
    return total


def check_same_across_ranks(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ``RankDivergenceError`` (on every rank) if any named tensor differs from rank 0's.

    Args:
        tensors: name -> tensor; every rank must pass the same names with the same shapes.
    """
    if world_size() == 1 or not tensors:
        return
    names = sorted(tensors)
    local = torch.stack([tensor_checksum(tensors[k]).cpu() for k in names])  # (T, 2)
    gathered = all_gather_object(local)
    bad = [(r, names[i]) for r, other in enumerate(gathered) for i in range(len(names)) if not torch.equal(other[i], gathered[0][i])]
    if bad:
        listing = ", ".join(f"{name} on rank {r}" for r, name in bad[:8])
        raise RankDivergenceError(f"tensors that must be identical on all {world_size()} ranks differ from rank 0: {listing}")
