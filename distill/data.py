"""Student input pipeline: images from the cache's listing, augmented deterministically.

Each sample's view is drawn from a generator seeded by ``(seed, epoch, dataset row)``, so the
same epoch gives the same views whatever the number of workers or processes, and a resumed
run sees exactly the batches it would have seen.

* Single-view (centre-crop) caches: a RandomResizedCrop + horizontal flip drawn with that
  generator.
* Multi-view caches (``compress-cache build --views K``): the generator picks one of the K
  cached views, and the student gets the *same* crop and flip the teacher saw (the ``crops``
  column, ``cache_builder.transforms.CROP_COLUMNS``), resized to the student's input size; the
  teacher target is that view's embedding.

Samples are ``(uint8 (3, S, S), row, view)``; normalisation happens on the training device.

Decoding and cutting (``--decode cpu``): a JPEG is decoded by torchvision's ``decode_jpeg`` on
the CPU (``image_decode.decode_tensor``: the same pixels as PIL's decode, in half the time; other
formats through PIL), and the view is cut by ``distill.decode.cut_view`` (torchvision's
antialiased bilinear uint8 resize: 3-4x faster than PIL's on these CPUs, and the kernel
``--decode gpu`` runs on the GPU). bench/RESULTS.md, "Student loader", has the rates.

Reduced-scale decoding (``--decode-scale auto``, ``DECODE_SCALES``): the view box is drawn from
the size in the file header, in full-resolution coordinates exactly as without it; when that
box will be downscaled by 2x or more to the student's input, the JPEG is decoded through
libjpeg's DCT scaling at ``1/s`` (``cache_builder.image_decode.dct_scale``: the largest s in
2, 4, 8 that keeps the box at least S x S) and the box is mapped to the drafted image as
``box / s`` (sub-pixel, PIL's ``resize(box=...)``), then resized to S x S as before. The pixels
differ slightly from a full decode (docs/distill.md, "Input pipeline", has the PSNR), so the
setting is part of the run identity. ``off`` decodes every image fully.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from cache_builder.image_decode import dct_scale, decode_bytes, decode_tensor
from cache_builder.image_list import ImageList
from cache_builder.transforms import CROP_COLUMNS, sample_rrc
from cache_builder.transforms import normalize_batch as normalise  # noqa: F401  (the engine's name for it)
from distill.decode import EncodedView, cut_view, image_size

DECODE_SCALES = ("auto", "off")  # --decode-scale: DCT-scaled JPEG decoding of downscaled crops, or full decodes


def sample_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """The generator of row ``row``'s view in ``epoch``: depends only on (seed, epoch, row)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + row) % (2**63 - 1))


def check_crops(crops: np.ndarray, n: int, views: int, where: str) -> np.ndarray:
    """Validate a cache's ``crops`` column: ``(N, K, 5)`` float (``CROP_COLUMNS``)."""
    expected = (n, views, len(CROP_COLUMNS))
    if crops.shape != expected:
        raise ValueError(f"{where}: column 'crops' has shape {crops.shape}, expected {expected} "
                         f"(rows, views, {'/'.join(CROP_COLUMNS)})")
    return np.ascontiguousarray(crops, dtype=np.float32)


def crop_box(crops: np.ndarray, row: int, view: int, image_hw: tuple[int, int], path: str) -> tuple[int, int, int, int, bool]:
    """``(top, left, height, width, flip)`` of cached view ``view`` of ``row``, checked against
    the image's size (a crop outside the image means the file changed after the cache was built)."""
    top, left, h, w, flip = (float(x) for x in crops[row, view])
    top_i, left_i, h_i, w_i = int(round(top)), int(round(left)), int(round(h)), int(round(w))
    height, width = image_hw
    if h_i <= 0 or w_i <= 0 or top_i < 0 or left_i < 0 or top_i + h_i > height or left_i + w_i > width:
        raise ValueError(f"{path}: cached view {view} of row {row} crops (top {top_i}, left {left_i}, {h_i}x{w_i}) "
                         f"outside the {height}x{width} image; was the file changed after the cache was built?")
    return top_i, left_i, h_i, w_i, flip >= 0.5


