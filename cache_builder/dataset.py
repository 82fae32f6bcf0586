"""Reading images of an ``ImageList`` (files or shards: ``ImageList.decode``/``read_bytes``) for the teacher:
decoding (``cache_builder.image_decode``), the uint8
preprocessing, seeded augmented views, a pre-scan for unreadable images (``--skip-bad``), and a
batch sampler whose batches never cross a store shard (so a resumed build recomputes exactly
the batches of an uninterrupted one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cache_builder.image_decode import BadImageError, decode_image
from cache_builder.image_list import ImageList
from cache_builder.pixel_copy import CopyEncoder, copy_image
from cache_builder.transforms import RRCViews

__all__ = ["BadImageError", "ImageDataset", "ShardBatchSampler", "collate_raw", "decode_image", "scan_bad_images"]


class ImageDataset(Dataset):
    """Images ``indices`` (dataset indices into ``images``), in that order.

    Item ``pos`` is ``(index, image, crops)``:
      * center crop: image uint8 ``(3, S, S)``, crops an empty float tensor;
      * ``views``: image uint8 ``(V, 3, S, S)``, crops float32 ``(V, 5)`` (see ``transforms.CROP_COLUMNS``);
      * ``raw=True`` (GPU decoding): image is the file's bytes, uint8 ``(L,)``.

    With ``copy`` (``compress-cache build --pixels``) the item has a fourth element, the image's
    ``pixel_copy.CopiedImage`` made from the same decode (collate with ``pixel_copy.collate_with_copies``).
    """

    def __init__(self, images: ImageList, indices: Sequence[int], transform: Callable[[object], torch.Tensor],
                 views: RRCViews | None = None, raw: bool = False, copy: CopyEncoder | None = None) -> None:
        self.images = images
        self.indices = list(indices)
        self.transform = transform
        self.views = views
        self.raw = raw
        self.copy = copy

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> tuple[Any, ...]:
        index = self.indices[pos]
        if self.copy is not None:
            data, img, copied = copy_image(self.images, index, self.copy)
            return (*self._item(index, img, data), copied)
        if self.raw:
            return self._item(index, None, self.images.read_bytes(index))
        return self._item(index, self.images.decode(index), None)

    def _item(self, index: int, img: Any, data: bytes | None) -> tuple[int, torch.Tensor, torch.Tensor]:
        if self.raw:
            assert data is not None
            return index, torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.empty(0)
        if self.views is not None:
            views, crops = self.views(img, index)
            return index, views, crops
        return index, self.transform(img), torch.empty(0)


def collate_raw(items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Collate for ``raw`` items: indices ``(B,)``, a list of B byte tensors, empty crops."""
    return torch.tensor([i for i, _, _ in items]), [b for _, b, _ in items], torch.empty(0)


class _ScanDataset(Dataset):
    def __init__(self, images: ImageList) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> str:
        try:
            self.images.decode(i)
            return ""
        except BadImageError as e:
            return str(e)


def scan_bad_images(images: ImageList, workers: int = 0, progress: bool = False) -> list[dict[str, object]]:
    """Decode every image once; ``[{"index", "path", "error"}]`` for those that fail (``--skip-bad``)."""
    loader = DataLoader(_ScanDataset(images), batch_size=64, num_workers=workers, collate_fn=list)
    bad: list[dict[str, object]] = []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="scan images", unit="batch")
    pos = 0
    for errors in it:
        for err in errors:
            if err:
                bad.append({"index": pos, "path": images.paths[pos], "error": err})
            pos += 1
    return bad


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, in order, that never cross a shard boundary.

    ``shard_lengths`` are the row counts of the shards the dataset covers, in order; each
    shard is cut into batches starting at its first row, so batch composition does not depend
    on which other shards are built in the same run.
    """

    def __init__(self, shard_lengths: Sequence[int], batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.shard_lengths = list(shard_lengths)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        offset = 0
        for length in self.shard_lengths:
            for start in range(0, length, self.batch_size):
                yield list(range(offset + start, offset + min(start + self.batch_size, length)))
            offset += length

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.shard_lengths)
