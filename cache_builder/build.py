"""``build_cache(cfg)``: run a frozen teacher once over every split and write L2-normalised
embeddings into one store per split (``OUT/train``, ``OUT/val``).

Per split: DataLoader workers decode + resize/crop to uint8, then the one embedding pipeline
(``cache_builder.embed``: normalise on the device, teacher forward, L2-normalise, cast to
``cfg.dtype``, whole shards written by a background thread).

Resume: the store's fingerprint (teacher, weights sha256, preprocessing, views, data listing)
must match; completed shards are skipped and batches never cross shards, so a resumed build
writes the same bytes as an uninterrupted one. Under ``torchrun`` each rank writes the shards
``storage`` assigns to it and rank 0 finalises the manifests. See docs/cache.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import storage
from cache_builder import distributed as dist
from cache_builder.build_config import BuildConfig, BuildError, default_workers
from cache_builder.checkpoints import LoadReport
from cache_builder.dataset import ImageDataset, collate_raw, scan_bad_images
from cache_builder.devices import resolve_device
from cache_builder.embed import CROPS_COLUMN, Embedder, StoreRows, embed_shards, progress_bar, shard_loader
from cache_builder.image_list import ImageList, discover_splits
from cache_builder.knn_check import knn_top1
from cache_builder.pixel_copy import CopyEncoder, PixelCopyError, PixelCopyWriter, PixelSettings, collate_with_copies, copy_location, copy_missing
from cache_builder.teachers import AnySpec, MissingWeightsError, load_teacher_spec, resolve_spec
from cache_builder.transforms import CROP_COLUMNS, RRCViews
from cache_builder.vit_teachers import ViTTeacherSpec
from storage.atomic import write_json_atomic
from storage.errors import UsageError
from storage.hashing import file_sha256
from storage.package import package_version
from storage.sharding import shards_for_rank

__all__ = ["BuildConfig", "BuildError", "BuildResult", "SplitResult", "build_cache", "default_workers"]

log = logging.getLogger("cache_builder")

CONFIG_NAME = "build_config.json"
SUMMARY_NAME = "build_summary.json"


@dataclass
class SplitResult:
    """Outcome of one split on this rank."""

    split: str
    path: str
    images: int
    rows_written: int
    seconds: float
    bytes: int
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BuildResult:
    splits: dict[str, SplitResult]
    knn_top1: float | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)


def _dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def _fingerprint(identity: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class GpuDecoder:
    """Decodes JPEG bytes on the GPU (``torchvision.io.decode_jpeg(device="cuda")``) and
    resizes/crops there; non-JPEG or failing files are decoded on the CPU, one by one."""

    def __init__(self, spec: AnySpec, device: torch.device, images: ImageList) -> None:
        self.transform = spec.uint8_transform()
        self.device = device
        self.images = images

    def __call__(self, indices: torch.Tensor, raw: list[torch.Tensor]) -> torch.Tensor:
        from cache_builder.dataset import BadImageError
        from cache_builder.image_decode import decode_batch

        def error(i: int, e: Exception) -> Exception:
            return BadImageError(f"{self.images.name(int(indices[i]))}: cannot decode image ({e})")

        return torch.stack([self.transform(img) for img in decode_batch(raw, self.device, error)])


def _store_kwargs(cfg: BuildConfig, fingerprint: str, identity: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
    """``create_store`` options: format, fingerprint, columns (file identities, crops of a K-view cache)."""
    columns = {**identity, **({CROPS_COLUMN: ((cfg.views, len(CROP_COLUMNS)), "float32")} if cfg.views else {})} or None
    return {"backend": cfg.backend, "shard_size": cfg.shard_size, "views": cfg.views, "columns": columns, "fingerprint": fingerprint}


def _open_or_create_store(path: str, cfg: BuildConfig, n: int, d: int, kwargs: dict[str, Any]) -> storage.StoreWriter:
    """Resume the store at ``path`` if it was started with the same identity; otherwise refuse,
    or recreate it with ``--overwrite``. ``kwargs``: ``create_store`` options."""
    try:
        return storage.create_store(path, n, d, cfg.dtype, exist_ok=True, **kwargs)
    except storage.StoreMismatchError as e:
        if not storage.open_store(path).manifest.done_shards:
            log.warning("%s: replacing an earlier store with no completed shard (it was started with other settings)", path)
            return storage.create_store(path, n, d, cfg.dtype, overwrite=True, **kwargs)
        if not cfg.overwrite:
            raise BuildError(
                f"{e}\nThe existing cache was built with a different teacher, weights, recipe, data listing or "
                f"format. Pass --overwrite to replace it, or choose another --out."
            ) from None
        log.warning("%s: replacing the existing store (--overwrite)", path)
        return storage.create_store(path, n, d, cfg.dtype, overwrite=True, **kwargs)


def _readable(split: str, images: ImageList, cfg: BuildConfig) -> tuple[list[int], list[dict[str, Any]]]:
    """Dataset indices of the images to embed, and the unreadable ones skipped (``--skip-bad``)."""
    skipped: list[dict[str, Any]] = []
    if cfg.skip_bad:
        if dist.rank() == 0:
            skipped = scan_bad_images(images, workers=cfg.workers or 0, progress=cfg.progress)
        skipped = dist.broadcast_object(skipped)
        for bad in skipped:
            log.warning("%s: skipping unreadable image %s", split, bad["error"])
    bad_index = {int(b["index"]) for b in skipped}
    kept = [i for i in range(len(images)) if i not in bad_index]
    if not kept:
        raise BuildError(f"{split}: no readable images left ({len(images)} listed, all unreadable)")
    return kept, skipped


def _build_split(split: str, images: ImageList, cfg: BuildConfig, spec: AnySpec, embedder: Embedder,
                 identity: dict[str, Any], provenance: dict[str, Any]) -> tuple[SplitResult, str]:
    rank, world = dist.rank(), dist.world_size()
    path = os.path.join(cfg.out, split)
    kept, skipped = _readable(split, images, cfg)
    kept_list = images.subset(kept)
    fingerprint = _fingerprint({**identity, "split": split, "data": kept_list.fingerprint()})
    split_prov = {**provenance, "split": split, "data_fingerprint": kept_list.fingerprint(),
                  "data_listing_fingerprint": images.fingerprint(), "data_root": images.root,
                  "images_listed": len(images), "skipped_images": skipped,
                  **({"data_source": images.source.describe()} if images.source is not None else {})}
    identity_specs, identity_values = _identity_columns(kept_list)
    d = spec.embed_dim
    kwargs = _store_kwargs(cfg, fingerprint, identity_specs)
    if rank == 0:
        writer = _open_or_create_store(path, cfg, len(kept), d, {**kwargs, "provenance": split_prov})
    dist.barrier()
    if rank != 0:
        writer = storage.create_store(path, len(kept), d, cfg.dtype, exist_ok=True, **kwargs)
    pending = writer.pending_shards(rank, world)
    done = len(writer.manifest.shards) - len(writer.pending_shards(0, 1))
    if done:
        log.info("%s: resuming, %d of %d shards already complete", path, done, len(writer.manifest.shards))
    rows = StoreRows(np.asarray(kept, dtype=np.int64), np.asarray(kept_list.labels, dtype=np.int64), kept_list.paths, identity_values)
    indices = [kept[r] for s in pending for r in range(*writer.shard_rows(s))]

    raw = cfg.decode == "gpu" and embedder.device.type == "cuda"
    views = RRCViews(cfg.views, spec.input_size, cfg.seed, spec.interpolation) if cfg.views else None
    copy = _copy_writer(split, cfg, writer, fingerprint, kept_list)
    encoder = CopyEncoder(copy.settings) if copy is not None else None
    dataset = ImageDataset(images, indices, spec.uint8_transform(), views=views, raw=raw, copy=encoder)
    collate = collate_raw if raw else None
    loader = shard_loader(dataset, writer, pending, cfg.batch_size, cfg.workers or 0, pin_memory=embedder.device.type == "cuda",
                          collate_fn=collate_with_copies(collate) if copy is not None else collate)
    all_pending = sum(b - a for a, b in map(writer.shard_rows, writer.pending_shards(0, 1)))
    bar = progress_bar(all_pending, f"{split} [{spec.name}]", cfg.progress and rank == 0)
    t0 = time.perf_counter()
    written = embed_shards(writer, pending, loader, embedder, rows, decode=GpuDecoder(spec, embedder.device, images) if raw else None,
                           bar=bar, bar_scale=world,  # other ranks progress at about the same rate
                           write_copies=copy.write_shard if copy is not None else None)
    if copy is not None:
        _copy_missing(copy, split, kept, images, cfg, rank, world)
    seconds = time.perf_counter() - t0
    dist.barrier()
    if rank == 0:
        writer.finalize({**split_prov, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    dist.barrier()
    return SplitResult(split, path, len(kept), written, seconds, _dir_bytes(path), skipped), fingerprint


def _copy_writer(split: str, cfg: BuildConfig, writer: storage.StoreWriter, fingerprint: str,
                 kept: ImageList) -> PixelCopyWriter | None:
    """The writer of the split's pre-resized copy (``--pixels``), prepared on rank 0; None without ``--pixels``."""
    if cfg.pixels is None:
        return None
    settings = PixelSettings(cfg.pixels, cfg.pixels_format, cfg.pixels_quality)
    ranges = [writer.shard_rows(s) for s in range(len(writer.manifest.shards))]
    copy = PixelCopyWriter(copy_location(cfg.out, split), settings, fingerprint, ranges, kept.paths, kept.labels, kept.classes)
    if dist.rank() == 0:
        try:
            copy.prepare(replace=cfg.overwrite)
        except PixelCopyError as e:
            raise BuildError(str(e)) from None
    dist.barrier()
    return copy


