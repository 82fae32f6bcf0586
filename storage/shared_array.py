"""One copy of a store's embeddings per node, shared by every process through the page cache.

``load_shared`` materialises the store once into a plain ``.npy`` file (under a file lock,
atomically: temp name + rename) and returns a read-only memory map of it. Every DDP rank on
the node calls the same function; the first one builds the file, the others wait on the lock
and then map the same file, so a 21 GB cache costs 21 GB of page cache on the node, not 21 GB
per rank. The file name carries a fingerprint of the shard checksums, so a rebuilt store
never maps a stale copy.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np

from storage.file_lock import exclusive_lock

if TYPE_CHECKING:
    import torch

    from storage.reader import Store


def shared_file_name(store: Store) -> str:
    """``rows-<16 hex>.npy``, a function of ``Store.content_fingerprint`` (i.e. of the content)."""
    return f"rows-{store.content_fingerprint().removeprefix('sha256:')[:16]}.npy"


def load_shared(
    store: Store, cache_dir: str | None = None, kind: Literal["numpy", "torch"] = "numpy"
) -> np.ndarray | torch.Tensor:
    """Memory-mapped ``(N, D)`` / ``(N, V, D)`` embeddings shared node-wide.

    Args:
        cache_dir: where to put the ``.npy`` copy; default: inside the store directory
            (required for stores that are not on local disk).
        kind: ``"numpy"`` gives a read-only ``np.memmap``; ``"torch"`` gives a CPU tensor over
            a copy-on-write map (reads share pages; writes stay private to the process).
    """
    store.require_complete("loading a shared copy")
    directory = cache_dir or store.location.local_path()
    if directory is None:
        raise ValueError(f"{store.path}: the store is not on local disk; pass cache_dir= for the shared copy")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, shared_file_name(store))
    if not os.path.exists(path):
        with exclusive_lock(path + ".lock"):
            if not os.path.exists(path):
                _materialise(store, path)
    if kind == "numpy":
        return np.load(path, mmap_mode="r")
    if kind != "torch":
        raise ValueError(f"kind must be 'numpy' or 'torch', got {kind!r}")
    import torch

    array = np.load(path, mmap_mode="c")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(array)


def _materialise(store: Store, path: str) -> None:
    """Write the ``.npy`` copy at ``path`` atomically (checksums verified as it is read)."""
    from storage.atomic import write_path_atomic

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=store.dtype, shape=store.shape)
        store.load_into(out)
        out.flush()
        del out

    write_path_atomic(path, write)
