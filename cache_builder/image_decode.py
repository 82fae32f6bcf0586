"""Image decoding: the ONE conversion of an image file to 8-bit RGB, shared by stage 1
(``cache_builder.dataset``), stage 2 (``distill.data``), evaluation and the GPU decode paths.

``decode_image(path)`` opens a file with PIL and returns an RGB PIL image; ``rgb_image(img)``
is the mode conversion it applies (docs/cache.md, "Data"). PIL's own
``convert("RGB")`` is wrong for several modes (it clips 16-bit grey to near-white, treats
float images as 0-255, drops alpha and keeps whatever colour a transparent pixel stores), so
every mode is converted here:

========================  =======================================================================
mode                      RGB value of a pixel
========================  =======================================================================
RGB                       unchanged
L, 1                      grey replicated (``1``: 0 or 255)
I;16, I;16B, I;16L, I     16-bit grey, ``round(v / 257)`` (65535 -> 255); ``I`` (32-bit) is
                          read as 16-bit data (what PNG decoders give) and clipped to [0, 65535]
F                         float grey in [0, 1] (clipped; NaN -> 0), ``round(v * 255)``
RGBA, LA, La, RGBa, PA,   composited over a white background (``ALPHA_BACKGROUND``):
P / L / RGB with a        ``round(c * a + 255 * (1 - a))`` with ``a = alpha / 255``, so a fully
transparency entry        transparent pixel is white whatever colour it stores
P (opaque)                palette lookup
CMYK                      ``round((255 - C) * (255 - K) / 255)`` (likewise G from M, B from Y)
YCbCr, HSV, RGBX, ...     PIL's conversion
========================  =======================================================================

``decode_batch`` decodes the files of a batch as uint8 ``(3, H, W)`` tensors on a device:
JPEGs with torchvision's batched ``decode_jpeg`` (on the GPU for ``--decode gpu``), every other
file (and a JPEG torchvision cannot read, e.g. CMYK) with ``decode_bytes`` on the CPU, so the
pixels of a PNG are the same whichever decoder runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from storage.errors import CompressError

ALPHA_BACKGROUND = 255.0  # transparent pixels are composited over white


class BadImageError(CompressError, OSError):
    """An image file that cannot be read or decoded (the message names the file)."""


def _grey_to_rgb(grey: np.ndarray) -> Any:
    """uint8 ``(H, W)`` -> RGB PIL image."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)))


def composite_alpha(rgba: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 4)`` straight (not premultiplied) RGBA -> uint8 ``(H, W, 3)`` over white."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)


def rgb_image(img: Any) -> Any:
    """A PIL image of any mode -> an RGB PIL image (8 bits per channel), per the table above.

    Raises:
        ValueError: a mode PIL cannot convert to RGB (e.g. ``LAB``); ``decode_image`` names the file.
    """
    from PIL import Image

    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode == "I" or mode.startswith("I;16"):
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return _grey_to_rgb(((values + 128) // 257).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return _grey_to_rgb(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or img.has_transparency_data:
        return Image.fromarray(composite_alpha(np.asarray(img.convert("RGBA"))))
    return img.convert("RGB")


def _open_rgb(source: Any) -> Any:
    from PIL import Image

    with Image.open(source) as img:
        img.load()
        return rgb_image(img)


def _decode(source: Any, name: str) -> Any:
    try:
        return _open_rgb(source)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def decode_image(path: str) -> Any:
    """Decode the file at ``path`` fully into an RGB PIL image; ``BadImageError`` names the file."""
    return _decode(path, path)


def decode_bytes(data: bytes, name: str) -> Any:
    """Decode an encoded file's bytes into an RGB PIL image; ``BadImageError`` names ``name``."""
    return _decode(io.BytesIO(data), name)


def is_jpeg(data: torch.Tensor) -> bool:
    """``data``: uint8 file bytes ``(L,)``; True when they start with the JPEG SOI marker."""
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_batch(data: list[torch.Tensor], device: torch.device, error: Callable[[int, Exception], Exception]) -> list[torch.Tensor]:
    """Decode encoded files ``[(L_i,) uint8]`` into uint8 RGB images ``[(3, H_i, W_i)]`` on ``device``.

    The JPEGs are decoded in one batched ``decode_jpeg`` call on ``device``; every file of a
    batch whose batched call failed is retried alone, and a JPEG that torchvision cannot decode
    and every other format are decoded by ``decode_bytes`` on the CPU (the conversion of
    ``rgb_image``), then moved. A file that cannot be decoded raises ``error(i, exception)``,
    which should name the file.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    jpeg = [i for i, d in enumerate(data) if is_jpeg(d)]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        try:
            decoded.update(zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)))
        except RuntimeError:
            pass  # one bad file fails the whole batch call: decode one by one below
    out = []
    for i, d in enumerate(data):
        img = decoded.get(i)
        if img is None and is_jpeg(d):
            try:
                img = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                img = None  # e.g. a CMYK or arithmetic-coded JPEG: PIL below
        if img is None:
            try:
                img = TF.pil_to_tensor(_open_rgb(io.BytesIO(d.cpu().numpy().tobytes()))).to(device, non_blocking=True)
            except Exception as e:  # whatever PIL raises for a bad file
                raise error(i, e) from None
        out.append(img)
    return out