def _copy_missing(copy: PixelCopyWriter, split: str, kept: list[int], images: ImageList, cfg: BuildConfig, rank: int,
                  world: int) -> None:
    """Copy this rank's store shards that are complete but have no copy yet (``--pixels`` added to a built cache)."""
    done = copy.complete_shards()
    missing = [s for s in shards_for_rank(len(copy.shard_ranges), rank, world) if s not in done]
    if missing:
        rows = sum(b - a for a, b in (copy.shard_ranges[s] for s in missing))
        log.info("%s: writing the pre-resized copy of %d already embedded shards (%d images)", copy.location, len(missing), rows)
        bar = progress_bar(rows, f"{split} [pixels]", cfg.progress and rank == 0)
        try:
            copy_missing(copy, missing, images, kept, cfg.workers or 0, bar)
        finally:
            if bar is not None:
                bar.close()
    dist.barrier()
    if rank == 0:
        log.info("%s: pre-resized copy (%s), %.2f MiB", copy.location, copy.settings.describe(), _dir_bytes(copy.location) / 2**20)


def _identity_columns(images: ImageList) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, np.ndarray]]:
    """``(column specs, column values)`` of each image file's ``(size, mtime_ns)`` (column
    ``image_list.IDENTITY_COLUMN``), stat'ed before any image is read, so that stage 2 refuses
    a file changed since (see docs/cache.md, "Data")."""
    from cache_builder.image_list import IDENTITY_COLUMN, IDENTITY_COLUMN_SPEC, file_identities

    return {IDENTITY_COLUMN: IDENTITY_COLUMN_SPEC}, {IDENTITY_COLUMN: file_identities(images)}


