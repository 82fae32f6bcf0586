"""``--decode-scale auto``: DCT-scaled JPEG decoding of crops that are downscaled >= 2x."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cache_builder.image_decode import BadImageError, dct_scale, decode_image
from cache_builder.image_list import discover_splits
from distill.config import DistillConfig
from distill.data import AugmentedImages
from distill.engine import run
from distill.run_identity import RunIdentity
from distill.targets import load_targets
from storage.errors import UsageError
from tests.distill.synthetic import losses, make_cache, tiny
from tests.images import write_image_folder


def test_dct_scale_is_the_largest_reduction_that_keeps_the_box_at_least_the_output() -> None:
    assert dct_scale((375, 500), (224, 224)) == 1
    assert dct_scale((448, 500), (224, 224)) == 2
    assert dct_scale((447, 900), (224, 224)) == 1
    assert dct_scale((320, 330), (160, 160)) == 2
    assert dct_scale((128, 130), (16, 16)) == 8
    assert dct_scale((127, 500), (16, 16)) == 4


def test_draft_decodes_a_jpeg_at_the_requested_scale_and_other_formats_fully(tmp_path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    seen = []

    def draft(s: int):  # type: ignore[no-untyped-def]
        def fn(w: int, h: int) -> tuple[int, int]:
            seen.append((w, h))
            return (w // s, h // s)
        return fn

    for s in (1, 2, 4, 8):
        assert decode_image(str(tmp_path / "x.jpg"), draft=draft(s)).size == (-(-83 // s), -(-61 // s))
    assert decode_image(str(tmp_path / "x.png"), draft=draft(4)).size == (83, 61)
    assert seen == [(83, 61)] * 5  # the full size from the header, before decoding
    full = np.asarray(decode_image(str(tmp_path / "x.jpg"))).astype(int)
    assert np.array_equal(np.asarray(decode_image(str(tmp_path / "x.jpg"), draft=lambda w, h: None)), full)

    def refuse(w: int, h: int) -> None:
        raise ValueError("the caller's own error")

    with pytest.raises(ValueError, match="the caller's own error") as e:
        decode_image(str(tmp_path / "x.jpg"), draft=refuse)
    assert not isinstance(e.value, BadImageError)


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory):
    """``train/{a,b}/NNN.jpg``, 64-96 px: most 16 px crops are downscaled >= 2x."""
    root = str(tmp_path_factory.mktemp("big") / "data")
    write_image_folder(root, ("a", "b"), 8, splits=("train",), size=64, jitter=32, seed=3, ext="jpg", quality=90)
    return root


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_auto_keeps_the_views_and_nearly_the_pixels(big_jpegs) -> None:
    images = discover_splits(big_jpegs)["train"]
    off = AugmentedImages(images, 16, (0.3, 1.0), seed=2, decode_scale="off")
    auto = AugmentedImages(images, 16, (0.3, 1.0), seed=2, decode_scale="auto")
    drafted = 0
    for row in range(len(images)):
        a, ra, va = off[(1, row)]
        b, rb, vb = auto[(1, row)]
        assert (ra, va) == (rb, vb) and a.shape == b.shape == (3, 16, 16)
        full = Image.open(images.absolute(row))
        _, (top, left, h, w, flip) = off.view_box(1, row, (full.height, full.width))
        if dct_scale((h, w), (16, 16)) == 1:
            assert torch.equal(a, b)  # not downscaled 2x: the same full decode
        else:
            drafted += 1
            # the box mapped to the drafted image: a close match (a box misplaced by a few
            # pixels or mis-scaled drops far below this on these images)
            assert psnr(a, b) > 28, (row, psnr(a, b))
            shifted = torch.roll(a, 2, dims=2)
            assert psnr(a, b) > psnr(shifted, b) + 3
    assert drafted >= 4


def test_decode_scale_is_validated_and_part_of_the_run_identity(big_jpegs, tmp_path) -> None:
    with pytest.raises(UsageError, match="--decode-scale"):
        DistillConfig(decode_scale="fast").validate()
    with pytest.raises(ValueError, match="decode_scale"):
        AugmentedImages(discover_splits(big_jpegs)["train"], 16, decode_scale="fast")
    cache = make_cache(str(tmp_path / "cache"), big_jpegs, dim=8)
    targets = load_targets(cache, big_jpegs, torch.device("cpu"))
    cfg = tiny(cache, str(tmp_path / "run"), data=big_jpegs)

    def identity(c: DistillConfig) -> RunIdentity:
        return RunIdentity.of(c, targets.store.content_fingerprint(), targets.images.fingerprint(), decode="cpu",
                              bank_dtype="float32")

    auto = identity(dataclasses.replace(cfg, decode_scale="auto"))
    assert auto.fingerprint != identity(cfg).fingerprint
    assert any(d.startswith("--decode-scale: off in the run, auto now") for d in identity(cfg).differences(auto))


def test_a_run_with_auto_trains_and_differs_from_off_only_slightly(big_jpegs, tmp_path) -> None:
    cache = make_cache(str(tmp_path / "cache"), big_jpegs, dim=8)
    common = dict(batch_size=8, bank_size=16, epochs=1, probe_size=16)
    run(tiny(cache, str(tmp_path / "off"), **common))
    run(tiny(cache, str(tmp_path / "auto"), decode_scale="auto", **common))
    off, auto = losses(str(tmp_path / "off")), losses(str(tmp_path / "auto"))
    assert len(off) == len(auto) == 2 and off != auto
    assert np.allclose(off, auto, rtol=0.05)
