"""Decoding a batch of encoded image files with torchvision, JPEGs on the target device.

Shared by the stage-1 ``--decode gpu`` path (``cache_builder.build.GpuDecoder``) and the
stage-2 one (``distill.decode.GpuViewDecoder``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def is_jpeg(data: torch.Tensor) -> bool:
    """``data``: uint8 file bytes ``(L,)``; True when they start with the JPEG SOI marker."""
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_batch(data: list[torch.Tensor], device: torch.device, error: Callable[[int, Exception], Exception]) -> list[torch.Tensor]:
    """Decode encoded files ``[(L_i,) uint8]`` into uint8 RGB images ``[(3, H_i, W_i)]`` on ``device``.

    The JPEGs are decoded in one batched ``decode_jpeg`` call on ``device``; other formats, and
    every file of a batch whose batched call failed, are decoded one by one (non-JPEGs on the
    CPU, then moved). A file that cannot be decoded raises ``error(i, exception)``, which
    should name the file.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

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
        if img is None:
            try:
                if is_jpeg(d):
                    img = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
                else:
                    img = decode_image(d, mode=ImageReadMode.RGB).to(device, non_blocking=True)
            except RuntimeError as e:
                raise error(i, e) from None
        out.append(img)
    return out
