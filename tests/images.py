"""The one generator of synthetic image folders for tests: ``ROOT[/split]/<class>/<name>.<ext>``.

Two kinds of content, both tinted by class so the classes are separable:

* ``"layout"``: a smooth random 4x4 colour layout, upsampled (content a small network can
  learn, and which compresses like a photo), channel ``c % 3`` lifted to ``0.5 x + 120``;
* ``"noise"``: uniform random RGB pixels, channel ``c % 3`` raised by ``60 c`` (clipped).

Sizes are ``size`` (plus ``randint(0, jitter)`` per side when ``jitter`` > 0). Every draw
comes from one ``numpy`` generator seeded by ``seed``, in split, class, image order, so a
folder is reproducible bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def image_pixels(rng: np.random.Generator, c: int, height: int, width: int, style: str = "layout") -> np.ndarray:
    """uint8 ``(height, width, 3)`` pixels of class index ``c`` (see the module docstring)."""
    if style == "layout":
        layout = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
        layout[..., c % 3] = 0.5 * layout[..., c % 3] + 120
        return np.asarray(Image.fromarray(layout.astype(np.uint8)).resize((width, height), Image.BILINEAR))
    if style == "noise":
        arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        arr[..., c % 3] = np.clip(arr[..., c % 3].astype(int) + 60 * c, 0, 255).astype(np.uint8)
        return arr
    raise ValueError(f"unknown image style {style!r}; known: layout, noise")


def write_image_folder(root: str, classes: Sequence[str] | int = ("a", "b"), per_class: int | dict[str, int] = 3, *,
                       splits: Sequence[str | None] = (None,), size: int = 16, jitter: int = 0, style: str = "layout",
                       seed: int = 0, ext: str = "png", name: str = "{i:03d}", quality: int = 95) -> list[str]:
    """Write ``per_class`` images per class (and per split) under ``root``.

    Args:
        classes: class folder names, or a count ``n`` for ``class_0 .. class_{n-1}``.
        per_class: images per class, or ``{split: images per class}`` (which then sets ``splits``).
        splits: split folders (``("train", "val")``), or ``(None,)`` for class folders directly in ``root``.
        name: file stem, formatted with the image index ``i``.
        quality: JPEG quality (``ext="jpg"``).

    Returns:
        the written paths relative to ``root`` (POSIX), in the order written (the listing order
        when names sort like their indices).
    """
    names = [f"class_{c}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    counts = dict(per_class) if isinstance(per_class, dict) else {split: per_class for split in splits}
    rng = np.random.default_rng(seed)
    written = []
    for split, count in counts.items():
        for c, cls in enumerate(names):
            folder = os.path.join(root, split, cls) if split else os.path.join(root, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                h, w = size, size
                if jitter:
                    h, w = size + int(rng.integers(0, jitter + 1)), size + int(rng.integers(0, jitter + 1))
                img = Image.fromarray(image_pixels(rng, c, h, w, style))
                rel = f"{name.format(i=i)}.{ext}"
                img.save(os.path.join(folder, rel), **({"quality": quality} if ext in ("jpg", "jpeg") else {}))
                written.append("/".join(p for p in (split, cls, rel) if p))
    return written
