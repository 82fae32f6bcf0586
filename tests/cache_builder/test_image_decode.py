"""The one image decode (``cache_builder.image_decode``): every PIL mode against a conversion
written with numpy, and the same pixels from every path that decodes (stage 1, stage 2, GPU
batch decoder, eval)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cache_builder.image_decode import BadImageError, decode_batch, decode_image

RNG = np.random.default_rng(0)
H, W = 5, 7


def _saved(img: Image.Image, tmp_path, fmt: str = "PNG", ext: str = "png") -> str:
    path = str(tmp_path / f"img.{ext}")
    img.save(path, fmt)
    return path


def _decoded(path: str) -> np.ndarray:
    out = decode_image(path)
    assert out.mode == "RGB"
    return np.asarray(out)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[..., None], 3, axis=2)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path) -> None:
    """The defect: PIL's convert("RGB") clips I;16 (a 16-bit PNG) to near-white."""
    values = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    path = _saved(Image.fromarray(values), tmp_path)
    assert Image.open(path).mode == "I;16"
    expected = _grey(np.rint(values / 257.0))
    np.testing.assert_array_equal(_decoded(path), expected)
    assert _decoded(path).mean() < 200  # uniform 16-bit values: mid-grey on average, not white


def test_16_bit_big_endian_and_32_bit_integer_modes(tmp_path) -> None:
    values = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    big = Image.frombytes("I;16B", (W, H), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(decode_image(_saved(big, tmp_path, "TIFF", "tif"))), _grey(np.rint(values / 257.0)))
    wide = values.astype(np.int32)
    wide[0, :3] = (-5, 70000, 65535)  # outside 16 bits: clipped
    img = Image.fromarray(wide)
    assert img.mode == "I"
    expected = _grey(np.rint(np.clip(wide, 0, 65535) / 257.0))
    np.testing.assert_array_equal(np.asarray(decode_image(_saved(img, tmp_path, "TIFF", "tif"))), expected)


def test_float_mode_is_read_as_zero_to_one(tmp_path) -> None:
    values = RNG.uniform(-0.2, 1.2, (H, W)).astype(np.float32)
    img = Image.fromarray(values)
    assert img.mode == "F"
    expected = _grey(np.rint(np.clip(values, 0, 1) * 255.0))
    np.testing.assert_array_equal(np.asarray(decode_image(_saved(img, tmp_path, "TIFF", "tif"))), expected)


def test_grey_and_bilevel(tmp_path) -> None:
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    np.testing.assert_array_equal(_decoded(_saved(Image.fromarray(grey), tmp_path)), _grey(grey))
    bits = RNG.integers(0, 2, (H, W)).astype(bool)
    img = Image.fromarray(bits)
    assert img.mode == "1"
    np.testing.assert_array_equal(_decoded(_saved(img, tmp_path)), _grey(bits * 255))


def test_alpha_modes_are_composited_over_white(tmp_path) -> None:
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    assert rgba.mode == "RGBA"
    out = _decoded(_saved(rgba, tmp_path))
    np.testing.assert_array_equal(out, _over_white(rgb, alpha))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == tuple(rgb[0, 1])
    grey = rgb[..., 0]
    la = Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha)))
    np.testing.assert_array_equal(_decoded(_saved(la, tmp_path)), _over_white(_grey(grey), alpha))


def test_palette_with_and_without_transparency(tmp_path) -> None:
    palette = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    index = RNG.integers(0, 4, (H, W), dtype=np.uint8)
    img = Image.frombytes("P", (W, H), index.tobytes())
    img.putpalette(palette.ravel().tolist())
    np.testing.assert_array_equal(_decoded(_saved(img, tmp_path)), palette[index])
    img.info["transparency"] = 2  # palette entry 2 is fully transparent
    expected = palette[index].copy()
    expected[index == 2] = 255
    np.testing.assert_array_equal(_decoded(_saved(img, tmp_path)), expected)


