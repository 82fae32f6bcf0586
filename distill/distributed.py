"""Process-group helpers that are the identity on a single process (started without torchrun).

Under ``torchrun`` (``WORLD_SIZE`` > 1) ``init_from_env`` joins the group (NCCL on CUDA, gloo
on CPU); collectives then run over all ranks. ``check_same_across_ranks`` compares exact
checksums of tensors that must be identical on every rank (the banks, the student) and raises
on any difference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

_CHUNK = 1 << 22  # elements per checksum chunk (bounds the int64 temporary)


class RankDivergenceError(RuntimeError):
    """A tensor that must be identical on every rank differs between ranks."""


def init_from_env(device: torch.device) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL: each rank talks through its own GPU
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")


def shutdown() -> None:
    """Leave the process group (no-op on one process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(B, ...)`` from every rank in rank order; ``x`` itself on one process."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` on one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of scalar/tensor ``x`` over ranks (a copy); ``x`` on one process."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
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


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
