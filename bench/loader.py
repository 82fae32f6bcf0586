"""Student-loader and cache-builder-loader throughput per core, on synthetic ImageNet-like JPEGs.

    python bench/loader.py --images 300 --rounds 5

Generates ``--images`` JPEGs into a temp dir (4:3, short side 375 with +-10 % jitter, a quarter
portrait, quality 90, photo-like content: a smooth colour layout plus fine texture and noise,
so they compress like photos: ~85 KB at 500x375), then times, in ONE process with one torch
thread (so img/s is per core), interleaved round by round, and reports medians:

* ``decode only``          : ``decode_image`` of every file (full decode), the floor of any path;
* ``student, PIL (before)``: the student path before issue 15, the baseline of the ratios: PIL
                             decode, PIL crop + antialiased resize, flip (the same seeded views);
* ``student, files (now)``  : ``distill.data.AugmentedImages`` as training runs it now
                             (torchvision decode + RandomResizedCrop(S) + flip, ``--decode-scale off``);
* ``student, reduced``     : the same with ``--decode-scale auto`` (DCT-scaled decoding of crops
                             downscaled >= 2x), with the share of views reduced and the PSNR of
                             their pixels against the full decode's;
* ``student, tar shards``  : today's path reading the same JPEGs from WebDataset tar shards
                             (``cache_builder.tar_source``: one seek + read per sample);
* ``student, --pixels``    : today's path reading the pre-resized copy ``compress-cache build
                             --pixels`` writes (``--pixels``, default 256, JPEG q90), alone and
                             with ``--decode-scale auto``;
* ``cache builder``        : ``cache_builder.dataset.ImageDataset`` with Resize(256)+CenterCrop(224),
                             and the same also encoding the ``--pixels`` copy of each image.

Each variant runs at student input 224 and 160 (``--sizes``). ``--listing N`` also times listing
an N-line file list (``read_file_list``) and its fingerprint (default 1,000,000; 0 skips);
``--tar-members N`` the first scan of an N-member tar shard, the reload of its saved index
and the listing of the split (default 1,000,000 empty members, ~0.5 GB in a temp dir; 0 skips). The table gives the cores that 5,800 img/s
(ResNet-18 training on one modern GPU) would need at each rate. The machine's load average is
printed before and after (the cores may be shared).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET = 5800.0  # img/s: ResNet-18 at 224 on one modern GPU


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 ``(height, width, 3)``: smooth layout + oriented texture + sensor-like noise."""
    from PIL import Image

    layout = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(layout).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = 25 * np.sin(x / rng.uniform(1.5, 6) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(1.5, 6))
    out = base + texture[..., None] + rng.normal(0, 14, (height, width, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def make_images(root: str, n: int, seed: int = 0) -> float:
    """Write ``n`` JPEGs under ``root/<class>/``; returns the mean file size in KB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        cls = os.path.join(root, f"c{i % 4}")
        os.makedirs(cls, exist_ok=True)
        short = int(round(375 * rng.uniform(0.9, 1.1)))
        long = int(round(short * 4 / 3))
        h, w = (long, short) if i % 4 == 3 else (short, long)
        path = os.path.join(cls, f"{i:05d}.jpg")
        Image.fromarray(photo_like(rng, h, w)).save(path, quality=90)
        sizes.append(os.path.getsize(path))
    return float(np.mean(sizes)) / 1024


def timed(fn: Callable[[], int]) -> float:
    """img/s of ``fn`` (which returns the number of images it processed)."""
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def reduced_pixels(images, size: int, epochs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """``(share of views reduced, mean PSNR of the reduced views vs the full decode)`` at ``size``."""
    from distill.data import AugmentedImages

    full = AugmentedImages(images, size, seed=1, decode_scale="off")
    red = AugmentedImages(images, size, seed=1, decode_scale="auto")
    mse = []
    for epoch in range(epochs):
        for row in range(len(images)):
            a, b = full[(epoch, row)][0].float(), red[(epoch, row)][0].float()
            mse.append(float(((a - b) ** 2).mean()))
    m = np.array(mse)
    changed = m[m > 0]
    psnr = float(np.mean(10 * np.log10(255.0**2 / changed))) if len(changed) else float("nan")
    return float((m > 0).mean()), psnr


def time_listing(n: int) -> tuple[float, float]:
    """Seconds to parse an ``n``-line file list and to fingerprint the listing."""
    from cache_builder.image_list import read_file_list

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "list.txt")
        with open(path, "w") as f:
            f.writelines(f"n{i // 1300:08d}/n{i // 1300:08d}_{i:07d}.JPEG {i // 1300}\n" for i in range(n))
        t = time.perf_counter()
        images = read_file_list(path)
        parsed = time.perf_counter() - t
        t = time.perf_counter()
        images.fingerprint()
        return parsed, time.perf_counter() - t


def to_tar_shards(images, out: str, per_shard: int = 100) -> None:  # type: ignore[no-untyped-def]
    """The listing's files as WebDataset shards ``out/shard-NNNNNN.tar`` (``<key>.jpg`` + ``<key>.cls``)."""
    import io
    import tarfile

    os.makedirs(out, exist_ok=True)
    for start in range(0, len(images), per_shard):
        with tarfile.open(os.path.join(out, f"shard-{start // per_shard:06d}.tar"), "w") as tar:
            for i in range(start, min(start + per_shard, len(images))):
                for name, payload in ((f"k{i:07d}.jpg", images.read_bytes(i)), (f"k{i:07d}.cls", str(images.labels[i]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def write_copy(images, location: str, settings, per_shard: int = 100):  # type: ignore[no-untyped-def]
    """The pre-resized copy of ``images`` at ``location`` as ``compress-cache build --pixels`` writes
    it (``PixelCopyWriter``, shards of ``per_shard`` rows), opened as an ``ImageList``."""
    from cache_builder.pixel_copy import CopyEncoder, PixelCopyWriter, copy_image
    from cache_builder.pixel_source import PixelCopy

    n = len(images)
    ranges = [(a, min(a + per_shard, n)) for a in range(0, n, per_shard)]
    writer = PixelCopyWriter(location, settings, "bench", ranges, images.paths, images.labels, images.classes)
    writer.prepare(replace=True)
    encoder = CopyEncoder(settings)
    for sid, (a, b) in enumerate(ranges):
        writer.write_shard(sid, [copy_image(images, i, encoder)[2] for i in range(a, b)])
    return PixelCopy.open(location).image_list()


def time_tar_index(n: int) -> tuple[float, float, float]:
    """Seconds for the first scan of an ``n``-member shard, the reload of its saved index, and
    listing the split (``discover_splits``, index reused)."""
    import io
    import tarfile

    from cache_builder.image_list import discover_splits
    from cache_builder.image_source import list_shards
    from cache_builder.tar_source import load_index

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COMPRESS_HOME"] = os.path.join(tmp, "home")
        path = os.path.join(tmp, "big", "shard-000000.tar")
        os.makedirs(os.path.dirname(path))
        with tarfile.open(path, "w") as tar:
            for i in range(n):
                tar.addfile(tarfile.TarInfo(f"k{i:07d}.jpg"), io.BytesIO(b""))
        (shard,) = list_shards([path])
        t = time.perf_counter()
        load_index(shard)
        scanned = time.perf_counter() - t
        t = time.perf_counter()
        load_index(shard)
        reloaded = time.perf_counter() - t
        t = time.perf_counter()
        listed = discover_splits(os.path.dirname(path))["train"]
        assert len(listed) == n
        return scanned, reloaded, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", default="224,160")
    p.add_argument("--listing", type=int, default=1_000_000)
    p.add_argument("--tar-members", type=int, default=1_000_000)
    p.add_argument("--pixels", type=int, default=256, help="Short side of the pre-resized copy (compress-cache build --pixels).")
    args = p.parse_args()
    torch.set_num_threads(1)

    from cache_builder.dataset import ImageDataset
    from cache_builder.image_decode import decode_image
    from cache_builder.image_list import scan_image_folder
    from cache_builder.pixel_copy import CopyEncoder, PixelSettings
    from cache_builder.transforms import Uint8Transform
    from distill.data import AugmentedImages

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench_loader_")
    kb = make_images(tmp, args.images)
    images = scan_image_folder(tmp)
    n = len(images)
    load_before = os.getloadavg()

    def student_pil(size: int, epoch: int) -> Callable[[], int]:
        """The student path before issue 15: PIL decode, PIL crop + resize, PIL flip, pil_to_tensor."""
        from torchvision.transforms import functional as TF

        ds = AugmentedImages(images, size, seed=0)

        def one(row: int) -> torch.Tensor:
            im = decode_image(images.absolute(row))
            _, (top, left, h, w, flip) = ds.view_box(epoch, row, (im.height, im.width))
            im = TF.resized_crop(im, top, left, h, w, [size, size], antialias=True)
            return TF.pil_to_tensor(TF.hflip(im) if flip else im)

        return lambda: sum(1 for row in range(n) if one(row) is not None)

    def student(size: int, mode: str, epoch: int) -> Callable[[], int]:
        ds = AugmentedImages(images, size, seed=0, decode_scale=mode)
        return lambda: sum(1 for row in range(n) if ds[(epoch, row)][0] is not None)

    builder = ImageDataset(images, range(n), Uint8Transform(224, 256))
    to_tar_shards(images, os.path.join(tmp, "shards"))
    from cache_builder.image_list import discover_splits

    shard_images = discover_splits(os.path.join(tmp, "shards"))["train"]
    assert len(shard_images) == n

    def student_tar(size: int, epoch: int) -> Callable[[], int]:
        ds = AugmentedImages(shard_images, size, seed=0)
        return lambda: sum(1 for row in range(n) if ds[(epoch, row)][0] is not None)

    settings = PixelSettings(args.pixels, "jpeg", 90)
    copy_images = write_copy(images, os.path.join(tmp, "pixels"), settings)
    copy_kb = sum(copy_images.source.indexes[s.name].sizes.sum() for s in copy_images.source.shards) / n / 1024  # type: ignore[union-attr]
    encoder = CopyEncoder(settings)
    builder_copy = ImageDataset(images, range(n), Uint8Transform(224, 256), copy=encoder)

    def student_copy(size: int, mode: str, epoch: int) -> Callable[[], int]:
        ds = AugmentedImages(copy_images, size, seed=0, decode_scale=mode)
        return lambda: sum(1 for row in range(n) if ds[(epoch, row)][0] is not None)

    variants: dict[str, Callable[[int], Callable[[], int]]] = {
        "decode only (full decode)": lambda e: lambda: sum(1 for i in range(n) if decode_image(images.absolute(i))),
        "cache builder loader (Resize 256 + CenterCrop 224)": lambda e: lambda: sum(1 for i in range(n) if builder[i][1] is not None),
        f"cache builder loader + --pixels {args.pixels} (the copy encoded too)":
            lambda e: lambda: sum(1 for i in range(n) if builder_copy[i][3] is not None),
    }
    for size in sizes:
        variants[f"student {size}, files, PIL decode + resize (before)"] = lambda e, s=size: student_pil(s, e)  # type: ignore[misc]
        variants[f"student {size}, files (now)"] = lambda e, s=size: student(s, "off", e)  # type: ignore[misc]
        variants[f"student {size}, files + --decode-scale auto"] = lambda e, s=size: student(s, "auto", e)  # type: ignore[misc]
        variants[f"student {size}, tar shards (read by offset)"] = lambda e, s=size: student_tar(s, e)  # type: ignore[misc]
        variants[f"student {size}, --pixels {args.pixels} copy"] = lambda e, s=size: student_copy(s, "off", e)  # type: ignore[misc]
        variants[f"student {size}, --pixels {args.pixels} copy + --decode-scale auto"] = (  # type: ignore[misc]
            lambda e, s=size: student_copy(s, "auto", e))
    rates: dict[str, list[float]] = {k: [] for k in variants}
    t0 = time.time()
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # interleaved, both orders
        for name in order:
            rates[name].append(timed(variants[name](r)))
    elapsed = time.time() - t0
    load_after = os.getloadavg()
    pixels = {size: reduced_pixels(images, size, epochs=2) for size in sizes}

    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"1 thread, in-process (no DataLoader workers)")
    print(f"{n} JPEGs, short side 338-413, 4:3, quality 90, mean {kb:.0f} KB; {args.rounds} interleaved rounds, "
          f"medians; {elapsed:.0f} s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"--pixels {args.pixels} copy ({settings.describe()}): mean {copy_kb:.0f} KB per image")
    base = {size: statistics.median(rates[f"student {size}, files, PIL decode + resize (before)"]) for size in sizes}
    print()
    print("| path | img/s per core (median) | min-max | vs the PIL path (before) at the same size | cores for 5,800 img/s |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rates.items():
        med = statistics.median(values)
        size = next((s for s in sizes if name.startswith(f"student {s},")), None)
        ratio = f"{med / base[size]:.2f}x" if size is not None else "-"
        print(f"| {name} | {med:.0f} | {min(values):.0f}-{max(values):.0f} | {ratio} | {math.ceil(TARGET / med)} |")
    print()
    print("| input | views reduced by --decode-scale auto | PSNR of the reduced views vs full decode |")
    print("|---|---:|---:|")
    for size, (share, psnr) in pixels.items():
        print(f"| {size} | {100 * share:.0f} % | {psnr:.1f} dB |")
    if args.listing:
        parsed, fingerprinted = time_listing(args.listing)
        print(f"\nfile list of {args.listing:,} entries: parsed in {parsed:.2f} s, fingerprinted in {fingerprinted:.2f} s")
    if args.tar_members:
        scanned, reloaded, listed = time_tar_index(args.tar_members)
        print(f"tar shard of {args.tar_members:,} members: first scan {scanned:.2f} s, saved index reloaded in {reloaded:.2f} s, "
              f"split listed (index reused) in {listed:.2f} s")


if __name__ == "__main__":
    main()
