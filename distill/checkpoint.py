"""Run checkpoints: written atomically, loaded with ``weights_only=True`` (checkpoints are untrusted
input), their ``format`` checked (an unknown one is refused, not guessed at).

A checkpoint (``RUN_DIR/checkpoint.pt``) is a dict: ``format`` (``FORMAT``), ``fingerprint`` and
``identity`` (``distill.run_identity``), ``config`` (JSON of the resolved ``DistillConfig``),
``student_name``, the state dicts ``student``, ``key_student``, ``objective``, ``optimizer``,
``rng`` (every rank's random states, ``capture_rng_state``), ``world_size``, ``epoch``,
``step_in_epoch``, ``global_step``, ``finished``, ``teacher``, ``input_size``.
"""

from __future__ import annotations

from typing import Any

import torch

from storage.atomic import write_atomic
from storage.errors import CompressError

CHECKPOINT = "checkpoint.pt"
FORMAT = "compress-distill-checkpoint/3"


class CheckpointError(CompressError, ValueError):
    """A checkpoint file is unreadable or of an unknown format."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (``storage.atomic.write_atomic``)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str) -> dict[str, Any]:
    """The run checkpoint at ``path``; ``CheckpointError`` if unreadable or not of ``FORMAT``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {found!r}, this version reads {FORMAT!r}; "
                              "start the run over (--fresh) or use the version that wrote it")
    return ckpt


def load_weights(path: str) -> Any:
    """A plain ``torch.save``d object (an exported state dict), loaded with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from None


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
