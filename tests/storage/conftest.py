from __future__ import annotations

import uuid

import numpy as np
import pytest

from storage.location import MemoryLocation

BACKEND_CASES = ["zarr", "zarr-file-url", "hdf5", "memory"]


@pytest.fixture(params=BACKEND_CASES)
def store_target(request, tmp_path):
    """``(path, backend)`` for every backend, including zarr through an fsspec ``file://`` URL."""
    case = request.param
    if case == "memory":
        url = f"memory://test-{uuid.uuid4().hex}"
        yield url, "memory"
        MemoryLocation.discard(url)
    elif case == "zarr-file-url":
        yield f"file://{tmp_path}/store", "zarr"
    else:
        yield str(tmp_path / "store"), case


def unit_rows(n: int, *row_shape: int, dtype: str = "float16", seed: int = 0) -> np.ndarray:
    """Random L2-normalised rows of shape ``(n, *row_shape)``."""
    x = np.random.default_rng(seed).standard_normal((n, *row_shape)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x.astype(dtype)
