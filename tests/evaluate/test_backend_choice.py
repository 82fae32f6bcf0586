"""The one FAISS/torch backend choice (distill.topk.resolve_backend) of kNN, k-means and neighbour tables."""

from __future__ import annotations

import pytest
import torch

import cache_builder.devices
import distill.topk as topk
from storage.errors import UsageError


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine whose 'auto' device is cuda:0, with ``gpus`` GPUs visible to FAISS."""
    def setup(gpus: int) -> None:
        monkeypatch.setattr(cache_builder.devices, "resolve_device",
                            lambda name="auto": torch.device("cuda", 0) if name in ("auto", "cuda") else torch.device(name))
        monkeypatch.setattr(topk, "faiss_gpu_count", lambda: gpus)
    return setup


def test_cpu_auto_is_faiss_and_explicit_backends_are_kept() -> None:
    assert topk.resolve_backend("auto", "cpu") == ("faiss", "cpu")
    assert topk.resolve_backend("torch", "cpu") == ("torch", "cpu")
    assert topk.resolve_backend("faiss", "cpu", k=10**6) == ("faiss", "cpu")


def test_cuda_auto_uses_faiss_gpu_within_its_k_limit_else_torch(fake_cuda) -> None:
    fake_cuda(gpus=1)
    assert topk.resolve_backend("auto", "auto") == ("faiss", "cuda:0")
    assert topk.resolve_backend("auto", None, k=topk.FAISS_GPU_MAX_K) == ("faiss", "cuda:0")
    assert topk.resolve_backend("auto", "auto", k=topk.FAISS_GPU_MAX_K + 1) == ("torch", "cuda:0")
    with pytest.raises(UsageError, match="at most 2048 neighbours"):
        topk.resolve_backend("faiss", "cuda", k=topk.FAISS_GPU_MAX_K + 1)
    fake_cuda(gpus=0)
    assert topk.resolve_backend("auto", "cuda") == ("torch", "cuda:0")
    with pytest.raises(UsageError, match="--backend faiss on a CUDA device needs faiss-gpu"):
        topk.resolve_backend("faiss", "cuda")


def test_unknown_backend_suggests_the_close_name() -> None:
    with pytest.raises(UsageError, match="unknown search backend 'fiass' \\(did you mean 'faiss'\\?\\)"):
        topk.resolve_backend("fiass", "cpu")


def test_cluster_and_knn_choose_through_it(monkeypatch, tmp_path) -> None:
    from evaluate.cluster import ClusterConfig, cluster
    from evaluate.knn import KnnConfig, knn
    from tests.evaluate.stores import write_feature_dir

    root = write_feature_dir(str(tmp_path / "f"))
    calls = []
    real = topk.resolve_backend

    def spy(backend="auto", device="auto", *, k=None):
        calls.append((backend, device, k))
        return real(backend, device, k=k)

    monkeypatch.setattr(topk, "resolve_backend", spy)
    import evaluate.knn

    monkeypatch.setattr(evaluate.knn, "resolve_backend", spy)
    assert knn(KnnConfig(features=root, device="cpu"))["backend"] == "faiss:cpu"
    assert cluster(ClusterConfig(features=root, clusters=4, device="cpu", backend="torch"))["backend"] == "torch:cpu"
    assert ("auto", "cpu", 20) in calls and ("torch", "cpu", None) in calls
