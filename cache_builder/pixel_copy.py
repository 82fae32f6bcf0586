"""Writing the pre-resized training copy of a split (``compress-cache build --pixels SIZE``).

Stage 1 decodes every image anyway; with ``--pixels SIZE`` it also writes each image with its
short side at most SIZE into WebDataset tar shards beside the cache, in store row order, one tar
per store shard. Stage 2 then reads the copy instead of the original files
(``cache_builder.pixel_source``), where each sample's decode and crop resize are much cheaper
(bench/RESULTS.md, "Student loader").

Layout (docs/cache.md, "The pre-resized copy")::

    OUT/pixels/<split>/pixels.json      format, settings, the split store's fingerprint, rows, classes, shard ranges
    OUT/pixels/<split>/shard-00000.tar  per store row r: "<r:09d>.jpg" (or .png) and "<r:09d>.cls" (its label, if known)
    OUT/pixels/<split>/shard-00000.json the shard's index: the tar's size and sha256; per row the original path,
                                        label, member offset and size, source and stored (height, width)

Encoding (``CopyEncoder``): the decoded RGB image (``cache_builder.image_decode``, the one
conversion) is resized (bicubic, antialiased) so that its short side is SIZE (never enlarged), then
encoded as JPEG (``--pixels-quality``, default 90) or PNG (lossless). An image that needs no
resizing and whose file already has the output format is stored byte for byte. Tar headers are
fixed (mtime 0, uid/gid 0, mode 0644), so a shard's bytes depend only on its rows: a resumed
build writes the same bytes as an uninterrupted one.

Atomicity and resume: a tar is written under a temporary name and renamed, then its index is
written atomically; a shard is complete when its index exists and the tar has the recorded
size. In a build, the tar of store shard s is written before store shard s is marked complete
(the same writer thread, in order), so a complete store shard without its copy only exists when
``--pixels`` is added to a built cache (or the copy was deleted); ``copy_missing`` writes those
without running the teacher.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from cache_builder.build_config import PIXEL_FORMATS
from cache_builder.image_list import ImageList
from storage.atomic import write_json_atomic, write_path_atomic
from storage.errors import CompressError
from storage.hashing import file_sha256

log = logging.getLogger(__name__)

PIXELS_DIR = "pixels"  # OUT/pixels/<split>
MANIFEST_NAME = "pixels.json"
PIXELS_FORMAT = "compress-pixels/1"
SHARD_INDEX_FORMAT = "compress-pixels-shard/1"
EXTENSIONS = {"jpeg": "jpg", "png": "png"}
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


class PixelCopyError(CompressError, ValueError):
    """A pre-resized copy that cannot be written or used as it is (the message names it and says why)."""


@dataclass(frozen=True)
class PixelSettings:
    """``size``: the stored short side at most; ``image_format``: jpeg or png; ``quality``: JPEG quality."""

    size: int
    image_format: str = "jpeg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.image_format not in PIXEL_FORMATS or self.size <= 0:
            raise PixelCopyError(f"pre-resized copy settings {self}: size must be positive and the format one of "
                                 f"{', '.join(PIXEL_FORMATS)}")

    def describe(self) -> str:
        codec = f"JPEG q{self.quality}" if self.image_format == "jpeg" else "PNG (lossless)"
        return f"short side <= {self.size} px, {codec}"


@dataclass(frozen=True)
class CopiedImage:
    """One row of the copy: the encoded ``data`` and the (height, width) before and after resizing."""

    data: bytes
    source_hw: tuple[int, int]
    hw: tuple[int, int]


def copy_location(out: str, split: str) -> str:
    """Where the copy of ``split`` of the cache ``out`` lives."""
    return os.path.join(out, PIXELS_DIR, split)


def copied_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` with the short side scaled to ``size`` (unchanged when already <= size)."""
    short = min(height, width)
    if short <= size:
        return height, width
    return max(1, round(height * size / short)), max(1, round(width * size / short))


