"""A tiny finished run (``tiny_cnn`` at 16 px, 1 epoch, on ``tests.distill.synthetic`` images)
and a torchvision one (``resnet18`` at 32 px), shared by the deploy tests."""

from __future__ import annotations

import os

from distill.engine import run as run_engine
from tests.distill.synthetic import make_cache, make_images, tiny


def make_run(root: str, student: str = "tiny_cnn", size: int = 16, epochs: int = 1, per_class: int = 12) -> str:
    """``root/run``: a finished run of ``student`` (images ``root/data``, cache ``root/cache``)."""
    data = make_images(os.path.join(root, "data"), per_class=per_class, size=max(16, size))
    cache = make_cache(os.path.join(root, "cache"), data)
    out = os.path.join(root, "run")
    run_engine(tiny(cache, out, data=data, student=student, input_size=size, epochs=epochs, bank_size=32))
    return out