def _check_inputs(cfg: BuildConfig) -> None:
    """Before anything slow: the files the options name exist."""
    assert cfg.weights is not None and cfg.data is not None
    from cache_builder.image_source import location_exists

    if not location_exists(cfg.data):
        raise UsageError(f"--data {cfg.data}: no such file or directory")
    if cfg.root is not None and not os.path.isdir(cfg.root):
        raise UsageError(f"--root {cfg.root}: no such directory")


def _identity(cfg: BuildConfig, spec: AnySpec, weights_sha: str, decode: str) -> dict[str, Any]:
    """What the stores' fingerprints cover (with the split and its data listing). ViT / timm
    teachers add their embedding (ResNet caches keep the identity they always had)."""
    identity = {
        "teacher": spec.name, "arch": spec.arch, "options": [list(o) for o in spec.options], "weights_sha256": weights_sha,
        "preprocessing": spec.preprocessing(), "views": cfg.views, "augment": cfg.augment,
        "seed": cfg.seed if cfg.views else None, "dtype": cfg.dtype, "decode": decode,
    }
    if isinstance(spec, ViTTeacherSpec):
        identity["embedding"] = spec.embedding
    return identity


def _provenance(cfg: BuildConfig, spec: AnySpec, weights_sha: str, report: LoadReport, decode: str) -> dict[str, Any]:
    assert cfg.weights is not None
    return {
        "teacher": spec.name, "arch": spec.arch, "embedding": spec.embedding, "embed_dim": spec.embed_dim,
        "weights": os.path.abspath(cfg.weights),
        "weights_sha256": weights_sha, "weights_layout": report.layout, "weights_load": report.summary(),
        "preprocessing": spec.preprocessing(),
        "views": cfg.views, "augment": cfg.augment, "seed": cfg.seed, "decode": decode, "package_version": package_version(),
        "torch_version": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "world_size": dist.world_size(),
    }


