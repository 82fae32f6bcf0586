"""Which torch device a command runs on: ``--device auto | cpu | cuda | cuda:N`` for every stage.

``auto`` is this process's local GPU (``cuda:LOCAL_RANK`` under torchrun) when CUDA is
available, else the CPU. Asking for CUDA where there is none is a ``UsageError``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from storage.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (this process's GPU when CUDA is available, else cpu), cpu, cuda or cuda:N."


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` means on this machine (see the module doc)."""
    import torch  # here, so that CLIs importing DEVICE_HELP keep --help instant

    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank())
    return device