class CopyEncoder:
    """``(RGB PIL image, its file's bytes) -> CopiedImage`` for ``settings`` (module docstring)."""

    def __init__(self, settings: PixelSettings) -> None:
        self.settings = settings

    def __call__(self, img: Any, data: bytes) -> CopiedImage:
        from PIL import Image

        s = self.settings
        h, w = copied_size(img.height, img.width, s.size)
        source_hw = (img.height, img.width)
        if (h, w) == source_hw and data.startswith(_MAGIC[s.image_format]):
            return CopiedImage(bytes(data), source_hw, (h, w))  # nothing to resize, already in the output format
        if (h, w) != source_hw:  # torchvision's antialiased bicubic uint8 kernel: ~9x faster than PIL's Lanczos here
            from torchvision.transforms.v2 import functional as F

            resized = F.resize(F.pil_to_tensor(img), [h, w], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
            img = Image.fromarray(np.ascontiguousarray(resized.permute(1, 2, 0).numpy()))
        buf = io.BytesIO()
        if s.image_format == "jpeg":
            img.save(buf, format="JPEG", quality=s.quality)
        else:
            img.save(buf, format="PNG")
        return CopiedImage(buf.getvalue(), source_hw, (h, w))


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def write_tar(path: str, keys: Sequence[str], ext: str, labels: Sequence[int], copies: Sequence[CopiedImage]) -> list[int]:
    """Write the WebDataset tar ``path`` atomically: per key ``<key>.<ext>`` (and ``<key>.cls`` for
    labels >= 0); returns each image member's data offset."""
    offsets: list[int] = []

    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, label, copy in zip(keys, labels, copies):
                before = tar.offset
                tar.addfile(_member(f"{key}.{ext}", len(copy.data)), io.BytesIO(copy.data))
                offsets.append(tar.offset - -(-len(copy.data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
                assert offsets[-1] == before + tarfile.BLOCKSIZE, "a USTAR header is one block"
                if label >= 0:
                    text = str(int(label)).encode()
                    tar.addfile(_member(f"{key}.cls", len(text)), io.BytesIO(text))

    write_path_atomic(path, write)
    return offsets


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.tar"


def index_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.json"


def row_key(row: int) -> str:
    return f"{row:09d}"


def complete_index(location: str, shard_id: int) -> dict[str, Any] | None:
    """The index of shard ``shard_id`` of the copy at ``location`` when the shard is complete (its
    index is written, in this format, and its tar has the size the index records), else None."""
    try:
        with open(os.path.join(location, index_name(shard_id)), encoding="utf-8") as f:
            index = json.load(f)
        if index.get("format") == SHARD_INDEX_FORMAT and os.path.getsize(os.path.join(location, shard_name(shard_id))) == index["bytes"]:
            return dict(index)
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


class PixelCopyWriter:
    """Writes the copy of one split at ``location``; row ``r`` is store row ``r``.

    Args:
        settings: what to write.
        store_fingerprint: the split store's fingerprint (the copy is only used with that store).
        shard_ranges: ``[(start, stop)]`` of every store shard (one tar each).
        paths, labels: every store row's image path and label.
        classes: the split's class names.
    """

    def __init__(self, location: str, settings: PixelSettings, store_fingerprint: str, shard_ranges: Sequence[tuple[int, int]],
                 paths: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> None:
        self.location, self.settings, self.shard_ranges = location, settings, list(shard_ranges)
        self.paths, self.labels = paths, np.asarray(labels, np.int64)
        self.manifest = {"format": PIXELS_FORMAT, "settings": asdict(settings), "store_fingerprint": store_fingerprint,
                         "rows": len(paths), "classes": list(classes), "shards": [list(r) for r in self.shard_ranges]}

    def prepare(self, replace: bool) -> None:
        """Create the copy, keep a matching one (resume), or replace it: one written for another
        store is always replaced (that store is gone); one with other settings only with
        ``replace`` (``--overwrite``), else ``PixelCopyError``. Call on one process only."""
        path = os.path.join(self.location, MANIFEST_NAME)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError) as e:
                if not replace:
                    raise PixelCopyError(f"{path}: unreadable pre-resized copy manifest ({e}); pass --overwrite to replace "
                                         "the copy") from None
                old = {}
            if old == self.manifest:
                return self._remove_temporaries()
            if old.get("store_fingerprint") == self.manifest["store_fingerprint"] and not replace:
                was = PixelSettings(**old["settings"]).describe() if isinstance(old.get("settings"), dict) else "other settings"
                raise PixelCopyError(f"{self.location}: holds a pre-resized copy written with {was}, not "
                                     f"{self.settings.describe()}; pass --overwrite to replace it, or the --pixels options it "
                                     "was written with")
            log.warning("%s: replacing the pre-resized copy (it was written %s)", self.location,
                        "with other settings (--overwrite)" if old.get("store_fingerprint") == self.manifest["store_fingerprint"]
                        else "for an earlier cache")
            shutil.rmtree(self.location)
        os.makedirs(self.location, exist_ok=True)
        write_json_atomic(path, self.manifest)

    def _remove_temporaries(self) -> None:
        """Delete a killed writer's temporary files (the store's writer lock is held: no writer is live)."""
        for name in os.listdir(self.location):
            if ".tmp-" in name:
                os.remove(os.path.join(self.location, name))

    def complete_shards(self) -> set[int]:
        """The shards whose tar and index are written (``complete_index``)."""
        return {sid for sid in range(len(self.shard_ranges)) if complete_index(self.location, sid) is not None}

    def write_shard(self, shard_id: int, copies: Sequence[CopiedImage]) -> None:
        """Write shard ``shard_id`` (its rows' copies, in row order): the tar, then its index."""
        start, stop = self.shard_ranges[shard_id]
        if len(copies) != stop - start:
            raise PixelCopyError(f"{self.location}: shard {shard_id} got {len(copies)} images for rows {start}-{stop - 1}; "
                                 "this is a bug, please report it")
        rows = range(start, stop)
        labels = self.labels[start:stop].tolist()
        tar = os.path.join(self.location, shard_name(shard_id))
        offsets = write_tar(tar, [row_key(r) for r in rows], EXTENSIONS[self.settings.image_format], labels, copies)
        write_json_atomic(os.path.join(self.location, index_name(shard_id)), {
            "format": SHARD_INDEX_FORMAT, "shard": shard_name(shard_id), "start": start, "stop": stop,
            "bytes": os.path.getsize(tar), "sha256": file_sha256(tar), "paths": list(self.paths[start:stop]), "labels": labels,
            "offsets": offsets, "sizes": [len(c.data) for c in copies], "source_hw": [list(c.source_hw) for c in copies],
            "hw": [list(c.hw) for c in copies]})


def copy_image(images: ImageList, index: int, encoder: CopyEncoder) -> tuple[bytes, Any, CopiedImage]:
    """Read and decode image ``index`` of ``images`` once: ``(file bytes, RGB PIL image, its CopiedImage)``."""
    from cache_builder.image_decode import decode_bytes

    data = images.read_bytes(index)
    img = decode_bytes(data, images.name(index))
    return data, img, encoder(img, data)


class _CopyDataset(Dataset):
    def __init__(self, images: ImageList, indices: Sequence[int], encoder: CopyEncoder) -> None:
        self.images, self.indices, self.encoder = images, list(indices), encoder

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> CopiedImage:
        return copy_image(self.images, self.indices[pos], self.encoder)[2]


def copy_missing(writer: PixelCopyWriter, shards: Sequence[int], images: ImageList, indices: Sequence[int],
                 workers: int, bar: Any = None) -> int:
    """Write the copies of store shards ``shards`` (complete in the store, missing here) by decoding
    their images without the teacher; ``indices[r]`` is store row r's index in ``images``.
    Returns the rows written."""
    from cache_builder.dataset import ShardBatchSampler

    ranges = [writer.shard_ranges[s] for s in shards]
    dataset = _CopyDataset(images, [indices[r] for a, b in ranges for r in range(a, b)], CopyEncoder(writer.settings))
    loader = DataLoader(dataset, batch_sampler=ShardBatchSampler([b - a for a, b in ranges], 64), num_workers=workers,
                        collate_fn=list, prefetch_factor=4 if workers else None)
    batches = iter(loader)
    for sid, (a, b) in zip(shards, ranges):
        copies: list[CopiedImage] = []
        while len(copies) < b - a:  # batches never cross a shard
            batch = next(batches)
            copies += batch
            if bar is not None:
                bar.update(len(batch))
        writer.write_shard(sid, copies)
    return sum(b - a for a, b in ranges)


def collate_with_copies(collate: Any) -> Any:
    """Wrap a collate function of ``(index, image, crops)`` items so that it also takes items with a
    fourth ``CopiedImage``, which it returns as a list next to the collated batch."""
    from torch.utils.data import default_collate

    inner = collate or default_collate

    def collate_fn(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        return (*inner([item[:3] for item in items]), [item[3] for item in items])

    return collate_fn


__all__ = ["CopiedImage", "CopyEncoder", "PixelCopyError", "PixelCopyWriter", "PixelSettings", "collate_with_copies",
           "copy_image", "copy_location", "copy_missing", "copied_size"]
