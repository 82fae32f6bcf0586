"""Atomic checkpoint files, loaded with ``weights_only=True`` (checkpoints are untrusted input)."""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable

import torch


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` to a temporary name, fsync, rename: a kill leaves the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_atomic(obj: dict[str, Any], path: str) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (``write_atomic``)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None


def capture_rng_state() -> dict[str, Any]:
    """This process's random states (torch CPU, every CUDA device, numpy's global, python's
    ``random``), in a form ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples)."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states only when CUDA is available here)."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
