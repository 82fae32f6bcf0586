"""Student input pipeline: images from the cache's listing, augmented deterministically.

Each sample's RandomResizedCrop + flip is drawn from a generator seeded by
``(seed, epoch, dataset row)``, so the same epoch gives the same views whatever the number of
workers or processes, and a resumed run sees exactly the batches it would have seen.
Samples are uint8 ``(3, S, S)`` tensors; normalisation happens on the training device.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from cache_builder.image_list import ImageList
from cache_builder.transforms import sample_rrc


def open_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB; errors name the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise OSError(f"{path}: cannot be decoded as an image ({e})") from None


class AugmentedImages(Dataset):
    """Index ``(epoch, row)`` -> ``(uint8 (3, S, S), row)`` with a seeded RRC + flip."""

    def __init__(self, images: ImageList, size: int, scale: tuple[float, float] = (0.08, 1.0), seed: int = 0) -> None:
        self.images = images
        self.size = size
        self.scale = scale
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        epoch, row = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + row)
        im = open_rgb(self.images.absolute(row))
        top, left, h, w = sample_rrc(im.height, im.width, g, self.scale)
        im = TF.resized_crop(im, top, left, h, w, [self.size, self.size], antialias=True)
        if torch.rand((), generator=g).item() < 0.5:
            im = TF.hflip(im)
        return TF.pil_to_tensor(im), row


class CenterCropImages(Dataset):
    """Index ``row`` -> ``(uint8 (3, S, S), row)``: resize + centre crop (bank init, probes)."""

    def __init__(self, images: ImageList, size: int, resize: int | None = None) -> None:
        self.images = images
        self.size = size
        self.resize = resize or size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        im = open_rgb(self.images.absolute(row))
        im = TF.center_crop(TF.resize(im, self.resize, antialias=True), [self.size, self.size])
        return TF.pil_to_tensor(im), row


def normalise(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float ``(B, 3, H, W)``, on the batch's device."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255) - m) / s
