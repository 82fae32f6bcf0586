"""Student input pipeline: images from the cache's listing, augmented deterministically.

Each sample's RandomResizedCrop + flip is drawn from a generator seeded by
``(seed, epoch, dataset row)``, so the same epoch gives the same views whatever the number of
workers or processes, and a resumed run sees exactly the batches it would have seen.
Samples are uint8 ``(3, S, S)`` tensors; normalisation happens on the training device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from cache_builder.image_list import ImageList


def open_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB; errors name the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise OSError(f"{path}: cannot be decoded as an image ({e})") from None


def sample_crop(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)`` drawn with generator ``g`` (the standard
    10-attempt rule, falling back to a centre crop of the clamped ratio)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand((), generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


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
        top, left, h, w = sample_crop(im.width, im.height, self.scale, (3 / 4, 4 / 3), g)
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
