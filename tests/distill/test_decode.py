"""``--decode gpu``: the encoded-bytes path (CPU here), its fallback without CUDA, and an opt-in GPU test."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from cache_builder.image_list import discover_splits
from distill.data import AugmentedImages
from distill.decode import GpuViewDecoder, collate_encoded
from distill.engine import run
from distill.run_identity import RunIdentity
from distill.targets import load_targets
from tests.distill.synthetic import losses, make_cache, tiny
from tests.images import write_image_folder


def make_jpegs(root: str, n: int = 24, seed: int = 0) -> str:
    """``root/train/{a,b}/NNN.jpg`` of varied sizes, 20-40 px (so crops differ from image to image)."""
    write_image_folder(root, ("a", "b"), n // 2, splits=("train",), size=20, jitter=20, seed=seed, ext="jpg")
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    data = make_jpegs(str(root / "data"))
    cache = make_cache(str(root / "cache"), data, dim=8)
    return data, cache


def encoded_and_pil_views(data: str, epoch: int):  # type: ignore[no-untyped-def]
    """Epoch ``epoch``'s views of every image, as encoded batch entries (with their rows and
    views) and as the PIL path's ``(N, 3, 16, 16)`` uint8 pixels."""
    images = discover_splits(data)["train"]
    pil = AugmentedImages(images, 16, (0.3, 1.0), seed=4)
    enc = AugmentedImages(images, 16, (0.3, 1.0), seed=4, encoded=True)
    keys = [(epoch, row) for row in range(len(images))]
    batch, rows, views = collate_encoded([enc[k] for k in keys])
    return batch, rows, views, torch.stack([pil[k][0] for k in keys])


def test_encoded_path_draws_the_same_views_and_decodes_to_nearly_the_same_pixels(jpegs) -> None:
    data, _ = jpegs
    batch, rows, views, expected = encoded_and_pil_views(data, epoch=1)
    n = len(expected)
    assert rows.tolist() == list(range(n)) and views.tolist() == [0] * n
    decoded = GpuViewDecoder(16, torch.device("cpu"))(batch)
    assert decoded.shape == expected.shape == (n, 3, 16, 16) and decoded.dtype == torch.uint8
    diff = (decoded.float() - expected.float()).abs()
    assert diff.mean() < 2.0, diff.mean()  # same JPEG decoder family, tensor vs PIL antialiased resize
    flips = [e.box[4] for e in batch]
    assert any(flips) and not all(flips)


def test_decode_gpu_without_cuda_falls_back_to_the_cpu_batches(jpegs, tmp_path, caplog) -> None:
    data, cache = jpegs
    cpu_run = str(tmp_path / "cpu")
    run(tiny(cache, cpu_run, batch_size=8, bank_size=16, epochs=1, probe_size=16))
    gpu_run = str(tmp_path / "gpu")
    with caplog.at_level(logging.WARNING, logger="distill.precision"):
        run(tiny(cache, gpu_run, batch_size=8, bank_size=16, epochs=1, probe_size=16, decode="gpu"))
    assert "--decode gpu needs a CUDA device" in caplog.text and "decoding on the CPU" in caplog.text
    assert losses(gpu_run) == losses(cpu_run)  # exactly the --decode cpu batches
    cfg = tiny(cache, gpu_run, data=data)
    targets = load_targets(cache, data, torch.device("cpu"))

    def fingerprint(c, decode: str) -> str:  # the identity of c run with the decoder that actually runs
        return RunIdentity.of(c, targets.store.content_fingerprint(), targets.images.fingerprint(), decode=decode,
                              bank_dtype="float32").fingerprint

    assert fingerprint(dataclasses.replace(cfg, decode="gpu"), "cpu") == fingerprint(cfg, "cpu")
    assert fingerprint(cfg, "gpu") != fingerprint(cfg, "cpu")


@pytest.mark.gpu
def test_decode_gpu_on_cuda_matches_cpu_decoding(jpegs, tmp_path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data, cache = jpegs
    batch, _, _, expected = encoded_and_pil_views(data, epoch=0)
    decoded = GpuViewDecoder(16, torch.device("cuda"))(batch)
    assert decoded.device.type == "cuda"
    assert (decoded.cpu().float() - expected.float()).abs().mean() < 3.0
    out = str(tmp_path / "gpu")
    assert run(tiny(cache, out, batch_size=8, bank_size=16, epochs=1, probe_size=16, decode="gpu", device="cuda"))["finished"]
