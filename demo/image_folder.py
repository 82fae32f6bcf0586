"""Writing demo images as an ImageFolder tree (``OUT/train/<class>/00000.png``, ``OUT/val/...``).

The export is resumable and never half-done: each split is written under a temporary name
and renamed into place together with a ``.complete`` marker holding a fingerprint of the
pixels, so a rerun reuses a finished export and redoes an interrupted one.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
from PIL import Image

from demo.fashion_mnist import CLASSES, Split
from storage.atomic import fsync_dir, write_text_atomic

MARKER = ".complete"


def split_fingerprint(split: Split) -> str:
    h = hashlib.sha256(np.ascontiguousarray(split.images).data)
    h.update(np.ascontiguousarray(split.labels, dtype="<i8").data)
    return h.hexdigest()


def export_split(split: Split, out_dir: str) -> bool:
    """Write ``split`` as PNGs under ``out_dir``. Returns False if an identical export exists."""
    fingerprint = split_fingerprint(split)
    marker = os.path.join(out_dir, MARKER)
    if os.path.isfile(marker) and open(marker).read().strip() == fingerprint:
        return False
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in CLASSES:
        os.makedirs(os.path.join(tmp, name))
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        Image.fromarray(image, mode="L").save(os.path.join(tmp, CLASSES[int(label)], f"{i:05d}.png"), optimize=False)
    write_text_atomic(os.path.join(tmp, MARKER), fingerprint + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # a directory: storage.atomic writes files; the marker inside makes it complete
    fsync_dir(os.path.dirname(os.path.abspath(out_dir)))
    return True
