"""``--decode gpu``: JPEG decoding of the student's inputs on the training GPU.

With ``--decode cpu`` (default) DataLoader workers decode with PIL and crop/resize there
(``distill.data.AugmentedImages``). With ``--decode gpu`` the workers only read the file bytes
and the image size from the header (no decode) and draw the same seeded view box; the main
process decodes the batch with ``torchvision.io.decode_jpeg(device="cuda")`` and crops,
resizes (bilinear, antialiased) and flips on the GPU (``GpuViewDecoder``). Non-JPEG files are
decoded on the CPU one by one and moved to the GPU. GPU decoding and resizing give slightly
different pixels from PIL, so the decoder that runs is part of the run's fingerprint. Without a
CUDA training device ``--decode gpu`` falls back to CPU decoding with a logged message
(``distill.engine.resolve_decode``), which gives exactly the ``--decode cpu`` batches.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from PIL import Image

DECODERS = ("cpu", "gpu")


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


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` from the file header (PIL opens lazily: nothing is decoded)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise OSError(f"{path}: cannot be read as an image ({e})") from None


def read_bytes(path: str) -> torch.Tensor:
    """uint8 ``(L,)`` contents of ``path``."""
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def collate_encoded(samples: list[tuple[EncodedView, int, int]]) -> tuple[list[EncodedView], torch.Tensor, torch.Tensor]:
    """``[(EncodedView, row, view)]`` -> ``([EncodedView] * B, rows (B,), views (B,))``."""
    encoded, rows, views = zip(*samples)
    return list(encoded), torch.tensor(rows, dtype=torch.int64), torch.tensor(views, dtype=torch.int64)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


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
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        jpeg = [i for i, e in enumerate(encoded) if _is_jpeg(e.data)]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg:
            try:
                decoded.update(zip(jpeg, decode_jpeg([encoded[i].data for i in jpeg], mode=ImageReadMode.RGB, device=self.device)))
            except RuntimeError:
                pass  # one bad file fails the whole batch call: decode one by one below
        out = []
        for i, e in enumerate(encoded):
            img = decoded.get(i)
            if img is None:
                try:
                    if _is_jpeg(e.data):
                        img = decode_jpeg(e.data, mode=ImageReadMode.RGB, device=self.device)
                    else:
                        img = decode_image(e.data, mode=ImageReadMode.RGB).to(self.device, non_blocking=True)
                except RuntimeError as err:
                    raise OSError(f"{e.path}: cannot be decoded as an image ({err})") from None
            top, left, h, w, flip = e.box
            if top + h > img.shape[1] or left + w > img.shape[2]:
                raise ValueError(f"{e.path}: decoded size {tuple(img.shape[1:])} is smaller than the view box {e.box}")
            view = F.resize(img[:, top:top + h, left:left + w], [self.size, self.size], antialias=True)
            out.append(view.flip(-1) if flip else view)
        return torch.stack(out)

