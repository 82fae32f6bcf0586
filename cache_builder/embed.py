"""The one embedding pipeline: run a frozen network over a listing of images into a store.

    loader batches ``(index, images, crops)``  ->  [optional device-side decode]
      -> network on the device (eval, inference_mode, channels_last + autocast on GPU)
      -> L2-normalise (optional) -> store dtype -> whole shards in a background writer thread

``embed_shards`` fills the shards it is given in order and never lets a batch cross a shard
boundary (``shard_loader`` cuts batches at shard starts), so a store resumed shard by shard is
byte-identical to one written in one go. The caller creates or resumes the store, picks the
pending shards, and finalises it. Callers: ``compress-cache build`` (``cache_builder.build``),
``compress-eval features`` (``evaluate.features``) and the demo's raw-pixel baseline.
See docs/architecture.md (the data flow) and docs/cache.md (the store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cache_builder.transforms import normalize_batch
from storage import StoreWriter
from storage.errors import CompressError

CROPS_COLUMN = "crops"


class EmbedError(CompressError):
    """The loader and the store rows disagree (a bug in the caller, not in the data)."""


@dataclass(frozen=True)
class StoreRows:
    """What every row of a store is, in store order (``N`` rows).

    Attributes:
        index: ``(N,)`` int64 dataset index of each row (what the loader yields as ``index``).
        labels: ``(N,)`` int64 labels (-1 unknown).
        paths: ``N`` image paths (relative), one per row.
        columns: extra per-row columns written as they are, ``{name: (N, *shape)}`` (e.g. the
            content identity of each image).
    """

    index: np.ndarray
    labels: np.ndarray
    paths: Sequence[str]
    columns: dict[str, np.ndarray] | None = None


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


def cast_weights_(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model``'s floating parameters to ``dtype`` in place, except those of normalisation
    layers (BatchNorm / LayerNorm / GroupNorm keep float32, as autocast expects); buffers (RoPE
    tables, BN statistics) are left as they are. Done on the CPU before moving a large teacher to
    the GPU, so that a ViT-g never holds float32 weights there. Returns ``model``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORMS):
                continue
            for name, p in list(module.named_parameters(recurse=False)):
                if p.is_floating_point() and p.dtype != dtype:
                    setattr(module, name, torch.nn.Parameter(p.to(dtype), requires_grad=p.requires_grad))
    return model


class Embedder:
    """A frozen network: image batch -> ``(B, D)`` embeddings in the store dtype (numpy, host).

    uint8 batches ``(B, 3, S, S)`` are scaled to [0, 1] and normalised with ``mean``/``std`` on
    the device (``transforms.normalize_batch``); float batches are taken as preprocessed.
    ``l2=True`` returns unit-norm rows. The forward runs under ``torch.inference_mode`` and, on
    CUDA with ``amp``, bf16 (fp16 where bf16 is unsupported) autocast; on the CPU it is float32.
    ``low_precision_weights`` (ViT / timm teachers): on CUDA with ``amp``, the weights are cast to
    the autocast dtype on the host before they are moved (``cast_weights_``).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, amp: bool = True, compile: bool = False, l2: bool = True,
                 low_precision_weights: bool = False) -> None:
        self.device = torch.device(device)
        self.mean, self.std, self.l2 = mean, std, l2
        self.channels_last = self.device.type == "cuda"
        self.amp_dtype = None
        if amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if low_precision_weights and self.amp_dtype is not None:
            cast_weights_(model, self.amp_dtype)
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        self.model = torch.compile(model) if compile else model

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, dtype: str) -> np.ndarray:
        """``(B, C, H, W)`` uint8 or float (any device) -> ``(B, D)`` ``dtype`` numpy array."""
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = normalize_batch(x, self.mean, self.std)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                out = self.model(x)
        else:
            out = self.model(x)
        if out.dim() != 2:
            raise EmbedError(f"the network returned embeddings of shape {tuple(out.shape)}; expected (B, D)")
        out = out.float()
        if self.l2:
            out = F.normalize(out, dim=1)
        return out.to(getattr(torch, dtype)).cpu().numpy()

    def probe_dim(self, images: torch.Tensor) -> int:
        """The embedding dimension D, from one batch."""
        return int(self(images[:1], "float32").shape[1])


