"""Exact, deterministic blockwise top-k search with a running merge (memory stays bounded).

Shared by ``distill.neighbours`` (teacher neighbour tables) and ``evaluate.knn``; it lives in
``distill`` because ``evaluate`` may import ``distill`` but not the other way (docs/architecture.md, "Packages").

Neighbours are ordered by score (higher is nearer), ties by the smaller database index. This
total order makes every backend (torch on CPU/GPU, FAISS) return the same neighbours, ties
included, whatever the block sizes. Scores: ``"l2"`` uses minus the squared L2 distance,
``"ip"`` the inner product (cosine for L2-normalised rows).

The structure follows faiss ``contrib/exhaustive_search.py``: the database is visited in
blocks, each block's top-k candidates are merged into the running result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch

from storage.errors import UsageError, unknown_name

Metric = Literal["l2", "ip"]
Backend = Literal["auto", "torch", "faiss"]
METRICS = ("l2", "ip")
BACKENDS = ("auto", "torch", "faiss")
FAISS_GPU_MAX_K = 2048  # faiss-gpu's k-selection limit


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(N, D)`` scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def merge_topk(
    scores_a: torch.Tensor, index_a: torch.Tensor, scores_b: torch.Tensor, index_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two candidate lists per query into the best ``k``, ordered (score desc, index asc).

    Args:
        scores_a, index_a: ``(Q, Ka)`` float32 / int64.
        scores_b, index_b: ``(Q, Kb)``.
    Returns:
        ``(Q, min(k, Ka + Kb))`` scores and indices.
    """
    scores = torch.cat([scores_a, scores_b], dim=1)
    index = torch.cat([index_a, index_b], dim=1)
    by_index = torch.argsort(index, dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, by_score), index.gather(1, by_score)


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` columns of each row of ``scores`` ``(Q, N)``, ties at the k-th value resolved
    towards smaller column numbers; returned ordered (score desc, column asc).

    ``torch.topk`` alone picks arbitrarily among equal values at the boundary. It is asked for
    ``k + 1`` values; rows whose k-th and (k+1)-th values tie (rare with real features) are
    redone with the explicit rule.
    """
    k = min(k, scores.shape[1])
    probe = min(k + 1, scores.shape[1])
    values, cols = torch.topk(scores, probe, dim=1)
    tied_rows = (values[:, k - 1] == values[:, k]).nonzero().flatten() if probe > k else torch.empty(0, dtype=torch.long)
    values, cols = values[:, :k].contiguous(), cols[:, :k].contiguous()
    if tied_rows.numel():
        sub = scores[tied_rows]
        sub_kth = values[tied_rows, k - 1:k]
        above = sub > sub_kth
        equal = sub == sub_kth
        room = k - above.sum(dim=1, keepdim=True)
        keep = above | (equal & (equal.cumsum(dim=1) <= room))
        sub_cols = torch.topk(keep.to(torch.int8), k, dim=1).indices
        values[tied_rows] = sub.gather(1, sub_cols)
        cols[tied_rows] = sub_cols
    order = torch.argsort(cols, dim=1)
    values, cols = values.gather(1, order), cols.gather(1, order)
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    return values.gather(1, order), cols.gather(1, order)


def _torch_block_scores(queries: torch.Tensor, block: torch.Tensor, metric: Metric, block_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``(Q, B)`` ranking scores of ``queries`` ``(Q, D)`` against ``block`` ``(B, D)``.

    ``ip``: the inner product. ``l2``: ``2 q.x - |x|^2``, i.e. minus the squared distance
    up to the per-query constant ``|q|^2`` (added back by ``_l2_offset`` after selection).
    """
    if metric == "ip":
        return queries @ block.T
    if block_sq is None:
        block_sq = (block * block).sum(dim=1)
    return torch.addmm(-block_sq[None, :], queries, block.T, alpha=2.0)


def _l2_offset(queries: torch.Tensor) -> torch.Tensor:
    """``(Q, 1)`` ``-|q|^2``: turns ``2 q.x - |x|^2`` into minus the squared distance."""
    return -(queries * queries).sum(dim=1, keepdim=True)


def cuda_index(device: str) -> int:
    """The GPU number of a ``cuda`` / ``cuda:N`` device string (``cuda``: torch's current device,
    which torchrun ranks set to their own GPU)."""
    _, _, number = device.partition(":")
    return int(number) if number else torch.cuda.current_device()


def _faiss_index(block: np.ndarray, metric: Metric, gpu: int | None):
    """A flat FAISS index holding ``block`` ``(B, D)``, on GPU ``gpu`` unless it is None."""
    import faiss

    index: Any = faiss.IndexFlatIP(block.shape[1]) if metric == "ip" else faiss.IndexFlatL2(block.shape[1])
    if gpu is not None:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)
    index.add(block)
    return index


def _faiss_block_topk(index, queries: np.ndarray, block: np.ndarray, k: int, metric: Metric) -> tuple[torch.Tensor, torch.Tensor]:
    """FAISS flat search of ``queries`` ``(Q, D)`` in ``index`` holding ``block`` ``(B, D)``;
    rows whose ``k``-th and ``k+1``-th results tie are recomputed with torch so the tie rule
    holds."""
    probe = min(k + 1, block.shape[0])
    dist, idx = index.search(queries, probe)
    scores = torch.from_numpy(dist if metric == "ip" else -dist)
    cols = torch.from_numpy(idx)
    kk = min(k, block.shape[0])
    if probe > kk:
        tied = (scores[:, kk - 1] == scores[:, kk]).nonzero().flatten()
    else:
        tied = torch.empty(0, dtype=torch.long)
    scores, cols = scores[:, :kk].contiguous(), cols[:, :kk].contiguous()
    # FAISS orders equal scores arbitrarily: impose (score desc, index asc) inside the list
    order = torch.argsort(cols, dim=1)
    scores, cols = scores.gather(1, order), cols.gather(1, order)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    scores, cols = scores.gather(1, order), cols.gather(1, order)
    if tied.numel():
        q = torch.from_numpy(queries[tied.numpy()])
        s, c = select_topk(_torch_block_scores(q, torch.from_numpy(block), metric), kk)
        scores[tied], cols[tied] = (s + _l2_offset(q) if metric == "l2" else s), c
    return scores, cols


def faiss_gpu_count() -> int:
    """GPUs FAISS can use (0 without faiss-gpu, or without faiss at all)."""
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def resolve_backend(backend: str = "auto", device: str | None = "auto", *, k: int | None = None) -> tuple[str, str]:
    """``(backend, device)`` a search or a k-means actually runs with: the one backend choice of
    ``distill.neighbours``, ``evaluate.knn`` and ``evaluate.cluster``.

    Args:
        backend: ``auto``, ``faiss`` or ``torch``.
        device: ``auto`` / None (``cache_builder.devices.resolve_device``: this process's GPU
            when CUDA is available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        k: neighbours per query, when known: faiss-gpu selects at most ``FAISS_GPU_MAX_K``.
    Returns:
        ``auto`` picks FAISS on the CPU, FAISS on a CUDA device when faiss-gpu is installed
        (and ``k`` is within its limit), torch on a CUDA device otherwise. (On CPU the two are
        within about 2x of each other in ``bench/knn.py``, FAISS ahead at D = 128, torch at
        D = 2048; all backends return the same neighbours, see the module doc.)
    Raises:
        UsageError: an unknown backend, or ``faiss`` on a CUDA device without faiss-gpu.
    """
    from cache_builder.devices import resolve_device

    if backend not in BACKENDS:
        raise UsageError("--backend: " + unknown_name("search backend", str(backend), BACKENDS))
    device = str(resolve_device("auto" if device is None else device))
    if not device.startswith("cuda"):
        return ("faiss" if backend == "auto" else backend), device
    gpus = faiss_gpu_count()
    if backend == "auto":
        return ("faiss" if gpus > 0 and (k is None or k <= FAISS_GPU_MAX_K) else "torch"), device
    if backend == "faiss" and gpus == 0:
        raise UsageError("--backend faiss on a CUDA device needs faiss-gpu; use --backend torch (or auto)")
    if backend == "faiss" and k is not None and k > FAISS_GPU_MAX_K:
        raise UsageError(f"--backend faiss on a CUDA device selects at most {FAISS_GPU_MAX_K} neighbours, got k = {k}; "
                         "use --backend torch (or auto)")
    return backend, device


def iter_blocks(database: np.ndarray, block_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, rows)`` blocks of an in-memory database ``(N, D)``."""
    for start in range(0, database.shape[0], block_size):
        yield start, database[start:start + block_size]


def search(
    queries: np.ndarray,
    database: np.ndarray | Iterable[tuple[int, np.ndarray]],
    k: int,
    *,
    metric: Metric = "l2",
    backend: str = "auto",
    device: str | None = None,
    query_block: int | None = None,
    database_block: int = 131072,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every query, deterministic ties (see module docstring).

    Args:
        queries: ``(Q, D)`` float32.
        database: ``(N, D)`` float32, or an iterable of ``(offset, (B, D) rows)`` blocks in
            increasing offset order (to stream a database that does not fit in memory).
        k: neighbours per query; must not exceed the database size.
        metric: ``"l2"`` or ``"ip"``.
        backend: ``"torch"``, ``"faiss"`` or ``"auto"``.
        device: torch device for the torch backend (default: CUDA when available).
        query_block: queries per block (default 1024 for torch, whose score block is
            ``query_block x database_block`` floats, and 8192 for FAISS, which blocks itself).
        database_block: database rows per block.
    Returns:
        ``(Q, k)`` float32 scores (minus squared distance for l2) and ``(Q, k)`` int64 indices.
    Raises:
        ValueError: bad shapes, ``k`` < 1, ``k`` larger than the database, unknown options.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if (query_block is not None and query_block < 1) or database_block < 1:
        raise ValueError("query_block and database_block must be >= 1")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"queries must be (Q, D), got shape {queries.shape}")
    if isinstance(database, np.ndarray):
        if database.ndim != 2:
            raise ValueError(f"database must be (N, D), got shape {database.shape}")
        if k > database.shape[0]:
            raise ValueError(f"k = {k} is larger than the database ({database.shape[0]} rows)")
        blocks: Iterable[tuple[int, np.ndarray]] = iter_blocks(database, database_block)
    else:
        blocks = database
    backend, device = resolve_backend(backend, device, k=k)
    if query_block is None:
        query_block = 1024 if backend == "torch" else 8192
    q_count = queries.shape[0]
    best_s = torch.full((q_count, k), float("-inf"))
    best_i = torch.full((q_count, k), -1, dtype=torch.long)
    seen = 0
    for offset, block in blocks:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != queries.shape[1]:
            raise ValueError(f"database rows have shape {block.shape[1:]}, queries have dimension {queries.shape[1]}")
        block_t = torch.from_numpy(block).to(device) if backend == "torch" else None
        block_sq = (block_t * block_t).sum(dim=1) if block_t is not None and metric == "l2" else None
        index = _faiss_index(block, metric, cuda_index(device) if device.startswith("cuda") else None) if backend == "faiss" else None
        for q0 in range(0, q_count, query_block):
            q = queries[q0:q0 + query_block]
            if block_t is not None:  # the torch backend
                q_t = torch.from_numpy(q).to(device)
                s, c = select_topk(_torch_block_scores(q_t, block_t, metric, block_sq), k)
                if metric == "l2":
                    s = s + _l2_offset(q_t)
                s, c = s.cpu(), c.cpu()
            else:
                s, c = _faiss_block_topk(index, q, block, k, metric)
            s, i = merge_topk(best_s[q0:q0 + query_block], best_i[q0:q0 + query_block], s, c + offset, k)
            best_s[q0:q0 + query_block], best_i[q0:q0 + query_block] = s, i
        seen += block.shape[0]
    if k > seen:
        raise ValueError(f"k = {k} is larger than the database ({seen} rows)")
    return best_s.numpy(), best_i.numpy()
