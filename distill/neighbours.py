"""The teacher neighbour table of a cache: for every train row, its top-K teacher neighbours.

Used by ``--bank static-faiss``: with a cache, every training image's teacher vector is known,
so the anchors of a query can be its nearest teacher neighbours over the *whole* train split
instead of a FIFO queue of recent batches.

On disk, next to the cache's split stores (``CACHE/neighbours-k{K}/``)::

    neighbours.json        manifest: format, K, N, D, block size, fingerprint of the cache
                           (Store.content_fingerprint), backend, complete flag; rewritten atomically
    block-00000.npy ...    partial results, one per block of query rows, each written
                           atomically (temp name + rename); deleted once the table is complete
    neighbours.npy         (N, K) int32, written atomically when all blocks are done

Neighbours are found with an exact inner-product search (``distill.topk.search``: FAISS flat
index, on the GPU when faiss-gpu sees one; ties by the smaller row), ``K + 1`` per query,
minus the query itself. A kill leaves whole blocks only; rerunning resumes at the first missing
block. A table whose fingerprint does not match the cache is refused (``recompute=True``
clears it and starts over), never mixed with new blocks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.topk import resolve_backend, search
from storage import open_store
from storage.atomic import write_atomic
from storage.errors import CompressError, UsageError
from storage.location import resolve_location

log = logging.getLogger(__name__)
FORMAT = "compress-neighbours/2"  # 2: the cache fingerprint is Store.content_fingerprint()
MANIFEST = "neighbours.json"
TABLE = "neighbours.npy"


class NeighboursMismatchError(CompressError, ValueError):
    """The neighbour table on disk was computed from another cache (or with other settings)."""


class NeighboursMissingError(CompressError, FileNotFoundError):
    """No complete neighbour table for this cache and K."""


@dataclass(frozen=True)
class NeighbourTable:
    """``rows`` ``(N, K)`` int32: row i holds the K nearest other train rows of row i (by teacher
    inner product, nearest first)."""

    path: str
    rows: np.ndarray
    fingerprint: str

    @property
    def k(self) -> int:
        return self.rows.shape[1]


def neighbour_dir(store_path: str, k: int) -> str:
    """``CACHE/neighbours-k{K}`` for the train store ``CACHE/train`` (beside the split stores)."""
    parent = os.path.dirname(os.path.abspath(store_path.rstrip("/")))
    return os.path.join(parent, f"neighbours-k{k}")




def drop_self(index: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Remove each query's own row from its ``K + 1`` neighbours.

    Args:
        index: ``(Q, K + 1)`` neighbour rows, nearest first.
        query_rows: ``(Q,)`` the queries' own rows.
    Returns:
        ``(Q, K)``: ``index`` without the query's row (without the last entry where the row is
        absent, which happens when duplicates of the query with smaller rows tie with it).
    """
    keep = index != query_rows[:, None]
    absent = keep.all(axis=1)
    keep[absent, -1] = False
    return index[keep].reshape(index.shape[0], index.shape[1] - 1)


def _block_name(b: int) -> str:
    return f"block-{b:05d}.npy"


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, array))


