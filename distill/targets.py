"""Cached teacher embeddings for training: loaded once, gathered by dataset row per batch.

The cache's row order must be the dataset's order; ``load_targets`` checks the relative
paths recorded in the store against the listing of ``--data`` and refuses any mismatch, then
each file's size and mtime against those recorded at build time (column ``file_identity``,
``cache_builder.image_list.file_identities``), so a file rewritten since is refused too
(``--trust-data`` skips this for mounts whose mtimes change). A
cache built with ``compress-cache build --skip-bad`` has no rows for the unreadable images it
recorded in its provenance (``skipped_images``); the training listing is then the data
listing minus exactly those images, still checked row by row.

Multi-view caches (``--views K``) hold ``(N, K, D)`` embeddings and a ``crops`` column with
each view's crop parameters; ``gather`` takes the view of every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cache_builder.image_list import IDENTITY_COLUMN, ImageList, discover_splits, first_changed
from cache_builder.pixel_copy import PixelCopyError
from cache_builder.pixel_source import PixelSource
from distill.data import check_crops
from storage import Store, open_store
from storage.cache_layout import split_store_paths
from storage.errors import CompressError

log = logging.getLogger(__name__)
CROPS_COLUMN = "crops"  # written by cache_builder.build for multi-view caches


class CacheMismatchError(CompressError, ValueError):
    """The cache does not describe the images of ``--data`` (same files, same order, same contents)."""


@dataclass
class TeacherTargets:
    """Cached teacher embeddings on ``device``; row i = image i of ``images``.

    Attributes:
        store: the opened train store.
        images: the training listing (the data listing minus images skipped at build time).
        embeddings: ``(N, D_t)`` or, for a K-view cache, ``(N, K, D_t)`` (float16 or float32).
        crops: ``(N, K, 5)`` float32 crop parameters of a K-view cache, else None.
        skipped: the ``skipped_images`` records of the cache provenance (may be empty).
    """

    store: Store
    images: ImageList
    embeddings: torch.Tensor
    crops: np.ndarray | None = None
    skipped: tuple[dict[str, Any], ...] = ()
    device: torch.device | None = None  # where gathered rows go (default: the embeddings' device)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[-1]

    @property
    def views(self) -> int | None:
        return self.embeddings.shape[1] if self.embeddings.dim() == 3 else None

    @property
    def fingerprint(self) -> str:
        """The store's content fingerprint (the run identity's teacher side)."""
        return self.store.content_fingerprint()

    @property
    def teacher_name(self) -> str:
        return str(self.store.provenance.get("teacher", "unknown"))

    def for_batch(self, images: torch.Tensor, rows: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher targets of one training batch: ``gather(rows, views)`` (``images``, the
        student's crops, are what ``distill.online_teacher.OnlineTeacher`` embeds instead)."""
        return self.gather(rows, views)

    def gather(self, rows: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` dataset rows (and ``(B,)`` view indices of a multi-view cache) ->
        ``(B, D_t)`` float32 teacher embeddings on ``device``.

        With the embeddings on the GPU the rows are indexed there (pass them as the loader gives
        them, pinned: the copy is asynchronous). With the embeddings in host memory (a cache too
        big for the GPU) the rows are indexed on the CPU and the ``(B, D_t)`` result is copied,
        pinned and asynchronously, then converted to float32 on the device.
        """
        source = self.embeddings.device
        rows = rows.to(source, non_blocking=True)
        if self.embeddings.dim() == 2:
            picked = self.embeddings.index_select(0, rows)
        elif views is None:
            raise ValueError(f"{self.store.path} is a {self.views}-view cache: gather needs the view of every row")
        else:
            picked = self.embeddings[rows, views.to(source, non_blocking=True)]
        target = self.device or source
        if picked.device.type != target.type:  # (types: "cuda" and "cuda:0" are the same place here)
            picked = (picked.pin_memory() if target.type == "cuda" else picked).to(target, non_blocking=True)
        return picked.float()

    def reference(self, rows: torch.Tensor) -> torch.Tensor:
        """``(R, D_t)`` teacher embeddings of the fixed reference view (bank init, probes): the
        centre crop of a single-view cache, view 0 of a multi-view cache."""
        if self.embeddings.dim() == 2:
            return self.gather(rows)
        return self.gather(rows, torch.zeros_like(rows))


def train_store_path(cache: str) -> str:
    """The train split store of a cache directory (or the store itself)."""
    paths = split_store_paths(cache)
    train = [p for p in paths if p.rstrip("/").endswith("/train")]
    return train[0] if train else paths[0]


def store_listing(store: Store, listing: ImageList, data: str) -> tuple[ImageList, tuple[dict[str, Any], ...]]:
    """The images the rows of ``store`` (a split of a cache) describe: ``listing`` (that split of
    the data) minus the images the cache recorded as skipped (``--skip-bad``), compared with the
    store's paths row by row.

    Raises:
        CacheMismatchError: a skipped record that is not the listed image at its index, or a
            row whose path differs from the listing (the message names the first such row).
    """
    skipped = tuple(store.provenance.get("skipped_images") or ())
    drop: set[int] = set()
    for rec in skipped if not isinstance(listing.source, PixelSource) else ():  # a pre-resized copy holds the kept rows only
        index, path = int(rec["index"]), str(rec["path"])
        if not 0 <= index < len(listing) or listing.paths[index] != path:
            listed = listing.paths[index] if 0 <= index < len(listing) else "<end>"
            raise CacheMismatchError(
                f"cache {store.path} records skipped image {path!r} at listing index {index}, but the data {data} lists "
                f"{listed!r} there. Rebuild the cache for this data or pass the --data it was built from."
            )
        drop.add(index)
    kept = [i for i in range(len(listing)) if i not in drop]
    images = listing if not drop else listing.subset(kept)
    paths = store.load_metadata().paths
    if len(paths) != len(images) or tuple(paths) != images.paths:
        first = next((i for i, (a, b) in enumerate(zip(paths, images.paths)) if a != b), min(len(paths), len(images)))
        cached = paths[first] if first < len(paths) else "<end>"
        listed = images.paths[first] if first < len(images) else "<end>"
        note = f" after removing the {len(drop)} images the cache records as skipped" if drop else ""
        raise CacheMismatchError(
            f"cache {store.path} ({len(paths)} rows) does not match the images of {data} ({len(images)} images{note}): "
            f"row {first} is {cached!r} in the cache but {listed!r} in the data. Rebuild the cache for this data "
            "or pass the --data it was built from."
        )
    if drop:
        log.info("%s: %d unreadable images were skipped when the cache was built (listed in its manifest); training on %d of %d",
                 store.path, len(drop), len(images), len(listing))
    return images, skipped


def check_contents(store: Store, images: ImageList) -> None:
    """Refuse a dataset whose files changed since the cache was built: every row's current
    ``(size, mtime_ns)`` must equal the store's ``file_identity`` column.

    Raises:
        CacheMismatchError: the store records no identities, or names the first changed row
            (its path, recorded and current size and mtime).
    """
    hint = "pass --trust-data to skip this check (e.g. for a copy or mount that does not keep mtimes)"
    if isinstance(images.source, PixelSource):  # the cache's pre-resized copy: written for this store, complete (checked at open)
        try:
            images.source.copy.check_store(store.manifest.fingerprint, store.path)
        except PixelCopyError as e:
            raise CacheMismatchError(str(e)) from None
        return
    if IDENTITY_COLUMN not in store.manifest.columns:
        raise CacheMismatchError(f"cache {store.path} records no file sizes and mtimes (column {IDENTITY_COLUMN!r}), so the "
                                 f"images cannot be checked against it: rebuild it with compress-cache build, or {hint}")
    recorded_source = store.provenance.get("data_source")
    if images.source is not None and isinstance(recorded_source, dict):
        now_fp, then_fp = images.source.fingerprint(), recorded_source.get("fingerprint")
        if then_fp != now_fp:
            raise CacheMismatchError(
                f"the shards of {images.root} changed since cache {store.path} was built (shard names, sizes or member "
                f"counts: listing {str(then_fp)[:19]}... then, {now_fp[:19]}... now). Rebuild the cache, or {hint}")
    changed = first_changed(images, store.load_column(IDENTITY_COLUMN))
    if changed is not None:
        row, (size0, mtime0), (size1, mtime1) = changed
        second = "mtime_ns" if images.source is None else "position"  # sharded rows: (member size, offset or row)
        now = "missing" if size1 < 0 else f"size {size1} B, {second} {mtime1}"
        raise CacheMismatchError(
            f"{images.name(row)} (row {row}) changed since cache {store.path} was built: recorded size {size0} B, "
            f"{second} {mtime0}; now {now}. Rebuild the cache for the current images, or {hint}")


def load_targets(cache: str, data: str, device: torch.device, shared: bool = False, trust_data: bool = False,
                 verify_load: bool = True, image_column: str | None = None, label_column: str | None = None) -> TeacherTargets:
    """Open the train store of ``cache``, check it matches ``data``, load all rows once.

    Args:
        shared: memory-map one node-wide copy (for several DDP ranks on one node) instead of
            a private copy per process.
        trust_data: skip the check of file sizes and mtimes (``check_contents``); the paths
            are still compared.
        verify_load: check the embeddings' CRC32Cs as they are loaded (``Store.load_all``); a shared
            copy is checked once, when it is first written.
        image_column, label_column: Parquet ``data`` (default: the columns the cache was built from).
    """
    store = open_store(train_store_path(cache))
    store.require_complete("distillation")
    crops = None
    if store.views is not None:
        if CROPS_COLUMN not in store.manifest.columns:
            raise CacheMismatchError(f"{store.path}: a {store.views}-view cache without a {CROPS_COLUMN!r} column; the student "
                             "cannot be given the crops the teacher saw. Rebuild it with compress-cache build --views.")
        crops = check_crops(store.load_column(CROPS_COLUMN), store.n, store.views, store.path)
    source = store.provenance.get("data_source")
    recorded = source if isinstance(source, dict) else {}
    listing = discover_splits(data, image_column=image_column or recorded.get("image_column"),
                              label_column=label_column or recorded.get("label_column"))["train"]
    images, skipped = store_listing(store, listing, data)
    if crops is not None and isinstance(images.source, PixelSource):  # the cached views' boxes in the copy's pixels
        crops = images.source.copy.map_crops(crops)
    if trust_data:
        log.info("%s: --trust-data: the images' sizes and mtimes are not compared with the cache's", store.path)
    else:
        check_contents(store, images)
    embeddings: torch.Tensor
    if shared:
        embeddings = store.load_shared(kind="torch")  # type: ignore[assignment]  # kind="torch" returns a Tensor
    else:
        embeddings = store.load_all("torch", pin_memory=device.type == "cuda", verify=verify_load)  # type: ignore[assignment]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if fits_on_device(embeddings.numel() * embeddings.element_size(), free):
            embeddings = embeddings.to(device, non_blocking=True)
        else:
            log.warning("%s: the cached embeddings (%.1f GB) take more than %d %% of the GPU's free memory (%.1f GB): they stay "
                        "in %s host memory and each batch's rows are copied to the GPU", store.path,
                        embeddings.numel() * embeddings.element_size() / 1e9, round(100 * DEVICE_FRACTION), free / 1e9,
                        "shared" if shared else "pinned")
    return TeacherTargets(store, images, embeddings, crops, skipped, device)


DEVICE_FRACTION = 0.5  # of the GPU's free memory the cache may take; the rest is the training's


def fits_on_device(nbytes: int, free_bytes: int) -> bool:
    """Whether a cache of ``nbytes`` goes to the GPU (else it stays in host memory): it may take
    at most ``DEVICE_FRACTION`` of the memory free on the GPU before training starts."""
    return nbytes <= DEVICE_FRACTION * free_bytes
