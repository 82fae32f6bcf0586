"""Is the student loader the bound of a training step? End-to-end img/s against the bare step.

    python bench/loader_e2e.py --device cuda                       # a GPU: ResNet-18 at 224, batch 256
    python bench/loader_e2e.py --device cpu --images 64 --size 64 --batch-size 16 --steps 3   # a dry run

Generates ``--images`` ImageNet-like JPEGs (``bench/loader.py``'s generator) and their
pre-resized copy (``--pixels``, as ``compress-cache build --pixels`` writes it), then times the
student's training step (forward, a loss on its embedding, backward, SGD; bf16 autocast and
channels_last on a GPU, as ``distill.trainer`` runs it):

* ``bare step``: on a uint8 batch already on the device (no loading): the bound to compare with;
* ``end to end, <source>, --decode cpu``: batches from ``distill.data.AugmentedImages`` through a
  DataLoader with ``--workers`` processes (pinned memory on a GPU), copied to the device, then
  the same step; ``<source>`` is the original files or the ``--pixels`` copy;
* ``end to end, <source>, --decode gpu`` (CUDA only): the workers read bytes and draw the views,
  the batch is decoded and cut on the GPU (``distill.decode.GpuViewDecoder``).

Each variant runs ``--steps`` timed steps after ``--warmup`` untimed ones; the variants are
interleaved over ``--rounds`` rounds and the medians reported with the ratio to the bare step
(issue 15's target: >= 0.9x, i.e. the loader is not the bound). The images are cycled: each
epoch draws new views of the same ``--images`` files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def step_fn(student: torch.nn.Module, device: torch.device, mean, std) -> Callable[[torch.Tensor], None]:  # type: ignore[no-untyped-def]
    """One training step of ``student`` on a uint8 ``(B, 3, S, S)`` batch (any device)."""
    from distill.data import normalise
    from distill.precision import autocast

    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor) -> None:
        x = normalise(images.to(device, non_blocking=True), mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            emb = student(x)
        loss = emb.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class EndlessEpochs:
    """A batch sampler of ``(epoch, row)`` keys over ``n`` rows, epoch after epoch, forever (a new
    seeded order every epoch), so one DataLoader (its workers started once) feeds every step."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = 0
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch)).tolist()
            for i in range(0, self.n - self.batch + 1, self.batch):
                yield [(epoch, r) for r in order[i:i + self.batch]]
            epoch += 1


def batches(images, size: int, batch: int, workers: int, decode: str, device: torch.device) -> Iterator[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Endless uint8 batches of seeded student views of ``images`` (new views every epoch)."""
    from torch.utils.data import DataLoader

    from distill.data import AugmentedImages
    from distill.decode import GpuViewDecoder, collate_encoded

    gpu = decode == "gpu"
    decoder = GpuViewDecoder(size, device) if gpu else None
    loader = DataLoader(AugmentedImages(images, size, seed=0, encoded=gpu), batch_sampler=EndlessEpochs(len(images), batch),
                        num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                        collate_fn=collate_encoded if gpu else None)
    for item in loader:
        yield decoder(item[0]) if decoder is not None else item[0]


def timed_steps(step: Callable[[torch.Tensor], None], source: Iterator[torch.Tensor], steps: int, warmup: int,
                device: torch.device, batch: int) -> float:
    """img/s of ``steps`` steps on batches from ``source`` (after ``warmup``)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step(next(source))
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(next(source))
    sync()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=2048, help="Distinct JPEGs generated (the loader cycles over them).")
    p.add_argument("--pixels", type=int, default=256, help="Short side of the pre-resized copy.")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.images < args.batch_size:
        p.error(f"--images {args.images} must be at least --batch-size {args.batch_size}")

    from bench.loader import make_images, write_copy
    from cache_builder.image_list import scan_image_folder
    from cache_builder.pixel_copy import PixelSettings
    from distill.students import build_student

    tmp = tempfile.mkdtemp(prefix="bench_e2e_")
    t = time.perf_counter()
    make_images(tmp, args.images)
    files = scan_image_folder(tmp)
    copy = write_copy(files, os.path.join(tmp, "pixels"), PixelSettings(args.pixels))
    prepared = time.perf_counter() - t
    student = build_student(args.student, 128).to(device)
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    step = step_fn(student, device, student.spec.mean, student.spec.std)
    fixed = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8, device=device)

    def endless(x: torch.Tensor) -> Iterator[torch.Tensor]:
        while True:
            yield x

    sources: dict[str, Callable[[], Iterator[torch.Tensor]]] = {"bare step (batch already on the device)": lambda: endless(fixed)}
    for name, images in (("files", files), (f"--pixels {args.pixels} copy", copy)):
        for decode in ("cpu", "gpu") if device.type == "cuda" else ("cpu",):
            sources[f"end to end, {name}, --decode {decode}"] = (
                lambda images=images, decode=decode: batches(images, args.size, args.batch_size, args.workers, decode, device))
    rates: dict[str, list[float]] = {k: [] for k in sources}
    for r in range(args.rounds):
        for name in list(sources) if r % 2 == 0 else list(reversed(sources)):
            rates[name].append(timed_steps(step, sources[name](), args.steps, args.warmup, device, args.batch_size))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"device {device} ({gpu}), {os.cpu_count()} cores, {args.workers} DataLoader workers, torch {torch.__version__}; "
          f"{args.student} at {args.size} px, batch {args.batch_size}, {args.steps} steps x {args.rounds} interleaved rounds "
          f"(medians); {args.images} JPEGs + their --pixels {args.pixels} copy prepared in {prepared:.0f} s")
    bare = statistics.median(rates["bare step (batch already on the device)"])
    print("\n| path | img/s (median) | min-max | vs the bare step |\n|---|---:|---:|---:|")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {min(values):.0f}-{max(values):.0f} | {med / bare:.2f}x |")


if __name__ == "__main__":
    main()
