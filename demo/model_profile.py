"""Size and speed of a backbone: parameters, GFLOPs and measured CPU inference throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from cache_builder.architectures import count_parameters, gflops


@dataclass(frozen=True)
class ModelProfile:
    """``params`` (count), ``gflops`` (2 x multiply-adds per image at ``input_size``),
    ``images_per_s`` (median forward throughput, batches of ``batch_size``, this machine)."""

    params: int
    gflops: float
    input_size: int
    images_per_s: float


@torch.no_grad()
def profile_model(model: nn.Module, input_size: int, *, batch_size: int = 256, repeats: int = 5, device: str = "cpu") -> ModelProfile:
    """Count ``model``'s parameters and FLOPs for ``(1, 3, S, S)`` inputs and time its forward
    pass on ``(batch_size, 3, S, S)`` random inputs (one warm-up, median of ``repeats``)."""
    model = model.to(device).eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return ModelProfile(count_parameters(model), gflops(model, input_size), input_size, batch_size / median)
