"""Distillation-step benchmark: the full CompRess step vs the bare student step, in the same run.

Three steps on the same model and the same batch, interleaved within every repeat:

* ``bare``: normalise the uint8 batch, student forward + a trivial loss on its output,
  backward, SGD step, and for ``2q-momentum`` the EMA update + key-student forward — everything
  a step needs that is *not* the CompRess loss, banks or cache gather;
* ``full``: the product's ``Trainer.train_step`` (``TeacherTargets.gather`` of the batch's
  cached rows, ``CompRessObjective`` loss against the banks, SGD, EMA, key forward, enqueue);
* ``reference``: the reference code's approach to the same step: the whole cache as one fp32
  tensor, banks ``clone()``d every step, fp32 bank matmuls, ``loss.item()`` every step.

overhead = (step - bare) / step, from the medians over repeats of the per-step times; the
methods alternate block by block so that load from other processes hits all of them alike.
A fourth timing, ``objective``, runs only gather + loss forward/backward + enqueue (the
student output cached), a direct measurement of what the subtraction estimates. Target
(docs/architecture.md, "Performance targets"): loss + banks + gather <= 10 % of the step on CPU, <= 5 % on GPU.
On a GPU the model runs under bf16 autocast with channels_last and bf16 banks, as the engine.

Usage: ``python bench/distill_step.py`` (CPU defaults: 80 px, batch 64, bank 16384, for the same
ratio of bank to convolution FLOPs as 224 px with a 128k bank; GPU defaults: 224 px, batch 256,
bank 128000). Pairs are ``D_t:D_s[:student]``; the defaults are the configurations the method
is run in: ResNet-18 students of a 2048-d (ResNet-50) and an 8192-d (ResNet-50x4) teacher with
a 128-d head, and the paper's ResNet-50 student of ResNet-50x4 with an 8192-d head.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.knn import cpu_name  # noqa: E402
from cache_builder.image_list import ImageList  # noqa: E402
from distill.config import DistillConfig  # noqa: E402
from distill.precision import dtype_name, resolve_bank_dtype  # noqa: E402
from distill.targets import TeacherTargets  # noqa: E402
from distill.trainer import Trainer, build_trainer  # noqa: E402


def make_trainer(student_name: str, teacher_dim: int, student_dim: int, bank: int, cache_rows: int, variant: str,
                 device: torch.device, seed: int = 0, bank_dtype: torch.dtype | None = None, batch_size: int = 64) -> Trainer:
    """The engine's ``Trainer`` (``build_trainer``: student, key student, objective, optimizer) on
    synthetic cached rows, without a cache or images on disk; its banks filled with random rows."""
    g = torch.Generator().manual_seed(seed)
    cfg = DistillConfig(student=student_name, dim=student_dim, variant=variant, bank_size=bank, momentum=0.999, seed=seed,
                        batch_size=batch_size, device=str(device),
                        bank_dtype="auto" if bank_dtype is None else dtype_name(bank_dtype))  # auto: as the engine
    emb = F.normalize(torch.randn(cache_rows, teacher_dim, generator=g), dim=1).half()
    images = ImageList("synthetic", tuple(f"{i}.png" for i in range(cache_rows)), (0,) * cache_rows, ("synthetic",))
    tr = build_trainer(cfg, TeacherTargets(store=None, images=images, embeddings=emb.to(device)))  # type: ignore[arg-type]
    if device.type == "cuda":
        tr.student = tr.student.to(memory_format=torch.channels_last)
    rows = torch.randperm(cache_rows, generator=g)[:bank]
    key = F.normalize(torch.randn(bank, student_dim, generator=g), dim=1)
    tr.objective.fill(tr.targets.gather(rows.to(device)), None if tr.objective.student_bank is None else key.to(device), rows.to(device))
    return tr


def bare_step(tr: Trainer, images: torch.Tensor, rows: torch.Tensor, lr: float) -> torch.Tensor:
    """Student step without the CompRess loss, banks or gather."""
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    x = tr._to_input(images)
    with tr._autocast():
        loss = tr.model(x)[0].float().square().mean()
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tr.optimizer.step()
    tr.momentum_key(x)
    return loss.detach()


class ReferenceStep:
    """The reference code's step: fp32 cache tensor, cloned fp32 banks, ``.item()`` per step."""

    def __init__(self, tr: Trainer) -> None:
        self.cache = tr.targets.embeddings.float()  # the whole cache as one fp32 tensor
        obj = tr.objective
        self.bank_t = obj.teacher_bank.anchors.float().clone()
        self.bank_s = None if obj.student_bank is None else obj.student_bank.anchors.float().clone()
        self.pointer = 0

    def loss(self, tr: Trainer, out: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, normalised teacher rows)``: fp32 gather, bank clones, fp32 matmuls."""
        teacher = F.normalize(self.cache[rows.to(self.cache.device)], dim=1)
        obj = tr.objective
        query = obj.projection(out.float()) if obj.projection is not None else out.float()
        s = F.normalize(query.float(), dim=1)
        bank_t = self.bank_t.clone().detach()
        bank_s = bank_t if self.bank_s is None else self.bank_s.clone().detach()
        logits_t = teacher @ bank_t.T / obj.t_teacher
        logits_s = s @ bank_s.T / obj.t_student
        return F.kl_div(F.log_softmax(logits_s, dim=1), F.softmax(logits_t, dim=1), reduction="batchmean"), teacher

    def enqueue(self, teacher: torch.Tensor, key: torch.Tensor | None) -> None:
        b = teacher.shape[0]
        idx = ((torch.arange(b) + self.pointer) % self.bank_t.shape[0]).to(self.bank_t.device)
        self.bank_t[idx] = teacher
        if self.bank_s is not None and key is not None:
            self.bank_s[idx] = F.normalize(key, dim=1)
        self.pointer = (self.pointer + b) % self.bank_t.shape[0]

    def __call__(self, tr: Trainer, images: torch.Tensor, rows: torch.Tensor, lr: float) -> float:
        for group in tr.optimizer.param_groups:
            group["lr"] = lr
        x = tr._to_input(images)
        with tr._autocast():
            out = tr.student(x)
        loss, teacher = self.loss(tr, out, rows)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()
        key = tr.momentum_key(x)
        if key is None and self.bank_s is not None:
            key = out.detach().float()
        self.enqueue(teacher, key)
        return loss.item()

    def alone(self, tr: Trainer, images: torch.Tensor, rows: torch.Tensor, lr: float) -> float:
        """Only the reference's loss + banks + gather, on a cached student output."""
        out = tr._bench_student_out.detach().requires_grad_(True)  # type: ignore[attr-defined]
        loss, teacher = self.loss(tr, out, rows)
        loss.backward()
        self.enqueue(teacher, out.detach() if self.bank_s is not None else None)
        return loss.item()


