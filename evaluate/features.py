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
from dataclasses import asdict, dataclass

import numpy as np

from evaluate.image_folder import ImageListing, list_classes, list_split

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature extraction.

    Attributes:
        model: ``--model`` spec (see ``evaluate.models``). data: ImageFolder-style root.
        out: output directory (``out/train``, ``out/val``).
        batch_size, workers: loader settings. device: torch device.
        image_size: center-crop size override (torchvision models).
        dtype: store dtype. shard_size: rows per shard (default: the store's).
        overwrite: replace stores extracted with another fingerprint.
        progress: show a progress bar per split.
    """

    model: str
    data: str
    out: str
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    image_size: int | None = None
    dtype: str = "float16"
    shard_size: int | None = None
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {self.batch_size}, {self.workers}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


class ImageDataset:
    """Images ``rows`` of a listing through a transform (with their labels if asked); errors
    name the file."""

    def __init__(self, listing: ImageListing, rows, transform, with_labels: bool = False) -> None:
        self.listing, self.rows, self.transform, self.with_labels = listing, rows, transform, with_labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from PIL import Image

        row = int(self.rows[i])
        path = os.path.join(self.listing.root, self.listing.paths[row])
        try:
            with Image.open(path) as img:
                image = self.transform(img.convert("RGB"))
        except OSError as e:
            raise OSError(f"{path}: cannot read image ({e})") from None
        return (image, self.listing.labels[row]) if self.with_labels else image


def extraction_fingerprint(identity: dict, listings: dict[str, ImageListing]) -> str:
    """sha256 of the model identity and every split's listing fingerprint."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for split in SPLITS:
        h.update(f"|{split}:{listings[split].fingerprint()}".encode())
    return h.hexdigest()


def _embed(module, loader, device: str, bar=None) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for images in loader:
            if bar is not None:
                bar.update(len(images))
            feats = module(images.to(device)).float()
            if feats.ndim != 2:
                raise ValueError(f"the model returned features of shape {tuple(feats.shape)}; expected (B, D)")
            out.append(torch.nn.functional.normalize(feats, dim=1).cpu().numpy())
    return np.concatenate(out)


def extract_split(module, transform, listing: ImageListing, path: str, fingerprint: str, provenance: dict, cfg: FeaturesConfig) -> None:
    """Write (or resume) one split store."""
    import torch
    from torch.utils.data import DataLoader

    from storage import create_store

    probe = _embed(module, DataLoader(ImageDataset(listing, range(1), transform), batch_size=1), cfg.device)
    writer = create_store(path, len(listing.paths), probe.shape[1], cfg.dtype, shard_size=cfg.shard_size,
                          fingerprint=fingerprint, provenance=provenance, exist_ok=not cfg.overwrite, overwrite=cfg.overwrite)
    labels = np.asarray(listing.labels, dtype=np.int64)
    pending = writer.pending_shards()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(b - a for a, b in map(writer.shard_rows, pending)), desc=f"features {os.path.basename(path)}", unit="img", dynamic_ncols=True)
    for shard in pending:
        start, stop = writer.shard_rows(shard)
        loader = DataLoader(ImageDataset(listing, range(start, stop), transform), batch_size=cfg.batch_size,
                            num_workers=cfg.workers, pin_memory=str(cfg.device).startswith("cuda") and torch.cuda.is_available())
        feats = _embed(module, loader, cfg.device, bar).astype(cfg.dtype)
        writer.write_shard(shard, feats, index=np.arange(start, stop), labels=labels[start:stop], paths=list(listing.paths[start:stop]))
    if bar is not None:
        bar.close()
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
    classes = list_classes(cfg.data)
    listings = {s: list_split(cfg.data, s, classes) for s in SPLITS}
    fingerprint = extraction_fingerprint(resolved.identity, listings)
    paths = {s: os.path.join(cfg.out, s) for s in SPLITS}
    reused = all(complete_store_matches(p, fingerprint) for p in paths.values())
    if not reused:
        module = resolved.module.to(cfg.device).eval()
        provenance = {"model": resolved.identity, "dataset": os.path.abspath(cfg.data), "classes": list(classes),
                      "normalized": "L2", "crop": "center", "source": "compress-eval features"}
        for split in SPLITS:
            if not complete_store_matches(paths[split], fingerprint):
                log.info("extracting %s features of %s into %s", split, cfg.data, paths[split])
                extract_split(module, resolved.transform, listings[split], paths[split], fingerprint,
                              {**provenance, "split": split}, cfg)
    info = {"out": cfg.out, "fingerprint": fingerprint, "reused": reused, "model": resolved.identity,
            "dataset": os.path.abspath(cfg.data), "split_sizes": {s: len(listings[s].paths) for s in SPLITS},
            "config": asdict(cfg), "wall_time_s": round(time.perf_counter() - start, 3)}
    with open(os.path.join(cfg.out, "features.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, default=str)
    return info


def cached_features(model: str, data: str, cache_root: str, **options) -> dict:
    """Features of ``model`` on ``data`` under ``cache_root/<fingerprint[:16]>``: extracted on
    first use, reused while model and data fingerprints match.

    ``cache_root`` defaults (in the CLI) to ``RUN/eval/features`` for a student run directory
    and ``./eval-cache`` otherwise.
    """
    from evaluate.models import resolve_model

    resolved = resolve_model(model, image_size=options.get("image_size"))
    listings = {s: list_split(data, s, list_classes(data)) for s in SPLITS}
    out = os.path.join(cache_root, extraction_fingerprint(resolved.identity, listings)[:16])
    return extract_features(FeaturesConfig(model=model, data=data, out=out, **options), resolved)
