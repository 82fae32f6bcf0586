"""``build_cache(cfg)``: run a frozen teacher once over every split and write L2-normalised
embeddings into one store per split (``OUT/train``, ``OUT/val``).

Pipeline per split: DataLoader workers decode + resize/crop to uint8 -> device -> scale and
normalise on the device -> teacher forward (eval, no grad, channels_last, autocast on GPU) ->
L2-normalise -> cast to ``cfg.dtype`` -> a background thread writes whole shards.

Resume: the store's fingerprint (teacher, weights sha256, preprocessing, views, data listing)
must match; completed shards are skipped and batches never cross shards, so a resumed build
writes the same bytes as an uninterrupted one. Under ``torchrun`` each rank writes the shards
``storage`` assigns to it and rank 0 finalises the manifests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import storage
from cache_builder import dist
from cache_builder.checkpoints import sha256_file
from cache_builder.dataset import ImageDataset, ShardBatchSampler, collate_raw, scan_bad_images
from cache_builder.image_list import IDENTITY_COLUMN, IDENTITY_COLUMN_SPEC, ImageList, discover_splits, file_identities
from cache_builder.teachers import MissingWeightsError, TeacherSpec, default_weights_path, load_teacher_spec, resolve_spec
from cache_builder.transforms import CROP_COLUMNS, RRCViews, normalize_batch

log = logging.getLogger("cache_builder")

CONFIG_NAME = "build_config.json"
SUMMARY_NAME = "build_summary.json"
CROPS_COLUMN = "crops"
DATA_ENV = "COMPRESS_DATA"


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("compress-distill")
    except Exception:
        return "0.1.0+source"


def default_workers() -> int:
    """DataLoader workers per process: the node's cores shared by the local ranks, at most 8."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_ranks)))


class BuildError(RuntimeError):
    """The build cannot proceed (refused resume, bad options); the message says why and what to do."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything a cache build depends on. ``None`` fields are resolved by ``resolved()``.

    Attributes:
        teacher: registry name (``cache_builder.teachers``) or ``custom``.
        weights: local weights file (default ``$COMPRESS_HOME/weights/<teacher>.pth``).
        data: split root, class-folder root or file list (default ``$COMPRESS_DATA`` or ``./data``).
        root: base directory of a file list's relative paths.
        out: cache directory; one store per split (``OUT/train``, ``OUT/val``).
        views / augment / seed: ``views`` seeded RandomResizedCrop+flip views per image
            (``augment="rrc"``) instead of the center crop; crop parameters go in column ``crops``.
        dtype / backend / shard_size: store format (``storage.create_store``).
        decode: ``"cpu"`` (PIL in workers) or ``"gpu"`` (``torchvision.io.decode_jpeg`` on CUDA).
    """

    teacher: str
    weights: str | None = None
    data: str | None = None
    root: str | None = None
    out: str = "./cache"
    arch: str | None = None
    prefix: str = ""
    embed_layer: str | None = None
    input_size: int | None = None
    resize_size: int | None = None
    splits: tuple[str, ...] | None = None
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    dtype: str = "float16"
    backend: str = "zarr"
    shard_size: int | None = None
    views: int | None = None
    augment: str = "none"
    seed: int = 0
    skip_bad: bool = False
    overwrite: bool = False
    compile: bool = False
    decode: str = "cpu"
    amp: bool = True
    knn: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.backend not in ("zarr", "hdf5"):
            raise ValueError(f"backend must be zarr or hdf5, got {self.backend!r}")
        if self.augment not in ("none", "rrc"):
            raise ValueError(f"augment must be 'none' or 'rrc', got {self.augment!r}")
        if self.views is not None and (self.views <= 0 or self.augment != "rrc"):
            raise ValueError(f"--views {self.views} needs a positive count and --augment rrc")
        if self.decode not in ("cpu", "gpu"):
            raise ValueError(f"decode must be 'cpu' or 'gpu', got {self.decode!r}")
        if self.decode == "gpu" and self.augment != "none":
            raise ValueError("--decode gpu supports center-crop caches only (not --augment rrc)")
        if self.shard_size is not None and self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    def resolved(self) -> "BuildConfig":
        """Defaults filled in: weights path, data root, worker count, views for ``rrc``."""
        return dataclasses.replace(
            self,
            weights=self.weights or default_weights_path(self.teacher),
            data=self.data or os.environ.get(DATA_ENV) or "./data",
            workers=self.workers if self.workers is not None else default_workers(),
            views=self.views if self.views is not None or self.augment == "none" else 1,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


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


# ---------------------------------------------------------------------------------------------


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BuildError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank())
    return device


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


