"""``--decode gpu``: JPEG decoding of the student's inputs on the training GPU.

With ``--decode cpu`` (default) DataLoader workers decode with PIL and crop/resize there
(``distill.data.AugmentedImages``). With ``--decode gpu`` the workers only read the file bytes
and the image size from the header (no decode) and draw the same seeded view box; the main
process decodes the batch with ``torchvision.io.decode_jpeg(device="cuda")`` and crops,
resizes (bilinear, antialiased) and flips on the GPU (``GpuViewDecoder``). Non-JPEG files are
decoded on the CPU one by one and moved to the GPU. GPU decoding and resizing give slightly
different pixels from PIL, so the decoder that runs is part of the run's fingerprint. Without a
CUDA training device ``--decode gpu`` falls back to CPU decoding with a logged message
(``distill.precision.resolve_decode``), which gives exactly the ``--decode cpu`` batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image


@dataclass
class EncodedView:
    """One sample before decoding: the file's bytes and the view to cut from it.

    Attributes:
        data: uint8 ``(L,)`` raw file bytes.
        box: ``(top, left, height, width, flip)`` in pixels of the decoded image.
        path: the file (for error messages).
    """

    data: torch.Tensor
    box: tuple[int, int, int, int, bool]
    path: str


def image_size(data: bytes | str, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` from the header of the encoded ``data`` (or the file at path
    ``data``); PIL opens lazily: nothing is decoded. Errors name ``name`` (default the path)."""
    import io

    path = name or str(data)
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise OSError(f"{path}: cannot be read as an image ({e})") from None


def cut_view(img: torch.Tensor, box: tuple[int, int, int, int, bool], size: int, where: str) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> the view ``box`` = ``(top, left, height, width, flip)`` of it, resized to
    uint8 ``(3, size, size)`` (bilinear, antialiased: torchvision's uint8 kernel, on any device) and
    flipped. The one view cut of the student's input pipeline: ``--decode cpu`` (on the decoded
    image) and ``--decode gpu`` (on the GPU-decoded batch). ``where`` names the image in errors."""
    from torchvision.transforms.v2 import functional as F

    top, left, h, w, flip = box
    if top + h > img.shape[1] or left + w > img.shape[2]:
        raise ValueError(f"{where}: decoded size {tuple(img.shape[1:])} is smaller than the view box {box}")
    view = F.resize(img[:, top:top + h, left:left + w], [size, size], antialias=True)
    return view.flip(-1) if flip else view


def collate_encoded(samples: list[tuple[EncodedView, int, int]]) -> tuple[list[EncodedView], torch.Tensor, torch.Tensor]:
    """``[(EncodedView, row, view)]`` -> ``([EncodedView] * B, rows (B,), views (B,))``."""
    encoded, rows, views = zip(*samples)
    return list(encoded), torch.tensor(rows, dtype=torch.int64), torch.tensor(views, dtype=torch.int64)


class GpuViewDecoder:
    """``[EncodedView] * B`` -> uint8 ``(B, 3, S, S)`` on ``device``: decode, crop, resize, flip.

    Args:
        size: student input size S.
        device: the device that decodes: the training GPU for ``--decode gpu`` (the same code
            runs on the CPU, which is how it is tested without a GPU).
    """

    def __init__(self, size: int, device: torch.device) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.device = device

    def __call__(self, encoded: list[EncodedView]) -> torch.Tensor:
        from cache_builder.image_decode import decode_batch

        def error(i: int, err: Exception) -> Exception:
            return OSError(f"{encoded[i].path}: cannot be decoded as an image ({err})")

        images = decode_batch([e.data for e in encoded], self.device, error)
        return torch.stack([cut_view(img, e.box, self.size, e.path) for e, img in zip(encoded, images)])

