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

Reduced-scale decoding (``draft``): ``decode_image(path, draft=fn)`` calls ``fn(width, height)``
with the size from the file header before anything is decoded; when it returns a target
``(w, h)`` and the file is a JPEG, libjpeg decodes it through DCT scaling
(``PIL.Image.draft("RGB", (w, h))``) at the smallest scale ``1/s`` (s in 1, 2, 4, 8) whose image is
still at least ``(w, h)``; ``(W // s, H // s)`` gives exactly scale ``1/s`` (``dct_scale`` chooses
s for a crop box). The drafted image is ``(ceil(W / s), ceil(H / s))``; its pixel ``x`` covers
pixels ``[x s, (x + 1) s)`` of the full image. Other formats are decoded at full size (check
``image.size`` to see which happened).

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


DraftFn = Callable[[int, int], "tuple[int, int] | None"]
DCT_SCALES = (8, 4, 2)  # the reductions libjpeg's DCT scaling offers through PIL's draft (besides 1)


def dct_scale(box_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """The largest ``s`` in 8, 4, 2 such that a crop box ``(h, w)`` at scale ``1/s`` is still at
    least ``out_hw`` in both sides (so its resize to ``out_hw`` stays a downscale), else 1."""
    for s in DCT_SCALES:
        if box_hw[0] >= s * out_hw[0] and box_hw[1] >= s * out_hw[1]:
            return s
    return 1


class _DraftFailed(Exception):
    """Carries an exception raised by a caller's ``draft`` function past the decode-error wrapping."""


def _open_rgb(source: Any, draft: DraftFn | None = None) -> Any:
    from PIL import Image

    with Image.open(source) as img:
        if draft is not None:
            try:
                target = draft(img.width, img.height)
            except Exception as e:
                raise _DraftFailed() from e
            if target is not None and img.format == "JPEG":
                img.draft("RGB", (max(1, int(target[0])), max(1, int(target[1]))))
        img.load()
        return rgb_image(img)


def _decode(source: Any, name: str, draft: DraftFn | None = None) -> Any:
    try:
        return _open_rgb(source, draft)
    except _DraftFailed as e:  # the caller's own error (e.g. a view box outside the image): unchanged
        assert e.__cause__ is not None
        raise e.__cause__ from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def decode_image(path: str, draft: DraftFn | None = None) -> Any:
    """Decode the file at ``path`` into an RGB PIL image; ``BadImageError`` names the file.

    ``draft``: ``fn(width, height) -> (w, h) | None``, called with the header's size; a JPEG is
    then decoded at the smallest DCT scale that is still at least ``(w, h)`` (module docstring).
    """
    return _decode(path, path, draft)


def decode_bytes(data: bytes, name: str, draft: DraftFn | None = None) -> Any:
    """Decode an encoded file's bytes into an RGB PIL image; ``BadImageError`` names ``name``;
    ``draft`` as in ``decode_image``."""
    return _decode(io.BytesIO(data), name, draft)


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


def decode_tensor(data: bytes, name: str) -> torch.Tensor:
    """Decode one encoded file into uint8 RGB ``(3, H, W)`` on the CPU (``decode_batch``: a JPEG
    with torchvision's ``decode_jpeg``, which gives the same pixels as PIL's libjpeg-turbo decode
    in half the time, anything else through ``decode_bytes``); ``BadImageError`` names ``name``."""

    def error(i: int, e: Exception) -> Exception:
        return BadImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})")

    return decode_batch([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device("cpu"), error)[0]