class ShardWriterThread:
    """Writes whole shards in one background thread; at most ``max_pending`` shards queued,
    so memory stays bounded and the forward never waits on disk unless disk is the bound."""

    def __init__(self, writer: storage.StoreWriter, max_pending: int = 2) -> None:
        self.writer = writer
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self.pending: list[Future] = []
        self.wait_seconds = 0.0

    def submit(self, shard_id: int, **block: Any) -> None:
        while len(self.pending) >= self.max_pending:
            t = time.perf_counter()
            self.pending.pop(0).result()
            self.wait_seconds += time.perf_counter() - t
        self.pending.append(self.pool.submit(self.writer.write_shard, shard_id, **block))

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)


class _ShardBuffer:
    """Rows of one shard being filled, in store order."""

    def __init__(self, shard_id: int, start: int, stop: int, row_shape: tuple[int, ...], dtype: str, views: int | None) -> None:
        self.shard_id, self.start, self.stop = shard_id, start, stop
        self.emb = np.empty((stop - start, *row_shape), dtype=dtype)
        self.crops = np.empty((stop - start, views, len(CROP_COLUMNS)), dtype=np.float32) if views else None
        self.filled = 0

    def add(self, emb: np.ndarray, crops: np.ndarray | None) -> int:
        """Append rows; returns how many were taken (the rest belong to the next shard)."""
        take = min(len(emb), len(self.emb) - self.filled)
        self.emb[self.filled:self.filled + take] = emb[:take]
        if self.crops is not None and crops is not None:
            self.crops[self.filled:self.filled + take] = crops[:take]
        self.filled += take
        return take

    @property
    def full(self) -> bool:
        return self.filled == len(self.emb)