class ShardWriterThread:
    """Writes whole shards in one background thread; at most ``max_pending`` shards queued,
    so memory stays bounded and the forward never waits on disk unless disk is the bound."""

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self.pending: list[Future[Any]] = []
        self.wait_seconds = 0.0

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``write(*args, **kwargs)``; tasks run one at a time, in the order submitted."""
        while len(self.pending) >= self.max_pending:
            t = time.perf_counter()
            self.pending.pop(0).result()
            self.wait_seconds += time.perf_counter() - t
        self.pending.append(self.pool.submit(write, *args, **kwargs))

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)


class _ShardBuffer:
    """Rows of one shard being filled, in store order."""

    def __init__(self, shard_id: int, start: int, stop: int, row_shape: tuple[int, ...], dtype: str, crop_shape: tuple[int, ...] | None) -> None:
        self.shard_id, self.start, self.stop = shard_id, start, stop
        self.emb = np.empty((stop - start, *row_shape), dtype=dtype)
        self.crops = np.empty((stop - start, *crop_shape), dtype=np.float32) if crop_shape else None
        self.copies: list[Any] = []
        self.filled = 0

    def add(self, emb: np.ndarray, crops: np.ndarray | None, copies: Sequence[Any] | None) -> int:
        """Append rows; returns how many were taken (the rest belong to the next shard)."""
        take = min(len(emb), len(self.emb) - self.filled)
        self.emb[self.filled:self.filled + take] = emb[:take]
        if self.crops is not None and crops is not None:
            self.crops[self.filled:self.filled + take] = crops[:take]
        if copies is not None:
            self.copies += copies[:take]
        self.filled += take
        return take

    @property
    def full(self) -> bool:
        return self.filled == len(self.emb)


def shard_loader(dataset: Any, writer: StoreWriter, shards: Sequence[int], batch_size: int,
                 workers: int, *, pin_memory: bool = False, collate_fn: Callable[..., Any] | None = None) -> torch.utils.data.DataLoader[Any]:
    """A DataLoader over the map-style ``dataset`` (whose items are the rows of ``shards``, in
    order, as ``(index, image, crops)``) whose batches start at every shard start
    (``cache_builder.dataset.ShardBatchSampler``)."""
    from cache_builder.dataset import ShardBatchSampler

    lengths = [b - a for a, b in map(writer.shard_rows, shards)]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=ShardBatchSampler(lengths, batch_size), num_workers=workers, pin_memory=pin_memory,
        collate_fn=collate_fn, persistent_workers=False, prefetch_factor=4 if workers else None,
    )


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar (``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def embed_shards(writer: StoreWriter, shards: Sequence[int], batches: Iterable[tuple[Any, ...]],
                 embedder: Callable[[torch.Tensor, str], np.ndarray], rows: StoreRows, *,
                 decode: Callable[[torch.Tensor, Any], torch.Tensor] | None = None, bar: Any = None, bar_scale: int = 1,
                 write_copies: Callable[[int, list[Any]], None] | None = None) -> int:
    """Embed the rows of ``shards`` and write each shard whole; returns the rows written.

    Args:
        batches: ``(index (B,), images, crops)`` in the order of the shards' rows, never crossing
            a shard (see ``shard_loader``). ``images`` is ``(B, C, H, W)``, or ``(B, V, C, H, W)``
            for a store of ``V`` views (``crops`` then ``(B, V, 5)``, written to column ``crops``).
        embedder: ``(images, dtype) -> (B', D)`` numpy rows (an ``Embedder``).
        rows: the store's rows; ``index`` checks that the loader yields the images rows expect.
        decode: ``(index, raw batch) -> images`` applied before the network (GPU decoding).
        bar / bar_scale: a progress bar advanced by ``bar_scale`` x the batch size (other ranks).
        write_copies: ``(shard_id, items)`` writer of the pre-resized copy (``compress-cache build
            --pixels``); batches then carry a fourth element, a list of one item per image, and a
            shard's copy is written before the store shard is marked complete.
    Raises:
        EmbedError: the loader returned other images than the rows expect, or too many.
    """
    manifest = writer.manifest
    dtype, views, d = manifest.dtype, manifest.views, manifest.d
    row_shape = (d,) if views is None else (views, d)
    crop_spec = manifest.columns.get(CROPS_COLUMN)
    ranges = [writer.shard_rows(s) for s in shards]
    expected = np.concatenate([rows.index[a:b] for a, b in ranges]) if ranges else np.empty(0, np.int64)
    shard_iter = iter(zip(shards, ranges))
    buf: _ShardBuffer | None = None
    bg = ShardWriterThread()
    written = seen = 0
    t0 = time.perf_counter()
    try:
        for batch in batches:
            idx, imgs, crops = batch[:3]
            copies = batch[3] if write_copies is not None else None
            b = len(idx)
            if not np.array_equal(np.asarray(idx), expected[seen:seen + b]):  # cheap guard on the row <-> image mapping
                raise EmbedError(f"{writer.path}: the loader returned images {np.asarray(idx)[:4].tolist()}... where rows expect "
                                 f"{expected[seen:seen + 4].tolist()}...; this is a bug, please report it")
            seen += b
            if decode is not None:
                imgs = decode(idx, imgs)
            if views:
                emb = embedder(imgs.flatten(0, 1), dtype).reshape(b, views, d)
            else:
                emb = embedder(imgs, dtype)
            crops_np = crops.numpy() if crop_spec is not None else None
            pos = 0
            while pos < b:
                if buf is None:
                    sid, (start, stop) = next(shard_iter)
                    buf = _ShardBuffer(sid, start, stop, row_shape, dtype, crop_spec.shape if crop_spec else None)
                pos += buf.add(emb[pos:], None if crops_np is None else crops_np[pos:], None if copies is None else copies[pos:])
                if buf.full:
                    s, e = buf.start, buf.stop
                    cols = {k: v[s:e] for k, v in (rows.columns or {}).items()}
                    if buf.crops is not None:
                        cols[CROPS_COLUMN] = buf.crops
                    if write_copies is not None:
                        bg.submit(write_copies, buf.shard_id, buf.copies)
                    bg.submit(writer.write_shard, buf.shard_id, embeddings=buf.emb, index=rows.index[s:e], labels=rows.labels[s:e],
                              paths=list(rows.paths[s:e]), columns=cols or None)
                    written += e - s
                    buf = None
            if bar is not None:
                bar.update(min(b * bar_scale, bar.total - bar.n))
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{bar.n / el:.0f} img/s" if el > 0 else "")
    finally:
        bg.close()
        if bar is not None:
            bar.close()
    if seen != len(expected):
        raise EmbedError(f"{writer.path}: the loader returned {seen} images for {len(expected)} rows; this is a bug, please report it")
    return written
