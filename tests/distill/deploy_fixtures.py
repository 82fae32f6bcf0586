"""A tiny finished run (``tiny_cnn`` at 16 px, 1 epoch, on ``tests.distill.synthetic`` images)
and a torchvision one (``resnet18`` at 32 px), shared by the deploy tests."""

from __future__ import annotations

import os

from distill.engine import run as run_engine
from tests.distill.synthetic import CLASSES, make_cache, tiny
from tests.images import write_image_folder


def make_run(root: str, student: str = "tiny_cnn", size: int = 16, epochs: int = 1, per_class: int = 12, val_per_class: int = 0) -> str:
    """``root/run``: a finished run of ``student`` (images ``root/data/train`` and, with
    ``val_per_class``, ``root/data/val``; cache ``root/cache``)."""
    data = os.path.join(root, "data")
    counts = {"train": per_class, **({"val": val_per_class} if val_per_class else {})}
    write_image_folder(data, CLASSES, counts, size=max(16, size), seed=0)
    cache = make_cache(os.path.join(root, "cache"), data)
    out = os.path.join(root, "run")
    run_engine(tiny(cache, out, data=data, student=student, input_size=size, epochs=epochs, bank_size=32))
    return out