def _read_manifest(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise NeighboursMismatchError(f"{path}: unreadable neighbour manifest ({e}); pass recompute=True (--recompute)") from None
    if manifest.get("format") != FORMAT:
        raise NeighboursMismatchError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    resolve_location(directory).write_bytes_atomic(MANIFEST, json.dumps(manifest, indent=2).encode())


def _clear(directory: str) -> None:
    for name in os.listdir(directory):
        if name == MANIFEST or name == TABLE or name.startswith("block-") or ".tmp-" in name:
            os.remove(os.path.join(directory, name))


def _check(manifest: dict[str, Any], wanted: dict[str, Any], directory: str) -> None:
    for key in ("fingerprint", "k", "n", "dim", "block_rows"):
        if manifest.get(key) != wanted[key]:
            raise NeighboursMismatchError(
                f"{directory}: neighbour table has {key} = {manifest.get(key)!r} but the cache {wanted['cache']} needs "
                f"{wanted[key]!r} (the cache changed since it was computed); rerun with --recompute "
                f"(compress-distill neighbours --cache ... --k {wanted['k']} --recompute) or delete {directory}"
            )


def compute_neighbours(
    cache_store: str,
    k: int,
    *,
    block_rows: int = 8192,
    database_block: int = 131072,
    recompute: bool = False,
    embeddings: np.ndarray | None = None,
    on_block: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] | None = None,
) -> NeighbourTable:
    """Compute (or resume, or reuse) the top-``k`` teacher neighbour table of a train store.

    Args:
        cache_store: path of the train store (``CACHE/train``).
        k: neighbours per row, excluding the row itself; ``1 <= k < N``.
        block_rows: query rows per resumable block (the unit of atomic partial results).
        database_block: database rows per search block (bounds the fp32 copy FAISS needs).
        recompute: discard a table (complete or partial) computed from another cache or with
            other settings, instead of refusing it.
        embeddings: the store's rows ``(N, D)`` already in memory (else loaded here).
        on_block: called as ``on_block(block, num_blocks)`` after each block is written.
        shard: ``(rank, world)``: under several processes (torchrun), every process calls this
            with its own rank, computes the missing blocks ``b`` with ``b % world == rank`` and
            waits at ``barrier``; rank 0 alone writes the manifest and assembles the table.
        barrier: waits for all ``world`` processes (``torch.distributed.barrier``); required
            when ``world > 1``.
    Returns:
        The complete table.
    Raises:
        UsageError: ``k`` out of range or a multi-view cache; NeighboursMismatchError: a table of another cache
        exists and ``recompute`` is False.
    """
    store = open_store(cache_store)
    store.require_complete("computing neighbours")
    n, dim = store.n, store.d
    if store.views is not None:
        raise UsageError(f"{store.path}: multi-view caches are not supported by the neighbour table")
    if not 1 <= k < n:
        raise UsageError(f"--neighbours/--k must be in [1, {n - 1}] for {store.path} ({n} rows), got {k}")
    if block_rows < 1:
        raise UsageError(f"block_rows must be >= 1, got {block_rows}")
    rank, world = shard
    if not 0 <= rank < world:
        raise UsageError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    if world > 1 and barrier is None:
        raise UsageError("computing neighbours on several processes needs a barrier")
    wait = barrier or (lambda: None)
    directory = neighbour_dir(store.path, k)
    wanted = {"format": FORMAT, "k": k, "n": n, "dim": dim, "block_rows": block_rows, "fingerprint": store.content_fingerprint(),
              "cache": store.path, "metric": "ip", "complete": False}
    # every rank reads and checks the same files, so a refusal is raised on all of them alike
    # (no rank is left waiting at a barrier); only rank 0 writes
    manifest = _read_manifest(directory) if os.path.isdir(directory) else None
    stale = False
    if manifest is not None:
        try:
            _check(manifest, wanted, directory)
        except NeighboursMismatchError:
            if not recompute:
                raise
            stale = True
    if manifest is not None and manifest.get("complete") and not stale:
        return load_neighbours(cache_store, k)
    backend, device = resolve_backend("auto", "auto", k=k + 1)
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        if stale:
            log.info("%s: computed from another cache or with other settings; recomputing", directory)
        if manifest is None or stale:
            _clear(directory)
        _write_manifest(directory, {**wanted, "backend": backend, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    wait()  # the directory is clean and claimed before any rank writes a block
    emb = store.load_all() if embeddings is None else embeddings
    if emb.shape != (n, dim):
        raise ValueError(f"embeddings have shape {emb.shape}, the store {store.path} holds ({n}, {dim})")
    num_blocks = -(-n // block_rows)
    t0 = time.perf_counter()
    for b in range(rank, num_blocks, world):
        path = os.path.join(directory, _block_name(b))
        if os.path.exists(path):
            continue
        start, stop = b * block_rows, min(n, (b + 1) * block_rows)
        queries = np.asarray(emb[start:stop], dtype=np.float32)
        blocks = ((s, np.asarray(emb[s:s + database_block], dtype=np.float32)) for s in range(0, n, database_block))
        _, index = search(queries, blocks, k + 1, metric="ip", backend=backend, device=device, database_block=database_block)
        _save_npy_atomic(path, drop_self(index, np.arange(start, stop)).astype(np.int32))
        log.info("neighbours block %d/%d (%.1f s%s)", b + 1, num_blocks, time.perf_counter() - t0, f", rank {rank}" if world > 1 else "")
        if on_block is not None:
            on_block(b, num_blocks)
    wait()  # every block is on disk
    if rank == 0:
        _assemble(directory, wanted, backend, n, k, block_rows, num_blocks, time.perf_counter() - t0)
    wait()
    return load_neighbours(cache_store, k)


def _assemble(directory: str, wanted: dict[str, Any], backend: str, n: int, k: int, block_rows: int, num_blocks: int,
              seconds: float) -> None:
    """Join the blocks into ``neighbours.npy`` (atomically), mark the manifest complete and
    delete the blocks, in that order (a kill at any point leaves a resumable directory)."""
    def write(f: Any) -> None:  # the .npy header, then the blocks' rows in order (one block in memory at a time)
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                                                 "fortran_order": False, "shape": (n, k)})
        for b in range(num_blocks):
            part = np.load(os.path.join(directory, _block_name(b)))
            if part.shape != (min(n, (b + 1) * block_rows) - b * block_rows, k):
                raise NeighboursMismatchError(f"{directory}/{_block_name(b)}: shape {part.shape} does not fit block {b} of ({n}, {k}); "
                                              "pass --recompute")
            f.write(np.ascontiguousarray(part, dtype=np.int32).tobytes())

    write_atomic(os.path.join(directory, TABLE), write)
    _write_manifest(directory, {**wanted, "backend": backend, "complete": True, "seconds": round(seconds, 3)})
    for b in range(num_blocks):
        os.remove(os.path.join(directory, _block_name(b)))


def load_neighbours(cache_store: str, k: int, mmap: bool = False) -> NeighbourTable:
    """The complete table of ``cache_store`` for ``k``, checked against the cache.

    Raises:
        NeighboursMissingError: no complete table (run ``compress-distill neighbours``).
        NeighboursMismatchError: the table was computed from another cache.
    """
    store = open_store(cache_store)
    directory = neighbour_dir(store.path, k)
    manifest = _read_manifest(directory)
    if manifest is None or not manifest.get("complete"):
        raise NeighboursMissingError(f"{directory}: no complete neighbour table for k = {k}; run compress-distill neighbours --cache ... --k {k}")
    _check(manifest, {**manifest, "fingerprint": store.content_fingerprint(), "k": k, "n": store.n, "dim": store.d, "cache": store.path}, directory)
    path = os.path.join(directory, TABLE)
    rows = np.load(path, mmap_mode="r" if mmap else None)
    if rows.shape != (store.n, k) or rows.dtype != np.int32:
        raise NeighboursMismatchError(f"{path}: shape {rows.shape} {rows.dtype}, expected ({store.n}, {k}) int32")
    return NeighbourTable(directory, rows, manifest["fingerprint"])


def ensure_neighbours(cache_store: str, k: int, **kw: Any) -> NeighbourTable:
    """``load_neighbours`` if a matching complete table exists, else ``compute_neighbours``
    (resuming a partial one; ``kw`` as there, e.g. ``shard`` and ``barrier`` on several
    processes). A table of another cache is refused, not recomputed."""
    try:
        return load_neighbours(cache_store, k)
    except NeighboursMissingError:
        return compute_neighbours(cache_store, k, **kw)
