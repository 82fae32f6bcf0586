"""Training engine: ``run(DistillConfig)`` trains a student with the CompRess objective.

Per step: uint8 batch -> device -> normalise -> student (and key student) forward under
autocast -> gather cached teacher rows (of the chosen views) -> loss against the banks -> SGD
step -> EMA of the key student -> enqueue the (all-gathered) batch. Losses stay on the device
and are read only every ``log_every`` steps. Checkpoints (atomic, every ``ckpt_every`` steps
and every epoch) hold everything needed to continue exactly; rerunning the same command
resumes.

Under ``torchrun`` (one process per GPU, or gloo processes on CPU) the trained parameters
(student + 1q projection, ``QueryNetwork``) are wrapped in ``DistributedDataParallel``; BN
statistics are per-rank batch statistics, with running statistics broadcast from rank 0 at
every forward. Every rank enqueues the all-gathered batch, so the banks stay identical; at
every checkpoint the ranks compare exact checksums of banks, student and key student and
stop with ``RankDivergenceError`` if they differ. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from distill import distributed as D
from distill.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_atomic, write_atomic
from distill.data import AugmentedImages, ReferenceImages, normalise
from distill.decode import DECODERS, GpuViewDecoder, collate_encoded
from distill.objective import VARIANTS, CompRessObjective, normalised_query
from distill.sampler import EpochBatchSampler
from distill.static_support import StaticSupportObjective
from distill.students import Student, build_student, eval_transform_recipe
from distill.targets import TeacherTargets, load_targets, train_store_path

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
OVERLAP_K = 10  # metrics.jsonl's overlap10: teacher-student top-10 neighbour overlap on the probe set
# fields that do not change what is trained (so they may differ on resume)
RUNTIME_FIELDS = ("out", "workers", "prefetch_factor", "log_every", "ckpt_every", "max_steps", "device", "compile", "fresh", "progress",
                  "shared_cache", "decode")
BANKS = ("queue", "static-faiss")
BANK_DTYPES = ("auto", "float32", "bfloat16")
STATIC_FIELDS = ("bank", "neighbours", "random_anchors", "tail_correction")  # not fingerprinted with --bank queue (old runs still resume)


class RunMismatchError(ValueError):
    """The output directory holds a run of another config or cache."""


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run depends on (defaults = the paper's recipe)."""

    cache: str = "./cache"
    data: str | None = None
    out: str | None = None
    student: str = "resnet18"
    dim: int = 128
    variant: str = "2q-momentum"
    bank_size: int = 128_000
    t_teacher: float = 0.04
    t_student: float = 0.04
    momentum: float = 0.999
    epochs: int = 130
    batch_size: int = 256
    lr: float = 0.01
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    lr_steps: tuple[int, ...] = (90, 120)
    lr_gamma: float = 0.2
    input_size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    seed: int = 0
    probe_size: int = 256
    workers: int = 2
    prefetch_factor: int = 2
    decode: str = "cpu"
    device: str = "auto"
    log_every: int = 20
    ckpt_every: int = 500
    max_steps: int | None = None
    compile: bool = False
    fresh: bool = False
    progress: bool = True
    shared_cache: bool = False
    bank: str = "queue"
    neighbours: int = 1024
    random_anchors: int = 4096
    tail_correction: bool = True
    bank_dtype: str = "auto"

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"--schedule must be step or cosine, got {self.schedule!r}")
        for name in ("epochs", "batch_size", "bank_size", "dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.workers < 0 or self.prefetch_factor <= 0:
            raise ValueError(f"--workers must be >= 0 and --prefetch-factor positive, got {self.workers} and {self.prefetch_factor}")
        if self.decode not in DECODERS:
            raise ValueError(f"--decode must be one of {', '.join(DECODERS)}, got {self.decode!r}")
        if self.bank_dtype not in BANK_DTYPES:
            raise ValueError(f"--bank-dtype must be one of {', '.join(BANK_DTYPES)}, got {self.bank_dtype!r}")
        if self.bank not in BANKS:
            raise ValueError(f"--bank must be one of {', '.join(BANKS)}, got {self.bank!r}")
        if self.bank == "static-faiss":
            if self.variant != "1q":
                raise ValueError(f"--bank static-faiss compares the projected student with teacher anchors (1q-style); it needs --variant 1q, got {self.variant!r}")
            if self.neighbours <= 0 or self.random_anchors < 0:
                raise ValueError(f"--neighbours must be positive and --random-anchors >= 0, got {self.neighbours} and {self.random_anchors}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(cfg: DistillConfig, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """Step schedule (x gamma at each milestone epoch) or cosine over all steps."""
    if cfg.schedule == "cosine":
        progress = (epoch * steps_per_epoch + step_in_epoch) / max(1, cfg.epochs * steps_per_epoch)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_steps)


def has_native_bf16_matmul(device: torch.device) -> bool:
    """Whether bf16 GEMMs on ``device`` run on bf16 hardware (CUDA, or a CPU with AMX or
    AVX512-BF16), where they cost about half of fp32 or less; elsewhere bf16 is emulated."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch.cpu probes (torch >= 2.3)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def legacy_bank_dtype(device: torch.device) -> torch.dtype:
    """What ``auto`` meant before it looked at the CPU: bf16 on CUDA, fp32 on CPU. A run whose
    bank precision is this one keeps its fingerprint (so older runs still resume)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_bank_dtype(name: str, device: torch.device, previous: str | None = None) -> torch.dtype:
    """The bank precision a run uses.

    ``auto``: ``previous`` (the precision this output directory's run was started with, from its
    ``config.json``) when there is one, so that a run resumed on another machine keeps its
    numerics; else bf16 where the device has bf16 matrix hardware (the design: the similarity
    GEMMs are 25-40 % of a step in fp32; bench/RESULTS.md measures it on CPU too), else fp32.
    """
    if name != "auto":
        return getattr(torch, name)
    if previous is not None:
        return getattr(torch, previous)
    return torch.bfloat16 if has_native_bf16_matmul(device) else torch.float32


def previous_bank_dtype(out: str, device: torch.device) -> str | None:
    """The bank precision of the run in ``out`` (``None`` when there is no checkpoint there):
    the ``resolved_bank_dtype`` of its ``config.json``; for a run written before that was
    recorded, what its ``bank_dtype`` meant then (``auto``: ``legacy_bank_dtype``)."""
    config_path = os.path.join(out, "config.json")
    if not os.path.exists(os.path.join(out, CHECKPOINT)) or not os.path.exists(config_path):
        return None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    value = config.get("resolved_bank_dtype")
    if value is None:
        requested = config.get("bank_dtype", "auto")
        value = str(legacy_bank_dtype(device)).removeprefix("torch.") if requested == "auto" else requested
    return value if value in ("float32", "bfloat16") else None


def fingerprint(cfg: DistillConfig, targets: TeacherTargets, decode: str = "cpu", bank_dtype: str | None = None) -> str:
    """Identity of a run: training-relevant config + the cache's shard checksums + the data
    listing + the decoder that actually runs (GPU decoding gives slightly different pixels) +
    the bank precision when it is not the device's default (``bank_dtype``, else None)."""
    fields = {k: v for k, v in cfg.to_json().items() if k not in RUNTIME_FIELDS and k not in ("cache", "data", "bank_dtype")}
    if bank_dtype is not None:
        fields["bank_dtype"] = bank_dtype
    if decode != "cpu":
        fields["decode"] = decode
    if cfg.bank == "queue":
        fields = {k: v for k, v in fields.items() if k not in STATIC_FIELDS}
    elif not cfg.tail_correction:
        del fields["tail_correction"]  # the support as it was before the correction existed: older runs still resume
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for rec in targets.store.manifest.shards:
        h.update(str(rec.checksum).encode())
    h.update(targets.images.fingerprint().encode())
    return h.hexdigest()[:24]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{D.local_rank()}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_decode(requested: str, device: torch.device) -> str:
    """The decoder that runs: ``gpu`` needs a CUDA training device, else CPU with a message."""
    if requested == "gpu" and device.type != "cuda":
        log.warning("--decode gpu needs a CUDA device (this run uses %s): decoding on the CPU in the DataLoader workers instead", device)
        return "cpu"
    return requested


class QueryNetwork(nn.Module):
    """The trained parameters as one module, which is what DDP wraps (so the 1q projection's
    gradients are all-reduced with the student's).

    ``forward``: normalised images ``(B, 3, S, S)`` -> ``(head output (B, D_s), L2-normalised
    query (B, D_q))`` with ``D_q = D_t`` through the 1q projection, else ``D_s``.
    """

    def __init__(self, student: Student, projection: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.student(x)
        return out, normalised_query(out, self.projection)


class Trainer:
    """State of one run; ``train()`` runs it to the end (or to ``max_steps``)."""

    def __init__(self, cfg: DistillConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        D.init_from_env(self.device)
        torch.manual_seed(cfg.seed)
        self.targets = load_targets(cfg.cache, cfg.data or "", self.device, shared=cfg.shared_cache)
        self.decode = resolve_decode(cfg.decode, self.device)
        if self.targets.views is not None:
            log.info("%s: %d-view cache: each image's student crop is one of its cached views, picked per epoch "
                     "(--crop-scale is not used)", self.targets.store.path, self.targets.views)
        n = len(self.targets.images)
        self.bank_size = min(cfg.bank_size, n)
        if self.bank_size < cfg.bank_size:
            log.warning("bank size %d > %d training images: using %d anchors", cfg.bank_size, n, self.bank_size)
        self.student: Student = build_student(cfg.student, cfg.dim).to(self.device)
        self.input_size = cfg.input_size or self.student.spec.input_size
        self.key_student: Student | None = None
        previous = None if cfg.fresh else previous_bank_dtype(self.out, self.device)
        bank_dtype = resolve_bank_dtype(cfg.bank_dtype, self.device, previous)
        self.bank_dtype = str(bank_dtype).removeprefix("torch.")
        if cfg.bank_dtype == "auto":
            log.info("bank precision: %s (--bank-dtype auto%s)", self.bank_dtype,
                     ", as this run was started" if previous else "")
        self.bank_dtype_override = None if bank_dtype == legacy_bank_dtype(self.device) else self.bank_dtype
        if cfg.bank == "static-faiss":
            self.objective: CompRessObjective | StaticSupportObjective = self._static_objective(bank_dtype)
        else:
            self.objective = CompRessObjective(cfg.variant, self.targets.dim, cfg.dim, self.bank_size, cfg.t_teacher, cfg.t_student, bank_dtype).to(self.device)
        self.world = D.world_size()
        # what DDP wraps; the unwrapped self.student is what is saved, exported and EMA-copied
        self.model: nn.Module = QueryNetwork(self.student, self.objective.projection)
        if self.world > 1:
            # the constructor broadcasts rank 0's parameters and buffers, and (DDP's default) every
            # forward re-broadcasts rank 0's buffers, so BN running statistics stay rank 0's
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.objective.uses_key_student:
            self.key_student = copy.deepcopy(self.student)  # after the DDP broadcast: the same start on every rank
            for p in self.key_student.parameters():
                p.requires_grad_(False)
        params = list(self.student.parameters()) + list(self.objective.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.sampler = EpochBatchSampler(n, cfg.batch_size, cfg.seed, D.rank(), self.world)
        self.global_batch = self.sampler.global_batch
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} training images are fewer than one batch of {self.global_batch} "
                             f"({cfg.batch_size} x {self.world} processes); lower --batch-size")
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.fingerprint = fingerprint(cfg, self.targets, self.decode, self.bank_dtype_override)
        self.probe_rows = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[: min(cfg.probe_size, n)]

    def _static_objective(self, compute_dtype: torch.dtype) -> StaticSupportObjective:
        """``--bank static-faiss``: load the neighbour table, computing what is missing first (split
        between the ranks under torchrun)."""
        from distill.neighbours import ensure_neighbours

        emb = self.targets.embeddings
        if emb.device.type != self.device.type:  # the cache stayed in host memory
            raise ValueError(
                f"--bank static-faiss gathers B x K teacher vectors per step and needs the cache on the GPU, but "
                f"{self.targets.store.path} ({emb.numel() * emb.element_size() / 1e9:.1f} GB) does not fit in half of its free "
                "memory; use --bank queue, or a GPU with more memory")
        table = ensure_neighbours(train_store_path(self.cfg.cache), self.cfg.neighbours, shard=(D.rank(), D.world_size()), barrier=D.barrier)
        rows = torch.from_numpy(table.rows).to(self.device)
        return StaticSupportObjective(self.targets.embeddings, rows, self.cfg.dim, self.cfg.random_anchors, self.cfg.t_teacher,
                                      self.cfg.t_student, self.cfg.seed, compute_dtype, self.cfg.tail_correction).to(self.device)

    # ---- helpers ---------------------------------------------------------------------
    def _loader(self, dataset: Any, batches: Any, persistent: bool = False, collate_fn: Any = None) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=persistent and workers > 0, prefetch_factor=self.cfg.prefetch_factor if workers else None,
                          collate_fn=collate_fn)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images.to(self.device, non_blocking=True), self.student.spec.mean, self.student.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.no_grad()
    def embed_reference_views(self, model: Student, rows: torch.Tensor, train_bn: bool = False) -> torch.Tensor:
        """Head outputs ``(R, dim)`` of ``model`` for the reference views of ``rows`` (centre
        crops; cached view 0 of a multi-view cache), matching ``targets.reference``: eval mode,
        or with ``train_bn`` BatchNorm on batch statistics (as the keys enqueued during
        training), run on a copy so that ``model``'s running statistics are left untouched."""
        if train_bn:
            model = copy.deepcopy(model)
        was_training = model.training
        model.train(train_bn)
        recipe = eval_transform_recipe(self.student.spec, self.input_size)
        dataset = ReferenceImages(self.targets.images, recipe["crop"], recipe["resize"], self.targets.crops)
        batches = [rows[i:i + self.cfg.batch_size].tolist() for i in range(0, len(rows), self.cfg.batch_size)]
        if train_bn and len(batches) > 1 and len(batches[-1]) == 1:  # BN batch statistics need 2+ images
            batches[-2] += batches.pop()
        out = []
        for images, _ in self._loader(dataset, batches):
            with self._autocast():
                out.append(model(self._to_input(images)).float())
        model.train(was_training)
        return torch.cat(out)

    def probe_metrics(self, k: int = OVERLAP_K) -> dict[str, float]:
        """How alike the student's and the teacher's neighbourhoods are on the fixed probe set.

        Returns ``{"agreement": a, f"overlap{k}": o}``: ``a`` is the fraction of probe images whose
        nearest other probe is the same for teacher and student (a coarse signal: with a few
        dozen probes it moves by whole images); ``o`` is the mean fraction of each probe's ``k``
        nearest teacher neighbours that are among its ``k`` nearest student neighbours
        (``k`` clipped to the probes - 1), a much steadier measure of the same thing.
        """
        rows = self.probe_rows
        with torch.no_grad():
            s = self.objective.student_query(self.embed_reference_views(self.student, rows))
        t = self.targets.reference(rows).to(s.device)
        sims_s, sims_t = s @ s.T, t @ t.T
        sims_s.fill_diagonal_(-2)
        sims_t.fill_diagonal_(-2)
        k = max(1, min(k, len(rows) - 1))
        top_s, top_t = sims_s.topk(k, dim=1).indices, sims_t.topk(k, dim=1).indices
        shared = (top_s.unsqueeze(2) == top_t.unsqueeze(1)).any(2).float().sum(1) / k
        return {"agreement": float((sims_s.argmax(1) == sims_t.argmax(1)).float().mean()), f"overlap{OVERLAP_K}": float(shared.mean())}

    def init_banks(self) -> None:
        """Fill the banks from real data: teacher rows of ``bank_size`` random images and the
        (key) student's embeddings of the same images, computed as the keys enqueued during
        training are (BN on batch statistics): an untrained student in eval mode (running
        statistics 0/1) maps every image to nearly the same vector, a bank with no signal."""
        if self.cfg.bank == "static-faiss":
            return  # the static support is the whole cached split: nothing to fill
        rows = torch.randperm(len(self.targets.images), generator=torch.Generator().manual_seed(self.cfg.seed + 2))[: self.bank_size]
        key = None
        if self.objective.student_bank is not None:
            key = self.embed_reference_views(self.key_student or self.student, rows, train_bn=True)
        self.objective.fill(self.targets.reference(rows), key, rows.to(self.device))

    # ---- checkpoints ------------------------------------------------------------------
    @property
    def out(self) -> str:
        return self.cfg.out or "."

    def state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint; ``rng_states`` holds every rank's random states, in rank order."""
        return {
            "format": "compress-distill-checkpoint/2",
            "fingerprint": self.fingerprint,
            "config": json.dumps(self.cfg.to_json(), default=str),
            "student_name": self.cfg.student,
            "student": self.student.state_dict(),
            "key_student": self.key_student.state_dict() if self.key_student is not None else {},
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_states,
            "world_size": self.world,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "teacher": str(self.targets.store.provenance.get("teacher", "unknown")),
            "input_size": self.input_size,
        }

    def replicated_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors every rank must hold identically: banks (anchors, pointers, row ids), the 1q
        projection, the student's and the key student's parameters. (BN running statistics are
        left out: each rank updates them from its own batch after rank 0's are broadcast.)"""
        # (a module's non-tensor extra state, e.g. the static support's step counter, is skipped)
        out = {f"objective.{k}": v for k, v in self.objective.state_dict().items() if isinstance(v, torch.Tensor)}
        out.update({f"student.{k}": v for k, v in self.student.named_parameters()})
        if self.key_student is not None:
            out.update({f"key_student.{k}": v for k, v in self.key_student.named_parameters()})
        return out

    def save(self) -> None:
        """Check the ranks agree, then write the checkpoint atomically (rank 0 only)."""
        D.check_same_across_ranks(self.replicated_tensors())
        rng_states = D.all_gather_object(capture_rng_state())
        if D.rank() == 0:
            save_atomic(self.state(rng_states), os.path.join(self.out, CHECKPOINT))
        D.barrier()

    def try_resume(self) -> bool:
        path = os.path.join(self.out, CHECKPOINT)
        if not os.path.exists(path):
            return False
        ckpt = load_checkpoint(path)
        if ckpt.get("fingerprint") != self.fingerprint:
            if self.cfg.fresh:
                return False
            raise RunMismatchError(
                f"{self.out} holds a run with a different config or cache (fingerprint {ckpt.get('fingerprint')} vs "
                f"{self.fingerprint}); use another --out, or --fresh to start over there"
            )
        if self.cfg.fresh:
            return False
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.world:
            raise RunMismatchError(
                f"{path} was written by a run with {saved_world} processes and this one has {self.world}; the global batch and "
                f"the data order depend on it. Resume with {saved_world} processes, or use another --out (or --fresh)"
            )
        self.student.load_state_dict(ckpt["student"])
        if self.key_student is not None:
            self.key_student.load_state_dict(ckpt["key_student"])
        self.objective.load_state_dict(ckpt["objective"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "rng" in ckpt:
            restore_rng_state(ckpt["rng"][D.rank()])
        else:  # format 1: torch states only
            torch.set_rng_state(ckpt["torch_rng"])
            if torch.cuda.is_available() and ckpt["cuda_rng"]:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        return True

    # ---- training -----------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, rows: torch.Tensor, views: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step on this rank's batch; returns the (device) loss.

        Args:
            images: uint8 ``(B, 3, S, S)`` student inputs.
            rows: ``(B,)`` int64 dataset rows.
            views: ``(B,)`` int64 cached view of each row (0 for a single-view cache).
            lr: learning rate of this step.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self._to_input(images)
        # rows and views as the loader gives them (pinned on CUDA): the copies are asynchronous,
        # so the host never waits for the previous step here (a blocking copy would synchronise)
        teacher = self.targets.gather(rows, views)
        rows = rows.to(self.device, non_blocking=True)
        with self._autocast():
            student_out, query = self.model(x)
            loss = self.objective.query_loss(query, teacher, rows)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        key = self.momentum_key(x)
        if key is None and self.objective.student_bank is not None:
            key = student_out.detach().float()
        self.objective.enqueue(D.all_gather_cat(teacher), None if key is None else D.all_gather_cat(key), D.all_gather_cat(rows))
        return loss.detach()

    @torch.no_grad()
    def momentum_key(self, x: torch.Tensor) -> torch.Tensor | None:
        """``2q-momentum``, after the optimizer step: move the key student towards the student
        (EMA of the parameters, copy of the buffers) and return its float32 output ``(B, D_s)``
        for the normalised input ``x``; ``None`` for the variants without a key student."""
        if self.key_student is None:
            return None
        for pk, ps in zip(self.key_student.parameters(), self.student.parameters()):
            pk.mul_(self.cfg.momentum).add_(ps.detach(), alpha=1 - self.cfg.momentum)
        for bk, bs in zip(self.key_student.buffers(), self.student.buffers()):
            bk.copy_(bs)
        with self._autocast():
            return self.key_student(x).float()  # BN in train mode, as the reference

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        os.makedirs(self.out, exist_ok=True)
        resumed = self.try_resume()  # raises (before config.json is touched) for another run's directory
        if D.rank() == 0:
            config = {**cfg.to_json(), "resolved_bank_dtype": self.bank_dtype, "fingerprint": self.fingerprint}
            write_atomic(os.path.join(self.out, "config.json"), lambda f: f.write(json.dumps(config, indent=2, default=str).encode()))
        metrics_path = os.path.join(self.out, "metrics.jsonl")
        if resumed:
            if D.rank() == 0:
                _truncate_metrics(metrics_path, self.global_step)
            log.info("resumed %s at epoch %d step %d", self.out, self.epoch, self.global_step)
        else:
            self.init_banks()
            if D.rank() == 0:
                open(metrics_path, "w").close()
                self._log_metric(metrics_path, {"step": 0, "epoch": 0, **self.probe_metrics()})
        self.student.train()
        start_step = self.global_step
        total_steps = cfg.epochs * self.steps_per_epoch
        bar = None
        if cfg.progress and D.rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, initial=self.global_step, desc=f"distill {cfg.student}", unit="step", dynamic_ncols=True)
        pending: list[torch.Tensor] = []
        # img/s counts training time only: checkpoints and probes in between are subtracted
        last_time, last_step, paused = time.perf_counter(), self.global_step, 0.0
        gpu_decoder = GpuViewDecoder(self.input_size, self.device) if self.decode == "gpu" else None
        dataset = AugmentedImages(self.targets.images, self.input_size, cfg.crop_scale, cfg.seed, self.targets.crops,
                                  encoded=gpu_decoder is not None)
        # one loader for all epochs (persistent workers); the sampler says which epoch and step
        loader = self._loader(dataset, self.sampler, persistent=True, collate_fn=collate_encoded if gpu_decoder else None)
        stopped = False
        while self.epoch < cfg.epochs and not stopped:
            self.sampler.set_epoch(self.epoch, self.step_in_epoch)
            for images, rows, views in loader:
                if gpu_decoder is not None:
                    images = gpu_decoder(images)
                lr = learning_rate(cfg, self.epoch, self.step_in_epoch, self.steps_per_epoch)
                pending.append(self.train_step(images, rows, views, lr))
                self.step_in_epoch += 1
                self.global_step += 1
                if bar is not None:
                    bar.update(1)
                if self.global_step % cfg.log_every == 0:
                    loss = float(D.mean_over_ranks(torch.stack(pending).mean()))  # the only host sync, every log_every steps
                    pending.clear()
                    now = time.perf_counter()
                    rate = (self.global_step - last_step) * self.global_batch / max(now - last_time - paused, 1e-9)
                    last_time, last_step, paused = now, self.global_step, 0.0
                    if D.rank() == 0:
                        self._log_metric(metrics_path, {"step": self.global_step, "epoch": self.epoch, "loss": loss, "lr": lr, "img_per_s": rate})
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", img_s=f"{rate:.0f}")
                if self.global_step % cfg.ckpt_every == 0:
                    pause_start = time.perf_counter()
                    self.save()
                    paused += time.perf_counter() - pause_start
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    stopped = True
                    break
            if not stopped:
                pause_start = time.perf_counter()
                self.epoch += 1
                self.step_in_epoch = 0
                if D.rank() == 0:
                    self._log_metric(metrics_path, {"step": self.global_step, "epoch": self.epoch, **self.probe_metrics()})
                self.save()
                paused += time.perf_counter() - pause_start
        if bar is not None:
            bar.close()
        if self.global_step != start_step:  # a finished run that is rerun keeps its checkpoint byte for byte
            self.save()
        if self.world > 1:
            log.info("banks, student and key student are identical on all %d ranks (checked at every checkpoint)", self.world)
        if D.rank() == 0:
            plot_loss_curve(metrics_path, os.path.join(self.out, "loss_curve.png"))
        return {"out": self.out, "global_step": self.global_step, "epoch": self.epoch, "finished": self.epoch >= cfg.epochs}

    @staticmethod
    def _log_metric(path: str, record: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not os.path.exists(path):
        return
    keep = [line for line in open(path) if line.strip() and json.loads(line)["step"] <= step]
    # the checkpoint's own step may have an agreement line logged before the kill; keep one copy
    with open(path, "w") as f:
        f.writelines(keep)


def plot_loss_curve(metrics_path: str, png_path: str) -> None:
    """Loss (and neighbour agreement) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in open(metrics_path) if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    overlap = f"overlap{OVERLAP_K}"
    probes = {"agreement": ("teacher-student NN agreement (top-1)", "tab:orange"),
              overlap: (f"top-{OVERLAP_K} neighbour overlap", "tab:green")}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="CompRess loss (KL)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if any(key in r for r in records for key in probes):
        ax2 = ax.twinx()
        for key, (label, colour) in probes.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax2.plot(*zip(*points), "o-", color=colour, label=label)
        ax2.set_ylabel("neighbour agreement")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(png_path + ".tmp.png", png_path)


def resolve_config(cfg: DistillConfig) -> DistillConfig:
    """Fill ``data`` (from the cache manifest) and ``out`` (``./runs/<student>-from-<teacher>``)."""
    from storage import open_store

    from distill.targets import train_store_path

    store = open_store(train_store_path(cfg.cache))
    changes: dict[str, Any] = {}
    if cfg.data is None:
        data_root = store.provenance.get("data_root") or store.provenance.get("data")
        if not data_root:
            raise ValueError(f"{store.path}: the cache does not record its data root; pass --data")
        changes["data"] = str(data_root)
    if cfg.out is None:
        teacher = str(store.provenance.get("teacher", "teacher"))
        changes["out"] = os.path.join("runs", f"{cfg.student}-from-{teacher}")
    return dataclasses.replace(cfg, **changes)


def run(cfg: DistillConfig) -> dict[str, Any]:
    """Resolve defaults, write ``config.json`` into the run dir and train (resuming if possible)."""
    cfg = resolve_config(cfg)
    try:
        trainer = Trainer(cfg)
        return trainer.train()
    finally:
        D.shutdown()