def _log_and_summarise(cfg: BuildConfig, result: BuildResult) -> None:
    results = result.splits
    for r in results.values():
        log.info("%s: %d images (%d computed here) in %.1f s, %.1f img/s, %.2f MiB on disk%s", r.path, r.images,
                 r.rows_written, r.seconds, r.images_per_second, r.bytes / 2**20,
                 f", {len(r.skipped)} unreadable images skipped (listed in the manifest)" if r.skipped else "")
    if cfg.knn and "train" in results and "val" in results and not cfg.views:
        result.knn_top1 = knn_top1(storage.open_store(results["train"].path), storage.open_store(results["val"].path))
        if result.knn_top1 is not None:
            log.info("sanity check: teacher 1-NN accuracy on val against train = %.2f %%", 100 * result.knn_top1)
    write_json_atomic(os.path.join(cfg.out, SUMMARY_NAME), {
        "splits": {k: {**dataclasses.asdict(v), "images_per_second": v.images_per_second} for k, v in results.items()},
        "knn_top1": result.knn_top1})


def build_cache(cfg: BuildConfig) -> BuildResult:
    """Build (or resume) the cache described by ``cfg``; see the module docstring.

    Raises:
        storage.errors.UsageError: an option names a missing file or an impossible value.
        teachers.MissingWeightsError: no weights file (the message says where it comes from).
        checkpoints.CheckpointError: the file does not fit the teacher.
        image_list.ImageListError, dataset.BadImageError, BuildError: data problems.
    """
    cfg = cfg.resolved()
    assert cfg.weights is not None and cfg.data is not None
    spec = resolve_spec(cfg.teacher, cfg.arch, cfg.prefix, cfg.embed_layer, cfg.weights).with_sizes(cfg.input_size, cfg.resize_size)
    vit = isinstance(spec, ViTTeacherSpec)
    if not (os.path.exists if vit else os.path.isfile)(cfg.weights):  # before anything slow: say where the file goes
        raise MissingWeightsError(spec.missing_weights_message(cfg.weights))
    spec = spec.with_embedding(cfg.embedding)  # refuses an --embedding the teacher cannot give before anything slow
    _check_inputs(cfg)
    dist.init_from_env(cfg.device)
    try:
        device = resolve_device(cfg.device)
        decode = "gpu" if cfg.decode == "gpu" and device.type == "cuda" else "cpu"  # what actually runs
        if cfg.decode == "gpu" and device.type != "cuda":
            log.warning("--decode gpu needs a CUDA device (this run uses %s): decoding on the CPU in %d DataLoader workers instead",
                        device, cfg.workers)
        splits = discover_splits(cfg.data, cfg.root, cfg.image_column, cfg.label_column)
        if cfg.splits:
            unknown = [s for s in cfg.splits if s not in splits]
            if unknown:
                raise UsageError(f"--split {', '.join(unknown)}: {cfg.data} has splits {', '.join(sorted(splits))}")
            splits = {s: splits[s] for s in cfg.splits}
        model, spec, report = load_teacher_spec(spec, cfg.weights, "cpu", embedding=cfg.embedding)  # the Embedder moves it
        weights_sha = file_sha256(report.path)
        identity = _identity(cfg, spec, weights_sha, decode)
        provenance = _provenance(cfg, spec, weights_sha, report, decode)
        if dist.rank() == 0:
            os.makedirs(cfg.out, exist_ok=True)
            write_json_atomic(os.path.join(cfg.out, CONFIG_NAME), {
                "config": cfg.to_json(), "teacher_spec": {"name": spec.name, "arch": spec.arch, "embedding": spec.embedding,
                                                          "embed_dim": spec.embed_dim,
                                                          "preprocessing": spec.preprocessing(), "layout": report.layout},
                "weights_sha256": weights_sha})
        embedder = Embedder(model, device, mean=spec.mean, std=spec.std, amp=cfg.amp, compile=cfg.compile, low_precision_weights=vit)
        results: dict[str, SplitResult] = {}
        fingerprints: dict[str, str] = {}
        for split, images in splits.items():
            results[split], fingerprints[split] = _build_split(split, images, cfg, spec, embedder, identity, provenance)
        result = BuildResult(results, None, fingerprints)
        if dist.rank() == 0:
            _log_and_summarise(cfg, result)
        dist.barrier()
        return result
    finally:
        dist.shutdown()