class AugmentedImages(Dataset):
    """Index ``(epoch, row)`` -> ``(uint8 (3, S, S), row, view)``.

    Args:
        images: the training listing (row i = cache row i).
        size: student input size S.
        scale: RandomResizedCrop area range (single-view caches).
        seed: run seed.
        crops: ``(N, K, 5)`` crop parameters of a K-view cache, or None for a single-view cache
            (then ``view`` is always 0).
        encoded: return ``distill.decode.EncodedView`` (file bytes + view box, not decoded)
            instead of the image, for ``--decode gpu``; the view is the same.
        decode_scale: ``auto`` decodes JPEGs whose view box is downscaled >= 2x at a reduced
            DCT scale (module docstring), ``off`` decodes fully; the view box is the same.
    """

    def __init__(self, images: ImageList, size: int, scale: tuple[float, float] = (0.08, 1.0), seed: int = 0,
                 crops: np.ndarray | None = None, encoded: bool = False, decode_scale: str = "off") -> None:
        if decode_scale not in DECODE_SCALES:
            raise ValueError(f"decode_scale must be one of {', '.join(DECODE_SCALES)}, got {decode_scale!r}")
        self.decode_scale = decode_scale
        self.images = images
        self.size = size
        self.scale = scale
        self.seed = seed
        self.crops = None if crops is None else check_crops(crops, len(images), crops.shape[1], "crops")
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.images)

    @property
    def views(self) -> int:
        return 1 if self.crops is None else self.crops.shape[1]

    def view_box(self, epoch: int, row: int, image_hw: tuple[int, int]) -> tuple[int, tuple[int, int, int, int, bool]]:
        """``(view, (top, left, h, w, flip))`` of ``row`` in ``epoch`` for an image of ``image_hw``."""
        g = sample_generator(self.seed, epoch, row)
        if self.crops is None:
            top, left, h, w = sample_rrc(image_hw[0], image_hw[1], g, self.scale)
            return 0, (top, left, h, w, torch.rand((), generator=g).item() < 0.5)
        view = int(torch.randint(self.views, (), generator=g))
        return view, crop_box(self.crops, row, view, image_hw, self.images.name(row))

    def __getitem__(self, key: Any) -> tuple[Any, int, int]:
        epoch, row = key
        path = self.images.name(row)
        data = self.images.read_bytes(row)
        if self.encoded:  # --decode gpu: the same view box, from the header's size; decoded on the GPU
            view, box = self.view_box(epoch, row, image_size(data, path))
            return EncodedView(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, path), row, view
        if self.decode_scale == "auto":  # the view from the header's full size; a DCT-scaled decode if it pays
            full_hw = image_size(data, path)
            view, box = self.view_box(epoch, row, full_hw)
            s = dct_scale(box[2:4], (self.size, self.size))
            if s > 1:
                return self._drafted(data, path, full_hw, box, s), row, view
            img = decode_tensor(data, path)
        else:
            img = decode_tensor(data, path)
            view, box = self.view_box(epoch, row, (img.shape[1], img.shape[2]))
        return cut_view(img, box, self.size, path), row, view

    def _drafted(self, data: bytes, path: str, full_hw: tuple[int, int], box: tuple[int, int, int, int, bool], s: int) -> torch.Tensor:
        """The view ``box`` (full-size pixels) from a decode at ``1/s`` (a JPEG; other formats decode fully)."""
        from PIL import Image

        im = decode_bytes(data, path, draft=lambda width, height: (width // s, height // s))
        if im.size == (full_hw[1], full_hw[0]):  # not drafted (not a JPEG)
            return cut_view(TF.pil_to_tensor(im), box, self.size, path)
        top, left, h, w, flip = box  # the same box in the reduced image's coordinates (sub-pixel)
        im = im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left / s, top / s, (left + w) / s, (top + h) / s))
        return TF.pil_to_tensor(TF.hflip(im) if flip else im)


class ReferenceImages(Dataset):
    """Index ``row`` -> ``(uint8 (3, S, S), row)``: the fixed view used to fill the banks and to
    probe neighbour agreement, matching ``TeacherTargets.reference``: resize + centre crop for a
    single-view cache, cached view 0 (its crop and flip) for a multi-view cache."""

    def __init__(self, images: ImageList, size: int, resize: int | None = None, crops: np.ndarray | None = None) -> None:
        self.images = images
        self.size = size
        self.resize = resize or size
        self.crops = crops

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        path = self.images.name(row)
        im = self.images.decode(row)
        if self.crops is None:
            im = TF.center_crop(TF.resize(im, self.resize, antialias=True), [self.size, self.size])
        else:
            top, left, h, w, flip = crop_box(self.crops, row, 0, (im.height, im.width), path)
            im = TF.resized_crop(im, top, left, h, w, [self.size, self.size], antialias=True)
            if flip:
                im = TF.hflip(im)
        return TF.pil_to_tensor(im), row
