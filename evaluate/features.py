"""Feature extraction: a frozen backbone over an image folder into ``OUT/train`` and
``OUT/val`` stores of L2-normalised features (center crop, the model's preprocessing).

Both stores carry a fingerprint of (model identity, data listing, preprocessing). Existing
stores with the same fingerprint are reused (and resumed if incomplete); a different
fingerprint is refused unless ``overwrite``. ``cached_features`` keeps one directory per
fingerprint, so a changed model or dataset is re-extracted, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from evaluate.config import FeaturesConfig
from evaluate.image_folder import ImageListing, list_classes, list_split
from storage.atomic import write_json_atomic

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


class ImageDataset:
    """Images ``rows`` of a listing through a transform; errors name the file.

    Item ``i`` is the image, ``(image, label)`` with ``with_labels``, or ``(row, image, empty)``
    with ``with_rows`` (the batches of the embedding pipeline, ``cache_builder.embed``).
    """

    def __init__(self, listing: ImageListing, rows: Any, transform: Callable[[Any], Any], with_labels: bool = False,
                 with_rows: bool = False) -> None:
        self.listing, self.rows, self.transform = listing, rows, transform
        self.with_labels, self.with_rows = with_labels, with_rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        row = int(self.rows[i])
        try:
            image = self.transform(self.listing.decode(row))
        except OSError as e:
            raise OSError(f"{self.listing.root}/{self.listing.paths[row]}: cannot read image ({e})") from None
        if self.with_rows:
            import torch

            return row, image, torch.empty(0)
        return (image, self.listing.labels[row]) if self.with_labels else image


def _location(data: str) -> str:
    """``data`` as recorded: an absolute path, or a URL / shard pattern as given."""
    return data if "://" in data else os.path.abspath(data)


def extraction_fingerprint(identity: dict[str, Any], listings: dict[str, ImageListing]) -> str:
    """sha256 of the model identity and every split's listing fingerprint."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for split in SPLITS:
        h.update(f"|{split}:{listings[split].fingerprint()}".encode())
    return h.hexdigest()


def extract_split(module: Any, transform: Callable[[Any], Any], listing: ImageListing, path: str, fingerprint: str,
                  provenance: dict[str, Any], cfg: FeaturesConfig) -> None:
    """Write (or resume) one split store of L2-normalised features with the embedding pipeline
    (``cache_builder.embed``; fp32 forward, no autocast: the evaluation protocol)."""
    from cache_builder.devices import resolve_device
    from cache_builder.embed import Embedder, StoreRows, embed_shards, progress_bar, shard_loader
    from storage import create_store

    device = resolve_device(cfg.device)
    embedder = Embedder(module, device, amp=False)
    d = embedder.probe_dim(ImageDataset(listing, [0], transform)[0][None])
    writer = create_store(path, len(listing.paths), d, cfg.dtype, shard_size=cfg.shard_size,
                          fingerprint=fingerprint, provenance=provenance, exist_ok=not cfg.overwrite, overwrite=cfg.overwrite)
    pending = writer.pending_shards()
    rows = StoreRows(np.arange(len(listing.paths), dtype=np.int64), np.asarray(listing.labels, dtype=np.int64), listing.paths)
    dataset = ImageDataset(listing, [r for s in pending for r in range(*writer.shard_rows(s))], transform, with_rows=True)
    loader = shard_loader(dataset, writer, pending, cfg.batch_size, cfg.workers, pin_memory=device.type == "cuda")
    bar = progress_bar(sum(b - a for a, b in map(writer.shard_rows, pending)), f"features {os.path.basename(path)}", cfg.progress)
    embed_shards(writer, pending, loader, embedder, rows, bar=bar)
    writer.finalize(provenance=provenance)


def complete_store_matches(path: str, fingerprint: str) -> bool:
    """True when ``path`` holds a complete store written with ``fingerprint``."""
    from storage import NotAStoreError, open_store

    try:
        store = open_store(path)
    except NotAStoreError:
        return False
    return store.complete and store.manifest.fingerprint == fingerprint


def extract_features(cfg: FeaturesConfig, resolved=None) -> dict:
    """Extract (or reuse) train and val features. Returns ``{"out", "fingerprint", "reused",
    "model", "dataset", "wall_time_s"}`` and writes it as ``out/features.json``.

    Raises:
        storage.StoreMismatchError: ``out`` holds features of another model/dataset and
            ``overwrite`` is off.
    """
    from evaluate.models import resolve_model

    start = time.perf_counter()
    resolved = resolved or resolve_model(cfg.model, image_size=cfg.image_size)
    classes = list_classes(cfg.data, cfg.image_column, cfg.label_column)
    listings = {s: list_split(cfg.data, s, classes, cfg.image_column, cfg.label_column) for s in SPLITS}
    fingerprint = extraction_fingerprint(resolved.identity, listings)
    paths = {s: os.path.join(cfg.out, s) for s in SPLITS}
    reused = all(complete_store_matches(p, fingerprint) for p in paths.values())
    if not reused:
        module = resolved.module
        provenance = {"model": resolved.identity, "dataset": _location(cfg.data), "classes": list(classes),
                      "normalized": "L2", "crop": "center", "source": "compress-eval features"}
        for split in SPLITS:
            if not complete_store_matches(paths[split], fingerprint):
                log.info("extracting %s features of %s into %s", split, cfg.data, paths[split])
                extract_split(module, resolved.transform, listings[split], paths[split], fingerprint,
                              {**provenance, "split": split}, cfg)
    info = {"out": cfg.out, "fingerprint": fingerprint, "reused": reused, "model": resolved.identity,
            "dataset": _location(cfg.data), "split_sizes": {s: len(listings[s].paths) for s in SPLITS},
            "config": asdict(cfg), "wall_time_s": round(time.perf_counter() - start, 3)}
    write_json_atomic(os.path.join(cfg.out, "features.json"), info)
    return info


def cached_features(model: str, data: str, cache_root: str, **options) -> dict:
    """Features of ``model`` on ``data`` under ``cache_root/<fingerprint[:16]>``: extracted on
    first use, reused while model and data fingerprints match.

    ``cache_root`` defaults (in the CLI) to ``RUN/eval/features`` for a student run directory
    and ``./eval-cache`` otherwise.
    """
    from evaluate.models import resolve_model

    resolved = resolve_model(model, image_size=options.get("image_size"))
    columns = (options.get("image_column"), options.get("label_column"))
    listings = {s: list_split(data, s, list_classes(data, *columns), *columns) for s in SPLITS}
    out = os.path.join(cache_root, extraction_fingerprint(resolved.identity, listings)[:16])
    return extract_features(FeaturesConfig(model=model, data=data, out=out, **options), resolved)
