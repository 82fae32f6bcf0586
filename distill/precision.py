"""Device-dependent numeric choices of a run: the bank precision, autocast, the decoder that runs.

``--bank-dtype auto`` is bf16 where the device has bf16 matrix hardware (the similarity GEMMs
are 25-40 % of a step in fp32; bench/RESULTS.md measures it), else fp32; a resumed run keeps
the precision it was started with (recorded as ``resolved_bank_dtype`` in its ``config.json``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)


def has_native_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 GEMMs on ``device`` run on bf16 hardware (CUDA, or a CPU with AMX or
    AVX512-BF16), where they cost about half of fp32 or less; elsewhere bf16 is emulated."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch.cpu probes (torch >= 2.3)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_bank_dtype(name: str, device: torch.device, previous: str | None = None) -> torch.dtype:
    """The bank precision of a run: ``name`` unless it is ``auto``; for ``auto``, ``previous``
    (the precision this output directory's run started with) when there is one, so that a run
    resumed on another machine keeps its numerics, else bf16 on bf16 hardware, else fp32."""
    if name != "auto":
        return getattr(torch, name)
    if previous is not None:
        return getattr(torch, previous)
    return torch.bfloat16 if has_native_bf16_matmul(device) else torch.float32


def previous_bank_dtype(out: str, checkpoint_name: str) -> str | None:
    """``resolved_bank_dtype`` of the run in ``out`` (its ``config.json``), or ``None`` when
    ``out`` holds no checkpoint named ``checkpoint_name`` or no readable config."""
    config_path = os.path.join(out, "config.json")
    if not os.path.exists(os.path.join(out, checkpoint_name)) or not os.path.exists(config_path):
        return None
    try:
        with open(config_path) as f:
            value = json.load(f).get("resolved_bank_dtype")
    except (OSError, ValueError, AttributeError):
        return None
    return value if value in ("float32", "bfloat16") else None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device) -> Any:
    """The training's autocast context: bf16 on CUDA, disabled elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def resolve_decode(requested: str, device: torch.device) -> str:
    """The decoder that runs: ``gpu`` needs a CUDA training device, else CPU with a message."""
    if requested == "gpu" and device.type != "cuda":
        log.warning("--decode gpu needs a CUDA device (this run uses %s): decoding on the CPU in the DataLoader workers instead", device)
        return "cpu"
    return requested