def objective_only(tr: Trainer, images: torch.Tensor, rows: torch.Tensor, lr: float) -> None:
    """Just the part the overhead is about: gather + loss forward/backward against the banks
    (gradient to a detached copy of a cached student output) + enqueue."""
    out = tr._bench_student_out.detach().requires_grad_(True)  # type: ignore[attr-defined]
    teacher = tr.targets.gather(rows.to(tr.device))
    with tr._autocast():
        loss = tr.objective(out, teacher, rows)
    loss.backward()
    key = out.detach().float() if tr.objective.student_bank is not None else None
    tr.objective.enqueue(teacher, key, rows.to(tr.device))


def full_step(tr: Trainer, images: torch.Tensor, rows: torch.Tensor, lr: float) -> torch.Tensor:
    """The product's step, ``Trainer.train_step`` (single-view cache: view 0)."""
    return tr.train_step(images, rows, torch.zeros_like(rows), lr)


def time_steps(step: Callable[..., Any], tr: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> float:
    """Seconds per step over ``batches`` (one device sync at the end)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for images, rows in batches:
        step(tr, images, rows, 0.01)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / len(batches)


def bench_pair(pair: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    parts = pair.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"pair must be D_t:D_s[:student], got {pair!r}")
    teacher_dim, student_dim = int(parts[0]), int(parts[1])
    student = parts[2] if len(parts) == 3 else args.student
    cache_rows = max(args.cache_rows, args.bank + args.batch_size)
    bank_dtype = None if args.bank_dtype == "engine" else getattr(torch, args.bank_dtype)
    tr = make_trainer(student, teacher_dim, student_dim, args.bank, cache_rows, args.variant, device, bank_dtype=bank_dtype,
                      batch_size=args.batch_size)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (args.batch_size, 3, args.input_size, args.input_size), dtype=torch.uint8, generator=g),
                torch.randperm(cache_rows, generator=g)[:args.batch_size]) for _ in range(args.steps)]
    if device.type == "cuda":
        batches = [(im.pin_memory(), r) for im, r in batches]
    reference = ReferenceStep(tr)
    with torch.no_grad(), tr._autocast():
        tr._bench_student_out = tr.student(tr._to_input(batches[0][0])).float()  # type: ignore[attr-defined]
    methods: dict[str, Callable[..., Any]] = {"bare": bare_step, "full": full_step, "reference": reference,
                                              "objective": objective_only, "reference_objective": reference.alone}
    for step in methods.values():  # warm-up (allocations, kernel selection)
        time_steps(step, tr, batches[: args.warmup], device)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for name, step in methods.items():
            times[name].append(time_steps(step, tr, batches, device))
    med = {m: statistics.median(v) for m, v in times.items()}
    del tr, reference
    return {"teacher_dim": teacher_dim, "student_dim": student_dim, "student": student, **med}


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["2048:128", "8192:128", "8192:8192:resnet50"], help="D_t:D_s[:student]")
    p.add_argument("--student", default="resnet18", help="student of pairs that name none")
    p.add_argument("--variant", default="2q-momentum", choices=["2q", "2q-momentum", "1q"])
    p.add_argument("--input-size", type=int, default=224 if gpu else 80)
    p.add_argument("--batch-size", type=int, default=256 if gpu else 64)
    p.add_argument("--bank", type=int, default=128_000 if gpu else 16_384)
    p.add_argument("--cache-rows", type=int, default=0, help="rows of the synthetic cache [default: bank + batch]")
    p.add_argument("--steps", type=int, default=10 if gpu else 1, help="steps per timed block (methods alternate block by block)")
    p.add_argument("--warmup", type=int, default=3 if gpu else 1)
    p.add_argument("--repeats", type=int, default=5 if gpu else 7)
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--bank-dtype", default="engine", choices=["engine", "float32", "bfloat16"],
                   help="bank storage/matmul dtype [default: the engine's --bank-dtype auto: bf16 on GPUs and on CPUs "
                        "with bf16 hardware, else fp32]")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__}, threads {torch.get_num_threads()}, device {device} ({name})")
    print(f"{args.variant}, batch {args.batch_size} x {args.input_size} px, bank {args.bank}, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32 model'}, banks "
          f"{str(resolve_bank_dtype('auto', device)).removeprefix('torch.') + ' (engine auto)' if args.bank_dtype == 'engine' else args.bank_dtype}, "
          f"median of {args.repeats} repeats x {args.steps} steps (per-step times)\n")
    print("| D_t | D_s | student | bare step (ms) | full step (ms) | overhead (full - bare) / full | "
          "loss + banks + gather alone (ms, % of full) | reference step (ms) | reference overhead | "
          "reference loss + banks + gather alone (ms, % of its step) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        r = bench_pair(pair, args, device)
        over = (r["full"] - r["bare"]) / r["full"]
        ref_over = (r["reference"] - r["bare"]) / r["reference"]
        print(f"| {r['teacher_dim']} | {r['student_dim']} | {r['student']} | {1e3 * r['bare']:.1f} | {1e3 * r['full']:.1f} | "
              f"{100 * over:.1f} % | {1e3 * r['objective']:.1f} ({100 * r['objective'] / r['full']:.1f} %) | "
              f"{1e3 * r['reference']:.1f} | {100 * ref_over:.1f} % | "
              f"{1e3 * r['reference_objective']:.1f} ({100 * r['reference_objective'] / r['reference']:.1f} %) |", flush=True)


if __name__ == "__main__":
    main()