def test_cmyk(tmp_path) -> None:
    cmyk = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    img = Image.frombytes("CMYK", (W, H), cmyk.tobytes())
    c = cmyk.astype(np.float64)
    expected = np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255.0).astype(np.uint8)
    got = np.asarray(decode_image(_saved(img, tmp_path, "TIFF", "tif"))).astype(int)
    assert np.abs(got - expected).max() <= 1  # PIL's integer arithmetic rounds within one level


def test_rgb_is_unchanged_and_bad_files_are_named(tmp_path) -> None:
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decoded(_saved(Image.fromarray(rgb), tmp_path)), rgb)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="bad.png: cannot decode image") as err:
        decode_image(str(bad))
    assert isinstance(err.value, OSError)


def test_every_decoding_path_gives_the_same_pixels_for_a_16_bit_png(tmp_path) -> None:
    """Stage 1 (CPU and the batch decoder of --decode gpu), stage 2 and eval share the decode."""
    from cache_builder.dataset import decode_image as stage1_decode
    from cache_builder.image_list import scan_image_folder
    from cache_builder.transforms import Uint8Transform
    from distill.data import ReferenceImages

    values = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)
    (tmp_path / "c").mkdir()
    path = str(tmp_path / "c" / "x.png")
    Image.fromarray(values).save(path)
    expected = torch.from_numpy(_grey(np.rint(values / 257.0))).permute(2, 0, 1)
    assert stage1_decode is decode_image
    data = torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8)
    (batch,) = decode_batch([data], torch.device("cpu"), lambda i, e: e)
    assert batch.dtype == torch.uint8 and torch.equal(batch, expected)
    assert torch.equal(Uint8Transform(16, 16)(decode_image(path)), expected)
    ref, _ = ReferenceImages(scan_image_folder(str(tmp_path)), 16)[0]
    assert torch.equal(ref, expected)


def test_batch_decoder_names_an_undecodable_file() -> None:
    data = torch.frombuffer(bytearray(b"\x89PNG garbage"), dtype=torch.uint8)
    with pytest.raises(OSError, match="file-0"):
        decode_batch([data], torch.device("cpu"), lambda i, e: OSError(f"file-{i}: {e}"))


def test_rgba_tensor_is_composited_like_a_pil_image() -> None:
    from cache_builder.transforms import to_rgb

    rgba = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    out = to_rgb(torch.from_numpy(rgba).permute(2, 0, 1))
    pil = np.array(decode_image_from_array(rgba))
    assert torch.equal(out, torch.from_numpy(pil).permute(2, 0, 1))


def decode_image_from_array(rgba: np.ndarray) -> Image.Image:
    from cache_builder.image_decode import decode_bytes

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    return decode_bytes(buf.getvalue(), "rgba.png")


def test_the_tensor_decode_of_a_jpeg_equals_the_pil_decode() -> None:
    """Stage 2 decodes JPEGs with torchvision (``decode_tensor``, twice as fast); the pixels must
    be PIL's, for every chroma subsampling, progressive files and grey JPEGs; other formats and
    bad files go the PIL way and are named."""
    from cache_builder.image_decode import decode_bytes, decode_tensor

    rng = np.random.default_rng(3)
    for i, (subsampling, progressive, mode) in enumerate([(0, False, "RGB"), (1, True, "RGB"), (2, False, "RGB"), (2, True, "L")]):
        h, w = int(rng.integers(9, 70)), int(rng.integers(9, 70))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(60, 98)), subsampling=subsampling, progressive=progressive)
        expected = np.asarray(decode_bytes(buf.getvalue(), "x.jpg"))
        assert np.array_equal(decode_tensor(buf.getvalue(), "x.jpg").permute(1, 2, 0).numpy(), expected), i
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (5, 7, 4), np.uint8), "RGBA").save(png, format="PNG")
    assert np.array_equal(decode_tensor(png.getvalue(), "x.png").permute(1, 2, 0).numpy(), np.asarray(decode_bytes(png.getvalue(), "x")))
    with pytest.raises(BadImageError, match="bad.jpg: cannot decode image"):
        decode_tensor(b"\xff\xd8\xff not really", "bad.jpg")
