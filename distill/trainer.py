"""The trainer: one run's state and its epoch loop (docs/distill.md).

Per step: uint8 batch -> device -> normalise -> student (and key student) forward under
autocast -> gather cached teacher rows (of the chosen views) -> loss against the banks -> SGD
step -> EMA of the key student -> enqueue the (all-gathered) batch. Losses stay on the device
and are read only every ``log_every`` steps. Checkpoints (``distill.checkpoint``; every
``ckpt_every`` steps and every epoch) hold everything needed to continue exactly; rerunning the
same command resumes.

Under ``torchrun`` the trained parameters (student + 1q projection, ``QueryNetwork``) are
wrapped in ``DistributedDataParallel``; BN statistics are per-rank batch statistics, with
running statistics broadcast from rank 0 at every forward. Every rank enqueues the
all-gathered batch, so the banks stay identical; at every checkpoint the ranks compare exact
checksums of banks, student and key student (``RankDivergenceError`` if they differ). Only
rank 0 writes files.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cache_builder import distributed as D
from cache_builder.devices import resolve_device
from distill.checkpoint import CHECKPOINT
from distill.config import DistillConfig
from distill.data import AugmentedImages, ReferenceImages, normalise
from distill.decode import GpuViewDecoder, collate_encoded
from distill.metrics import OVERLAP_K, MetricsLog, TrainingClock, neighbour_agreement, plot_loss_curve
from distill.objective import CompRessObjective, QueryNetwork
from distill.online_teacher import OnlineTeacher, load_online_teacher
from distill.periodic_eval import PeriodicEval
from distill.precision import autocast, dtype_name, previous_bank_dtype, resolve_bank_dtype, resolve_decode
from distill.run_checkpoint import CheckpointedRun
from distill.run_identity import RunIdentity
from distill.sampler import EpochBatchSampler
from distill.schedule import learning_rate
from distill.static_support import StaticSupportObjective
from distill.students import Student, build_student, eval_transform_recipe
from distill.targets import TeacherTargets, load_targets, train_store_path
from distill.tracking import training_tracker
from storage.atomic import write_json_atomic
from storage.errors import UsageError

log = logging.getLogger(__name__)


def build_trainer(cfg: DistillConfig, targets: TeacherTargets | OnlineTeacher | None = None) -> Trainer:
    """A ready ``Trainer`` for validated ``cfg``: device resolved (``--device``), the process
    group joined under torchrun, the cache loaded, or the online teacher (``--teacher``,
    ``distill.online_teacher``), or ``targets`` used as they are (the benchmark's synthetic rows)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    D.init_from_env(device)
    if targets is None and cfg.teacher is not None:
        targets = load_online_teacher(cfg, device)
    elif targets is None:
        targets = load_targets(cfg.cache or "./cache", cfg.data or "", device, shared=cfg.shared_cache, trust_data=cfg.trust_data,
                               image_column=cfg.image_column, label_column=cfg.label_column, verify_load=cfg.verify_load)
    return Trainer(cfg, targets, device)


class Trainer(CheckpointedRun):
    """State of one run; ``train()`` runs it to the end (or to ``max_steps``). ``targets``: the
    cache's rows, or an ``OnlineTeacher`` that embeds each batch's crops (same interface)."""

    def __init__(self, cfg: DistillConfig, targets: TeacherTargets | OnlineTeacher, device: torch.device) -> None:
        self.cfg, self.targets, self.device = cfg, targets, device
        self.decode = resolve_decode(cfg.decode, device)
        if isinstance(targets, TeacherTargets) and targets.views is not None:
            log.info("%s: %d-view cache: each image's student crop is one of its cached views, picked per epoch "
                     "(--crop-scale is not used)", targets.store.path, targets.views)
        n = len(targets.images)
        self.bank_size = min(cfg.bank_size, n)
        if self.bank_size < cfg.bank_size:
            log.warning("bank size %d > %d training images: using %d anchors", cfg.bank_size, n, self.bank_size)
        torch.manual_seed(cfg.seed)
        self.student: Student = build_student(cfg.student, cfg.dim).to(device)
        self.input_size = cfg.input_size or self.student.spec.input_size
        previous = None if cfg.fresh or cfg.out is None else previous_bank_dtype(cfg.out, CHECKPOINT)
        bank_dtype = resolve_bank_dtype(cfg.bank_dtype, device, previous)
        self.bank_dtype = dtype_name(bank_dtype)
        if cfg.bank_dtype == "auto":
            log.info("bank precision: %s (--bank-dtype auto%s)", self.bank_dtype, ", as this run was started" if previous else "")
        if cfg.bank == "static-faiss":
            self.objective: CompRessObjective | StaticSupportObjective = self._static_objective(bank_dtype)
        else:
            self.objective = CompRessObjective(cfg.variant, targets.dim, cfg.dim, self.bank_size, cfg.t_teacher, cfg.t_student,
                                               bank_dtype).to(device)
        self.world = D.world_size()
        # what DDP wraps; the unwrapped self.student is what is saved, exported and EMA-copied
        self.model: nn.Module = QueryNetwork(self.student, self.objective.projection)
        if self.world > 1:
            # the constructor broadcasts rank 0's parameters and buffers, and (DDP's default) every
            # forward re-broadcasts rank 0's buffers, so BN running statistics stay rank 0's
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.key_student: Student | None = None
        if self.objective.uses_key_student:
            self.key_student = copy.deepcopy(self.student)  # after the DDP broadcast: the same start on every rank
            for p in self.key_student.parameters():
                p.requires_grad_(False)
        params = list(self.student.parameters()) + list(self.objective.parameters())
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        if cfg.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]
        self.sampler = EpochBatchSampler(n, cfg.batch_size, cfg.seed, D.rank(), self.world)
        self.global_batch = self.sampler.global_batch
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise UsageError(f"--batch-size {cfg.batch_size}: {n} training images are fewer than one batch of {self.global_batch} "
                             f"({cfg.batch_size} x {self.world} processes)")
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.probe_rows = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[: min(cfg.probe_size, n)]
        self._identity: RunIdentity | None = None
        self.periodic = PeriodicEval.create(cfg, targets, self.input_size, device, D.rank())

    def _static_objective(self, compute_dtype: torch.dtype) -> StaticSupportObjective:
        """``--bank static-faiss``: load the neighbour table, computing what is missing first (split
        between the ranks under torchrun)."""
        from distill.neighbours import ensure_neighbours

        assert isinstance(self.targets, TeacherTargets), "--bank static-faiss needs a cache (DistillConfig.validate)"
        emb = self.targets.embeddings
        if emb.device.type != self.device.type:  # the cache stayed in host memory
            raise UsageError(
                f"--bank static-faiss gathers B x K teacher vectors per step and needs the cache on the GPU, but "
                f"{self.targets.store.path} ({emb.numel() * emb.element_size() / 1e9:.1f} GB) does not fit in half of its free "
                "memory; use --bank queue, or a GPU with more memory")
        table = ensure_neighbours(train_store_path(self.cfg.cache or "./cache"), self.cfg.neighbours, shard=(D.rank(), D.world_size()), barrier=D.barrier)
        rows = torch.from_numpy(table.rows).to(self.device)
        return StaticSupportObjective(emb, rows, self.cfg.dim, self.cfg.random_anchors, self.cfg.t_teacher,
                                      self.cfg.t_student, self.cfg.seed, compute_dtype, self.cfg.tail_correction).to(self.device)

    @property
    def identity(self) -> RunIdentity:
        """This run's identity (``distill.run_identity``), computed once."""
        if self._identity is None:
            self._identity = RunIdentity.of(self.cfg, self.targets.fingerprint, self.targets.images.fingerprint(),
                                            decode=self.decode, bank_dtype=self.bank_dtype)
        return self._identity

    # ---- inputs and reference embeddings ---------------------------------------------------
    def _loader(self, dataset: Any, batches: Any, persistent: bool = False, collate_fn: Any = None) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=persistent and workers > 0, prefetch_factor=self.cfg.prefetch_factor if workers else None,
                          collate_fn=collate_fn)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images.to(self.device, non_blocking=True), self.student.spec.mean, self.student.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def _autocast(self) -> Any:
        return autocast(self.device)

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
        """Teacher-student neighbour agreement on the fixed probe set (``metrics.neighbour_agreement``)."""
        rows = self.probe_rows
        with torch.no_grad():
            s = self.objective.student_query(self.embed_reference_views(self.student, rows))
        return neighbour_agreement(s, self.targets.reference(rows).to(s.device), k)

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
        assert isinstance(self.objective, CompRessObjective), "only queue banks are filled from reference views"
        self.objective.fill(self.targets.reference(rows), key, rows.to(self.device))

    # ---- training ---------------------------------------------------------------------------
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
        images = images.to(self.device, non_blocking=True)
        x = self._to_input(images)
        # rows and views as the loader gives them (pinned on CUDA): the copies are asynchronous,
        # so the host never waits for the previous step here (a blocking copy would synchronise)
        teacher = self.targets.for_batch(images, rows, views)  # cached rows, or the online teacher on these crops
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
        """Resume or start the run in ``out``, train to the end (or ``max_steps``), checkpoint.

        Returns ``{"out", "global_step", "epoch", "finished"}``.
        """
        os.makedirs(self.out, exist_ok=True)
        resumed = self.try_resume()  # raises (before config.json is touched) for another run's directory
        tracker = training_tracker(self.cfg, self.out, self.global_step if resumed else None) if D.rank() == 0 else None
        metrics = MetricsLog(os.path.join(self.out, "metrics.jsonl"), tracker)
        if D.rank() == 0:
            write_json_atomic(os.path.join(self.out, "config.json"), {
                **self.cfg.to_json(), "resolved_bank_dtype": self.bank_dtype, "lr_schedule": self.cfg.schedule_summary(),
                "fingerprint": self.fingerprint})
        if resumed:
            if D.rank() == 0:
                metrics.truncate_after(self.global_step)
            log.info("resumed %s at epoch %d step %d", self.out, self.epoch, self.global_step)
        else:
            self.init_banks()
            if D.rank() == 0:
                metrics.start()
                metrics.append({"step": 0, "epoch": 0, **self.probe_metrics(), **(self.periodic.reference() if self.periodic else {})})
        start_step = self.global_step
        self._epoch_loop(metrics)
        if self.global_step != start_step:  # a finished run that is rerun keeps its checkpoint byte for byte
            self.save()
        if self.world > 1:
            log.info("banks, student and key student are identical on all %d ranks (checked at every checkpoint)", self.world)
        if D.rank() == 0:
            plot_loss_curve(metrics.path, os.path.join(self.out, "loss_curve.png"))
            metrics.close(self.finished)
        return {"out": self.out, "global_step": self.global_step, "epoch": self.epoch, "finished": self.finished}

    def _step_limit_reached(self) -> bool:
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    def _epoch_loop(self, metrics: MetricsLog) -> None:
        """Epochs from the current position until the last one or ``max_steps``; an epoch whose
        last step is the ``max_steps``-th still ends (probe, checkpoint, ``epoch`` + 1)."""
        cfg = self.cfg
        self.student.train()
        bar = None
        if cfg.progress and D.rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs * self.steps_per_epoch, initial=self.global_step, desc=f"distill {cfg.student}",
                       unit="step", dynamic_ncols=True)
        gpu_decoder = GpuViewDecoder(self.input_size, self.device) if self.decode == "gpu" else None
        dataset = AugmentedImages(self.targets.images, self.input_size, cfg.crop_scale, cfg.seed, self.targets.crops,
                                  encoded=gpu_decoder is not None, decode_scale=cfg.decode_scale)
        # one loader for all epochs (persistent workers); the sampler says which epoch and step
        loader = self._loader(dataset, self.sampler, persistent=True, collate_fn=collate_encoded if gpu_decoder else None)
        clock = TrainingClock(self.global_step)
        pending: list[torch.Tensor] = []
        while not self.finished and not self._step_limit_reached():
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
                    self._log_losses(metrics, pending, lr, clock, bar)
                if self.global_step % cfg.ckpt_every == 0:
                    clock.pause(self.save)
                if self._step_limit_reached():
                    break
            if self.step_in_epoch < self.steps_per_epoch:
                break  # stopped by --max-steps inside the epoch
            clock.pause(lambda: self._end_epoch(metrics))
        if bar is not None:
            bar.close()

    def _log_losses(self, metrics: MetricsLog, pending: list[torch.Tensor], lr: float, clock: TrainingClock, bar: Any) -> None:
        """Read the pending losses (the only host sync, every ``log_every`` steps) and log them."""
        loss = float(D.mean_over_ranks(torch.stack(pending).mean()))
        pending.clear()
        rate = clock.rate(self.global_step) * self.global_batch
        if D.rank() == 0:
            metrics.append({"step": self.global_step, "epoch": self.epoch, "loss": loss, "lr": lr, "img_per_s": rate})
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", img_s=f"{rate:.0f}")

    def _end_epoch(self, metrics: MetricsLog) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        if D.rank() == 0:
            knn = self.periodic.evaluate(self.student) if self.periodic and self.periodic.due(self.epoch) else {}
            metrics.append({"step": self.global_step, "epoch": self.epoch, **self.probe_metrics(), **knn})
        self.save()
