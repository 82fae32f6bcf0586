"""Evaluation preprocessing of teachers, split in two halves so that the float work runs on
the device:

* ``Uint8Transform`` (CPU, DataLoader workers): RGB conversion (``image_decode.rgb_image`` for
  PIL images; grey tensors are replicated, RGBA tensors composited over white),
  ``Resize(resize_size)`` + ``CenterCrop(input_size)``; PIL image or uint8 tensor
  ``(C, H, W)`` -> uint8 tensor ``(3, S, S)``.
* ``normalize_batch`` (device): uint8 ``(B, 3, S, S)`` -> float ``[0, 1]``, then ``(x - mean) / std``
  when the model has mean/std (SimCLR v1 has none). The one normalisation of teachers and
  students: its mean/std tensors are made once per device (``channel_constants``), never per
  batch (which would be a blocking host-to-device copy, a host sync every step).

``EvalTransform`` chains both for one image (what ``TeacherSpec.eval_transform()`` returns).
Random-resized-crop views (``--augment rrc``) are drawn with a per-image seeded generator, so
their crop parameters are reproducible and can be stored beside the embeddings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from cache_builder.image_decode import composite_alpha, rgb_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_STD = (0.228, 0.224, 0.225)

# columns of the crop-parameter array stored per view: top, left, height, width (pixels of the
# decoded RGB image) and flip (1.0 = horizontally flipped after cropping)
CROP_COLUMNS = ("top", "left", "height", "width", "flip")


def to_rgb(img: object) -> object:
    """PIL image -> RGB PIL image (``image_decode.rgb_image``); uint8 tensor ``(C, H, W)`` with C in
    {1, 3, 4} -> ``(3, H, W)`` (grey replicated, RGBA composited over white like PIL images)."""
    if isinstance(img, torch.Tensor):
        if img.dim() == 2:
            img = img.unsqueeze(0)
        if img.dim() != 3 or img.shape[0] not in (1, 3, 4):
            raise ValueError(f"expected an image tensor (C, H, W) with C in 1/3/4, got shape {tuple(img.shape)}")
        if img.shape[0] == 1:
            return img.expand(3, -1, -1)
        if img.shape[0] == 4:
            return torch.from_numpy(composite_alpha(img.permute(1, 2, 0).numpy())).permute(2, 0, 1)
        return img
    return rgb_image(img)


def _as_uint8_tensor(img: object) -> torch.Tensor:
    out = TF.pil_to_tensor(img) if not isinstance(img, torch.Tensor) else img
    if out.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {out.dtype}")
    return out.contiguous()


class Uint8Transform:
    """Resize + center crop to uint8 ``(3, input_size, input_size)`` (picklable for workers)."""

    def __init__(self, input_size: int, resize_size: int, interpolation: str = "bilinear") -> None:
        if input_size <= 0 or resize_size < input_size:
            raise ValueError(f"need 0 < input_size <= resize_size, got input {input_size}, resize {resize_size}")
        self.input_size = input_size
        self.resize_size = resize_size
        self.interpolation = InterpolationMode(interpolation)
        self._ops = v2.Compose([
            v2.Resize(resize_size, interpolation=self.interpolation, antialias=True),
            v2.CenterCrop(input_size),
        ])

    def __call__(self, img: object) -> torch.Tensor:
        return _as_uint8_tensor(self._ops(to_rgb(img)))


@functools.lru_cache(maxsize=32)
def channel_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as float32 ``(3, 1, 1)`` tensors on ``device``, made once per (mean, std, device)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


def normalize_batch(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` (or ``(3, H, W)``) -> float32 in [0, 1], then ``(x - mean) / std`` if given."""
    out = x.float().div_(255.0)
    if mean is not None and std is not None:
        m, s = channel_constants(tuple(float(v) for v in mean), tuple(float(v) for v in std), out.device)
        out = out.sub_(m).div_(s)
    return out


class SquashUint8Transform:
    """``Resize((S, S))`` without keeping the aspect ratio (SigLIP's ``resize(224)``): PIL image or
    uint8 ``(C, H, W)`` -> uint8 ``(3, S, S)``. Same attributes as ``Uint8Transform``."""

    def __init__(self, input_size: int, interpolation: str = "bilinear") -> None:
        self.input_size = input_size
        self.resize_size = input_size
        self.interpolation = InterpolationMode(interpolation)
        self._op = v2.Resize((input_size, input_size), interpolation=self.interpolation, antialias=True)

    def __call__(self, img: object) -> torch.Tensor:
        return _as_uint8_tensor(self._op(to_rgb(img)))


class EvalTransform:
    """PIL image or uint8 tensor ``(C, H, W)`` -> float32 ``(3, input_size, input_size)`` ready for the teacher."""

    def __init__(self, uint8: Uint8Transform, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.uint8 = uint8
        self.mean = None if mean is None else tuple(mean)
        self.std = None if std is None else tuple(std)

    def __call__(self, img: object) -> torch.Tensor:
        return normalize_batch(self.uint8(img), self.mean, self.std)

    def __repr__(self) -> str:
        return (f"EvalTransform(resize={self.uint8.resize_size}, crop={self.uint8.input_size}, "
                f"interpolation={self.uint8.interpolation.value}, mean={self.mean}, std={self.std})")


def view_generator(seed: int, index: int) -> torch.Generator:
    """The generator of image ``index``'s random views: depends only on (seed, index)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63 - 1))
    return g


def sample_rrc(height: int, width: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)`` drawn with ``g`` (torchvision's algorithm:
    10 tries at a random area/aspect, then a center crop clamped to ``ratio``)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RRCViews:
    """``K`` seeded RandomResizedCrop + horizontal-flip views of one image.

    ``__call__(img, index)`` -> ``(views uint8 (K, 3, S, S), params float32 (K, 5))`` with the
    columns of ``CROP_COLUMNS``; stage 2 reproduces view ``v`` with
    ``resized_crop(img, top, left, height, width, S)`` then ``hflip`` if ``flip``.
    """

    def __init__(self, views: int, input_size: int, seed: int, interpolation: str = "bilinear") -> None:
        if views <= 0:
            raise ValueError(f"views must be >= 1, got {views}")
        self.views = views
        self.input_size = input_size
        self.seed = seed
        self.interpolation = InterpolationMode(interpolation)

    def __call__(self, img: object, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = to_rgb(img)
        height, width = TF.get_size(img)
        g = view_generator(self.seed, index)
        out, params = [], []
        for _ in range(self.views):
            top, left, h, w = sample_rrc(height, width, g)
            flip = bool(torch.rand(1, generator=g) < 0.5)
            view = TF.resized_crop(img, top, left, h, w, [self.input_size, self.input_size],
                                   interpolation=self.interpolation, antialias=True)
            if flip:
                view = TF.horizontal_flip(view)
            out.append(_as_uint8_tensor(view))
            params.append([top, left, h, w, float(flip)])
        return torch.stack(out), torch.tensor(params, dtype=torch.float32)