class Embedder:
    """uint8 batch on the device -> L2-normalised embeddings in the store dtype (numpy, host)."""

    def __init__(self, model: torch.nn.Module, spec: TeacherSpec, device: torch.device, amp: bool, compile: bool) -> None:
        self.spec = spec
        self.device = device
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        self.amp_dtype = None
        if amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @torch.inference_mode()
    def __call__(self, images_uint8: torch.Tensor, dtype: str) -> np.ndarray:
        """``(B, 3, S, S)`` uint8 (any device) -> ``(B, D)`` unit-norm ``dtype`` numpy array."""
        x = normalize_batch(images_uint8.to(self.device, non_blocking=True), self.spec.mean, self.spec.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                out = self.model(x)
        else:
            out = self.model(x)
        out = F.normalize(out.float(), dim=1)
        return out.to(getattr(torch, dtype)).cpu().numpy()


class GpuDecoder:
    """Decodes JPEG bytes on the GPU (``torchvision.io.decode_jpeg(device="cuda")``) and
    resizes/crops there; non-JPEG or failing files are decoded on the CPU, one by one."""

    def __init__(self, spec: TeacherSpec, device: torch.device, images: ImageList) -> None:
        self.transform = spec.uint8_transform()
        self.device = device
        self.images = images

    def __call__(self, indices: torch.Tensor, raw: list[torch.Tensor]) -> torch.Tensor:
        from cache_builder.dataset import BadImageError
        from cache_builder.image_decode import decode_batch

        def error(i: int, e: Exception) -> Exception:
            return BadImageError(f"{self.images.absolute(int(indices[i]))}: cannot decode image ({e})")

        return torch.stack([self.transform(img) for img in decode_batch(raw, self.device, error)])


# ---------------------------------------------------------------------------------------------


def _store_columns(cfg: BuildConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-row columns beside the embeddings: each file's (size, mtime_ns), the crops of a K-view cache."""
    return {IDENTITY_COLUMN: IDENTITY_COLUMN_SPEC, **({CROPS_COLUMN: ((cfg.views, len(CROP_COLUMNS)), "float32")} if cfg.views else {})}


def _open_or_create_store(path: str, cfg: BuildConfig, n: int, d: int, fingerprint: str, provenance: dict[str, Any]) -> storage.StoreWriter:
    """Resume the store at ``path`` if it was started with the same identity; otherwise refuse,
    or recreate it with ``--overwrite``."""
    columns = _store_columns(cfg)
    kwargs: dict[str, Any] = dict(backend=cfg.backend, shard_size=cfg.shard_size, views=cfg.views, columns=columns,
                                  fingerprint=fingerprint, provenance=provenance)
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


def _knn_top1(train: storage.Store, val: storage.Store, block: int = 1024) -> float | None:
    """1-NN accuracy of val against train (cosine = L2 on unit vectors), labelled val rows only."""
    train_labels = train.load_metadata().labels
    val_labels = val.load_metadata().labels
    keep = val_labels >= 0
    if not keep.any() or (train_labels < 0).all():
        return None
    xt = torch.from_numpy(np.asarray(train.load_all(), dtype=np.float32))
    xv = torch.from_numpy(np.asarray(val.load_all(), dtype=np.float32)[keep])
    yt = torch.from_numpy(train_labels)
    yv = torch.from_numpy(val_labels[keep])
    correct = 0
    for s in range(0, len(xv), block):
        nn_idx = (xv[s:s + block] @ xt.T).argmax(dim=1)
        correct += int((yt[nn_idx] == yv[s:s + block]).sum())
    return correct / len(xv)


def _build_split(split: str, images: ImageList, cfg: BuildConfig, spec: TeacherSpec, embedder: Embedder,
                 identity: dict[str, Any], provenance: dict[str, Any]) -> tuple[SplitResult, str]:
    rank, world = dist.rank(), dist.world_size()
    path = os.path.join(cfg.out, split)
    skipped: list[dict[str, Any]] = []
    if cfg.skip_bad:
        if rank == 0:
            skipped = scan_bad_images(images, workers=cfg.workers or 0, progress=cfg.progress)
        skipped = dist.broadcast_object(skipped)
        for bad in skipped:
            log.warning("%s: skipping unreadable image %s", split, bad["error"])
    bad_index = {int(b["index"]) for b in skipped}
    kept = [i for i in range(len(images)) if i not in bad_index]
    if not kept:
        raise BuildError(f"{split}: no readable images left ({len(images)} listed, all unreadable)")
    kept_list = ImageList(images.root, tuple(images.paths[i] for i in kept), tuple(images.labels[i] for i in kept), images.classes)
    fingerprint = _fingerprint({**identity, "split": split, "data": kept_list.fingerprint()})
    split_prov = {**provenance, "split": split, "data_fingerprint": kept_list.fingerprint(),
                  "data_listing_fingerprint": images.fingerprint(), "data_root": images.root,
                  "images_listed": len(images), "skipped_images": skipped}

    d = spec.embed_dim
    if rank == 0:
        writer = _open_or_create_store(path, cfg, len(kept), d, fingerprint, split_prov)
    dist.barrier()
    if rank != 0:
        writer = storage.create_store(path, len(kept), d, cfg.dtype, backend=cfg.backend, shard_size=cfg.shard_size,
                                      views=cfg.views, exist_ok=True, fingerprint=fingerprint,
                                      columns=_store_columns(cfg))
    pending = writer.pending_shards(rank, world)
    identities = file_identities(kept_list)  # stat'ed before any image is read: a later change is caught by stage 2
    ranges = [writer.shard_rows(s) for s in pending]
    done = len(writer.manifest.shards) - len(writer.pending_shards(0, 1))
    if done:
        log.info("%s: resuming, %d of %d shards already complete", path, done, len(writer.manifest.shards))
    indices = [kept[r] for start, stop in ranges for r in range(start, stop)]

    raw = cfg.decode == "gpu" and embedder.device.type == "cuda"
    views = RRCViews(cfg.views, spec.input_size, cfg.seed, spec.interpolation) if cfg.views else None
    dataset = ImageDataset(images, indices, spec.uint8_transform(), views=views, raw=raw)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=ShardBatchSampler([b - a for a, b in ranges], cfg.batch_size),
        num_workers=cfg.workers or 0, pin_memory=embedder.device.type == "cuda",
        collate_fn=collate_raw if raw else None, persistent_workers=False,
        prefetch_factor=4 if cfg.workers else None,
    )
    gpu_decoder = GpuDecoder(spec, embedder.device, images) if raw else None
    bg = ShardWriterThread(writer)
    row_shape = (d,) if cfg.views is None else (cfg.views, d)
    labels = np.asarray(kept_list.labels, dtype=np.int64)
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        all_pending = sum(b - a for a, b in map(writer.shard_rows, writer.pending_shards(0, 1)))
        bar = tqdm(total=all_pending, desc=f"{split} [{spec.name}]", unit="img", dynamic_ncols=True)
    shard_iter = iter(zip(pending, ranges))
    buf: _ShardBuffer | None = None
    t0 = time.perf_counter()
    written = 0
    seen = 0
    try:
        for idx, imgs, crops in loader:
            if idx.tolist() != indices[seen:seen + len(idx)]:  # cheap guard on the row <-> image mapping
                raise BuildError(f"{split}: the loader returned images {idx.tolist()[:4]}... where rows expect "
                                 f"{indices[seen:seen + 4]}...; this is a bug, please report it")
            seen += len(idx)
            if raw:
                imgs = gpu_decoder(idx, imgs)  # type: ignore[misc]
            b = len(idx)
            if cfg.views:
                emb = embedder(imgs.flatten(0, 1), cfg.dtype).reshape(b, cfg.views, d)
                crops_np = crops.numpy()
            else:
                emb, crops_np = embedder(imgs, cfg.dtype), None
            pos = 0
            while pos < b:
                if buf is None:
                    sid, (start, stop) = next(shard_iter)
                    buf = _ShardBuffer(sid, start, stop, row_shape, cfg.dtype, cfg.views)
                pos += buf.add(emb[pos:], None if crops_np is None else crops_np[pos:])
                if buf.full:
                    s, e = buf.start, buf.stop
                    cols = {IDENTITY_COLUMN: identities[s:e], **({CROPS_COLUMN: buf.crops} if buf.crops is not None else {})}
                    bg.submit(buf.shard_id, embeddings=buf.emb, index=np.asarray(kept[s:e], dtype=np.int64),
                              labels=labels[s:e], paths=list(kept_list.paths[s:e]), columns=cols)
                    written += e - s
                    buf = None
            if bar is not None:
                bar.update(min(b * world, bar.total - bar.n))  # other ranks progress at about the same rate
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{bar.n / el:.0f} img/s" if el > 0 else "")
    finally:
        bg.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    dist.barrier()
    if rank == 0:
        prov = {**split_prov, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        writer.finalize(prov)
    dist.barrier()
    result = SplitResult(split, path, len(kept), written, seconds, _dir_bytes(path), skipped)
    return result, fingerprint


def build_cache(cfg: BuildConfig) -> BuildResult:
    """Build (or resume) the cache described by ``cfg``; see the module docstring.

    Raises:
        teachers.MissingWeightsError: no weights file (the message says where it comes from).
        checkpoints.CheckpointError: the file does not fit the teacher.
        image_list.ImageListError, dataset.BadImageError, BuildError: data or option problems.
    """
    cfg = cfg.resolved()
    spec = resolve_spec(cfg.teacher, cfg.arch, cfg.prefix, cfg.embed_layer).with_sizes(cfg.input_size, cfg.resize_size)
    assert cfg.weights is not None and cfg.data is not None
    if not os.path.isfile(cfg.weights):  # before anything slow: say where the file goes
        raise MissingWeightsError(spec.missing_weights_message(cfg.weights))
    dist.init_from_env(cfg.device)
    try:
        device = _resolve_device(cfg.device)
        decode = "gpu" if cfg.decode == "gpu" and device.type == "cuda" else "cpu"  # what actually runs
        if cfg.decode == "gpu" and device.type != "cuda":
            log.warning("--decode gpu needs a CUDA device (this run uses %s): decoding on the CPU in %d DataLoader workers instead",
                        device, cfg.workers)
        splits = discover_splits(cfg.data, cfg.root)
        if cfg.splits:
            unknown = [s for s in cfg.splits if s not in splits]
            if unknown:
                raise BuildError(f"--splits {unknown}: {cfg.data} has splits {sorted(splits)}")
            splits = {s: splits[s] for s in cfg.splits}
        model, spec, report = load_teacher_spec(spec, cfg.weights, device)
        weights_sha = sha256_file(cfg.weights)
        identity = {
            "teacher": spec.name, "arch": spec.arch, "options": [list(o) for o in spec.options], "weights_sha256": weights_sha,
            "preprocessing": spec.preprocessing(), "views": cfg.views, "augment": cfg.augment,
            "seed": cfg.seed if cfg.views else None, "dtype": cfg.dtype, "decode": decode,
        }
        provenance = {
            "teacher": spec.name, "arch": spec.arch, "embed_dim": spec.embed_dim, "weights": os.path.abspath(cfg.weights),
            "weights_sha256": weights_sha, "weights_layout": report.layout, "preprocessing": spec.preprocessing(),
            "views": cfg.views, "augment": cfg.augment, "seed": cfg.seed, "decode": decode, "package_version": package_version(),
            "torch_version": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "world_size": dist.world_size(),
        }
        if dist.rank() == 0:
            os.makedirs(cfg.out, exist_ok=True)
            with open(os.path.join(cfg.out, CONFIG_NAME), "w", encoding="utf-8") as f:
                json.dump({"config": cfg.to_json(), "teacher_spec": {"name": spec.name, "arch": spec.arch, "embed_dim": spec.embed_dim,
                           "preprocessing": spec.preprocessing(), "layout": report.layout}, "weights_sha256": weights_sha}, f, indent=2)
        embedder = Embedder(model, spec, device, cfg.amp, cfg.compile)
        results: dict[str, SplitResult] = {}
        fingerprints: dict[str, str] = {}
        for split, images in splits.items():
            results[split], fingerprints[split] = _build_split(split, images, cfg, spec, embedder, identity, provenance)
        result = BuildResult(results, None, fingerprints)
        if dist.rank() == 0:
            for r in results.values():
                log.info("%s: %d images (%d computed here) in %.1f s, %.1f img/s, %.2f MiB on disk%s", r.path, r.images,
                         r.rows_written, r.seconds, r.images_per_second, r.bytes / 2**20,
                         f", {len(r.skipped)} unreadable images skipped (listed in the manifest)" if r.skipped else "")
            if cfg.knn and "train" in results and "val" in results and not cfg.views:
                result.knn_top1 = _knn_top1(storage.open_store(results["train"].path), storage.open_store(results["val"].path))
                if result.knn_top1 is not None:
                    log.info("sanity check: teacher 1-NN accuracy on val against train = %.2f %%", 100 * result.knn_top1)
            with open(os.path.join(cfg.out, SUMMARY_NAME), "w", encoding="utf-8") as f:
                json.dump({"splits": {k: {**dataclasses.asdict(v), "images_per_second": v.images_per_second} for k, v in results.items()},
                           "knn_top1": result.knn_top1}, f, indent=2)
        dist.barrier()
        return result
    finally:
        dist.shutdown()
