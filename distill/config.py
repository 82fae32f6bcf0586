"""What a distillation run depends on: ``DistillConfig``, its validation and its resolution.

Every field is declared once, with its default and its ``--option`` help (``storage.config_options``
generates ``compress-distill run``'s options from them). The defaults are the paper's recipe
(docs/distill.md): 130 epochs, SGD at lr 0.01 (momentum 0.9, weight decay 1e-4), x0.2 at epochs
90 and 120, temperature 0.04, a 128k-anchor bank; ``lr_steps`` left unset scales those
milestones to ``--epochs`` (90/130 and 120/130 of the run).

``validate()`` checks every value before any work starts and raises ``UsageError`` naming the
option; ``resolve_config`` fills what follows from the cache (``data``, ``out``) and the
schedule, and ``check_output_dir`` refuses an ``--out`` that cannot be a directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from cache_builder.home import file_name
from storage.config_options import setting
from storage.errors import UsageError

log = logging.getLogger(__name__)

VARIANTS = ("2q", "2q-momentum", "1q")  # the CompRess bank variants (distill.objective)
BANKS = ("queue", "static-faiss")
BANK_DTYPES = ("auto", "float32", "bfloat16")
DECODERS = ("cpu", "gpu")  # where JPEGs are decoded (distill.decode)
SCHEDULES = ("step", "cosine")
PAPER_EPOCHS = 130
PAPER_LR_STEPS = (90, 120)  # milestones of the paper's 130-epoch run; scaled to --epochs when --lr-steps is not given
# fields that do not change what is trained, so they may differ on resume (the cache, weights and
# data paths included: their contents are part of the run identity, distill.run_identity)
RUNTIME_FIELDS = ("cache", "weights", "data", "out", "workers", "prefetch_factor", "log_every", "ckpt_every", "max_steps", "device",
                  "compile", "fresh", "progress", "shared_cache", "trust_data", "verify_load", "image_column",
                  "label_column", "eval_every", "eval_train_size", "loggers", "mlflow_uri")
# the online teacher's options: part of the identity of an online run only (a cached run's
# identity is what it was before they existed, so its checkpoints still resume)
ONLINE_FIELDS = ("teacher", "teacher_arch", "teacher_prefix", "teacher_embed_layer", "teacher_input_size", "teacher_resize_size")


@dataclass(frozen=True)
class DistillConfig:
    """Everything a distillation run depends on (defaults = the paper's recipe, module doc)."""

    cache: str | None = setting(None, "Teacher cache directory (from compress-cache build) [default: ./cache unless "
                                      "--teacher is given].")
    teacher: str | None = setting(None, "Online teacher instead of a cache: a compress-cache list-teachers name (or custom "
                                        "with --teacher-arch), run every step on the student's crops (docs/distill.md, "
                                        "'Online teacher').")
    weights: str | None = setting(None, "--teacher's local weights file [default: $COMPRESS_HOME/weights/<teacher>.pth].")
    teacher_arch: str | None = setting(None, "--teacher custom: a torchvision model name.")
    teacher_prefix: str = setting("", "--teacher custom: key prefix to strip (e.g. module.backbone.).")
    teacher_embed_layer: str | None = setting(None, "--teacher custom: submodule whose (pooled) output is the embedding.")
    teacher_input_size: int | None = setting(None, "--teacher's input size (the student's crops are resized to it) "
                                                   "[default: the teacher spec's, 224].")
    teacher_resize_size: int | None = setting(None, "--teacher's resize before its centre crop for the reference views "
                                                    "(bank init, probes) [default: teacher input size x 256/224].")
    data: str | None = setting(None, "Images the cache was built from: image root, file list, tar shards or Parquet files "
                                     "(directory, brace pattern or fsspec URL) [default: recorded in the cache manifest; "
                                     "required with --teacher].")
    out: str | None = setting(None, "Run directory [default: ./runs/<student>-from-<teacher>].")
    student: str = setting("resnet18", "Student architecture: see compress-distill list-students (or any torchvision "
                                       "classification model name, or any timm model as timm:<name>).")
    dim: int = setting(128, "Student head dimension (8192 for a ResNet-50 student of an R50x4 teacher).")
    variant: str = setting("2q-momentum", "Bank variant (docs/distill.md): 2q, 2q-momentum or 1q.", choices=VARIANTS)
    bank: str = setting("queue", "queue: FIFO memory bank(s) of recent batches (the paper). static-faiss: each image's "
                                 "top-K teacher neighbours over the whole cached train split + R random anchors (1q-style).",
                        choices=BANKS)
    bank_size: int = setting(128_000, "Anchors in the memory bank (capped at the number of images).")
    neighbours: int = setting(1024, "static-faiss: teacher neighbours K per image (computed on demand).")
    random_anchors: int = setting(4096, "static-faiss: random anchors R per step, shared by the batch.")
    tail_correction: bool = setting(True, "static-faiss: weight each random anchor as N/R train rows (and drop those among "
                                          "the query's neighbours), so the support's softmax estimates the one over the "
                                          "whole split; off: the K + R anchors as they are.")
    t_teacher: float = setting(0.04, "Teacher softmax temperature (> 0).")
    t_student: float = setting(0.04, "Student softmax temperature (> 0).")
    momentum: float = setting(0.999, "EMA momentum of the key student (2q-momentum), in [0, 1).")
    epochs: int = setting(PAPER_EPOCHS, "Training epochs (the paper: 130).")
    batch_size: int = setting(256, "Per-process batch size.")
    lr: float = setting(0.01, "Base learning rate of SGD (the paper: 0.01).")
    sgd_momentum: float = setting(0.9, "SGD momentum, in [0, 1).")
    weight_decay: float = setting(1e-4, "SGD weight decay (>= 0).")
    schedule: str = setting("step", "Learning-rate schedule: step (x --lr-gamma at each of --lr-steps) or cosine.",
                            choices=SCHEDULES)
    lr_steps: tuple[int, ...] | None = setting(None, "Epochs at which the step schedule multiplies the lr by --lr-gamma "
                                                     "[default: the paper's 90,120 of 130 epochs, scaled to --epochs]; "
                                                     "'' for none.")
    lr_gamma: float = setting(0.2, "Factor of the step schedule at each milestone, in (0, 1].")
    input_size: int | None = setting(None, "Student crop size [default: the student's spec].")
    crop_scale: tuple[float, float] = setting((0.08, 1.0), "RandomResizedCrop area range lo,hi with 0 < lo <= hi <= 1.")
    seed: int = setting(0, "Random seed (initialisation, data order, augmentation).")
    probe_size: int = setting(256, "Images of the fixed probe set whose teacher-student neighbour agreement is logged.")
    workers: int = setting(2, "DataLoader worker processes per rank (persistent across epochs).")
    prefetch_factor: int = setting(2, "Batches each worker loads ahead.")
    decode: str = setting("cpu", "Decode JPEGs in the workers (cpu) or on the training GPU (gpu; falls back to cpu "
                                 "without CUDA).", choices=DECODERS)
    # input pipeline: reduced-scale JPEG decoding (distill.data), Parquet columns
    decode_scale: str = setting("off", "auto: decode a JPEG through libjpeg's DCT scaling (1/2, 1/4, 1/8) when its crop is "
                                       "downscaled >= 2x to the input size (same crop boxes, slightly different pixels: "
                                       "~43-45 dB PSNR); off: decode every image fully. CPU decoding only.",
                                choices=("auto", "off"))
    image_column: str | None = setting(None, "Parquet --data: the column of image bytes [default: the one the cache was "
                                             "built from].")
    label_column: str | None = setting(None, "Parquet --data: the column of class indices [default: the one the cache was "
                                             "built from].")
    device: str = setting("auto", "auto (this process's GPU when CUDA is available, else cpu), cpu, cuda or cuda:N.")
    log_every: int = setting(20, "Read the loss (a host sync) every N steps.")
    ckpt_every: int = setting(500, "Checkpoint every N steps (and every epoch).")
    max_steps: int | None = setting(None, "Stop after this many steps in total (rerun the command to continue).")
    compile: bool = setting(False, "torch.compile the student.", flag="--compile")
    fresh: bool = setting(False, "Start over in --out even if it holds a different run.", flag="--fresh")
    progress: bool = setting(True, "Show a progress bar.")
    shared_cache: bool = setting(False, "Memory-map one node-wide copy of the cache for all local ranks.", flag="--shared-cache")
    trust_data: bool = setting(False, "Skip the check that the images are unchanged since the cache was built (for "
                                      "read-only mounts whose mtimes change).", flag="--trust-data")
    verify_load: bool = setting(True, "Check the cached embeddings' CRC32C checksums as they are loaded (once per run; "
                                      "about as costly as the read itself on a busy 2-core machine, overlapped with it "
                                      "where cores are idle). --no-verify-load skips it.")
    eval_every: int | None = setting(None, "Evaluate the student's backbone (kNN-20, DINO protocol, val vs train, eval "
                                           "transform) every N epochs and after the last, logged as knn_top1 [default: 5 "
                                           "evaluations over the run when the cache has a labelled val split, else off]; 0: off.")
    eval_train_size: int = setting(2_000, "Train rows (a fixed seeded subsample) the evaluation's val images are "
                                           "compared with; 0: all.")
    loggers: tuple[str, ...] = setting(("jsonl",), "Experiment trackers (--logger, repeatable; distill.tracking).", cli=False)
    mlflow_uri: str | None = setting(None, "MLflow tracking URI (a local store): default sqlite:///<run dir>/mlflow.db; "
                                           "file:./mlruns for a file store.")
    bank_dtype: str = setting("auto", "Precision of the banks and their similarity GEMMs: auto = bfloat16 on GPUs and on CPUs "
                                      "with bf16 matrix units (AMX, AVX512-BF16), else float32; a resumed run keeps the "
                                      "precision it started with.", choices=BANK_DTYPES)

    def validate(self) -> None:
        """Raise ``UsageError`` naming the first option whose value is invalid."""
        _choice("--variant", self.variant, VARIANTS)
        _choice("--bank", self.bank, BANKS)
        _choice("--schedule", self.schedule, SCHEDULES)
        _choice("--decode", self.decode, DECODERS)
        _choice("--bank-dtype", self.bank_dtype, BANK_DTYPES)
        _choice("--decode-scale", self.decode_scale, ("auto", "off"))
        for logger in self.loggers:
            _choice("--logger", logger, ("jsonl", "tensorboard", "mlflow"))  # distill.tracking.LOGGERS
        for name in ("epochs", "batch_size", "bank_size", "dim", "prefetch_factor", "log_every", "ckpt_every", "probe_size"):
            _positive(name, getattr(self, name))
        for name in ("lr", "t_teacher", "t_student"):
            _positive(name, getattr(self, name))
        if self.eval_every is not None and self.eval_every < 0:
            raise UsageError(f"--eval-every must be >= 0 (0: off), got {self.eval_every}")
        if self.eval_train_size < 0:
            raise UsageError(f"--eval-train-size must be >= 0 (0: all train rows), got {self.eval_train_size}")
        for name in ("input_size", "max_steps"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name in ("momentum", "sgd_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.lr_gamma <= 1:
            raise UsageError(f"--lr-gamma must be in (0, 1], got {self.lr_gamma}")
        if self.lr_steps is not None:
            steps = tuple(self.lr_steps)
            if any(int(s) != s or s <= 0 for s in steps) or list(steps) != sorted(set(steps)):
                raise UsageError(f"--lr-steps must be increasing positive epochs such as 90,120, got {','.join(map(str, steps))}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise UsageError(f"--crop-scale must be lo,hi with 0 < lo <= hi <= 1, got {','.join(map(str, self.crop_scale))}")
        if self.bank == "static-faiss":
            if self.variant != "1q":
                raise UsageError(f"--bank static-faiss compares the projected student with teacher anchors (1q-style); "
                                 f"it needs --variant 1q, got {self.variant!r}")
            _positive("neighbours", self.neighbours)
            if self.random_anchors < 0:
                raise UsageError(f"--random-anchors must be >= 0, got {self.random_anchors}")
        if not self.student:
            raise UsageError("--student must name an architecture (see compress-distill list-students)")
        self._validate_teacher()

    def _validate_teacher(self) -> None:
        """The online-teacher options: ``--teacher`` excludes ``--cache`` (and the options that
        read one); ``--weights`` and the ``--teacher-*`` options need ``--teacher``."""
        if self.teacher is None:
            given = [f"--{n.replace('_', '-')}" for n in ("weights", "teacher_arch", "teacher_embed_layer", "teacher_input_size",
                                                          "teacher_resize_size") if getattr(self, n) is not None]
            if self.teacher_prefix:
                given.append("--teacher-prefix")
            if given:
                raise UsageError(f"{', '.join(given)} apply to an online teacher only: pass --teacher NAME too (or drop them)")
            return
        if self.cache is not None:
            raise UsageError(f"--cache {self.cache} and --teacher {self.teacher} are mutually exclusive: train from the cache "
                             "(drop --teacher) or run the teacher online (drop --cache)")
        if self.bank == "static-faiss":
            raise UsageError("--bank static-faiss searches the cached train split for neighbours and needs --cache; "
                             "with --teacher use --bank queue")
        for name in ("teacher_input_size", "teacher_resize_size"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def milestones(self) -> tuple[int, ...]:
        """The step schedule's epochs: ``lr_steps``, or the paper's scaled to ``epochs`` when unset."""
        if self.lr_steps is not None:
            return tuple(int(s) for s in self.lr_steps)
        return tuple(sorted({max(1, round(self.epochs * s / PAPER_EPOCHS)) for s in PAPER_LR_STEPS}))  # short runs: 1,1 -> 1

    def schedule_summary(self) -> str:
        """One line describing the learning-rate schedule this config trains with."""
        if self.schedule == "cosine":
            return f"lr {self.lr:g}, cosine to 0 over {self.epochs} epochs"
        steps = self.milestones()
        at = f"x{self.lr_gamma:g} at epochs {','.join(map(str, steps))}" if steps else "constant (no --lr-steps)"
        return f"lr {self.lr:g}, step schedule {at} of {self.epochs}"


def _choice(option: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        import difflib

        close = difflib.get_close_matches(str(value), list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{option} must be one of {', '.join(known)}, got {value!r}{hint}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_output_dir(out: str) -> None:
    """Raise ``UsageError`` when ``--out`` cannot be (made) a directory: it, or the first of its
    existing parents, is not a directory."""
    path = os.path.abspath(out)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        where = "is" if path == os.path.abspath(out) else f"is under {path}, which is"
        raise UsageError(f"--out {out} {where} a regular file, not a directory")


def resolve_config(cfg: DistillConfig) -> DistillConfig:
    """Validate ``cfg`` and fill what follows from the cache and the run: ``cache``
    (``./cache`` without ``--teacher``), ``data`` (the cache manifest's data root), ``out``
    (``./runs/<student>-from-<teacher>``), ``weights`` (an online teacher's default path) and
    ``lr_steps`` (``milestones()``). Raises ``UsageError``/``StoreError`` before any file is written."""
    from distill.students import get_student_spec
    from distill.targets import train_store_path
    from storage import open_store

    cfg.validate()
    get_student_spec(cfg.student)  # an unknown name fails here, with suggestions
    if cfg.teacher is not None:
        return _resolve_online(cfg)
    if cfg.cache is None:
        cfg = dataclasses.replace(cfg, cache="./cache")
    store = open_store(train_store_path(cfg.cache or ""))
    changes: dict[str, Any] = {"lr_steps": cfg.milestones()}
    if cfg.data is None:
        from cache_builder.pixel_source import cache_copy

        copy, why = cache_copy(store.path, store.manifest.fingerprint)
        data_root = copy or store.provenance.get("data_root")
        if not data_root:
            raise UsageError(f"{store.path}: the cache does not record its data root; pass --data")
        if why:  # printed at the start: which images the run reads, or why not the cache's copy
            log.log(logging.INFO if copy else logging.WARNING, "--data %s: %s", data_root,
                    why if copy else f"not using the pre-resized copy: {why}")
        changes["data"] = str(data_root)
    if cfg.out is None:
        teacher = str(store.provenance.get("teacher", "teacher"))
        changes["out"] = os.path.join("runs", file_name(f"{cfg.student}-from-{teacher}"))
    resolved = dataclasses.replace(cfg, **changes)
    check_output_dir(resolved.out or ".")
    from cache_builder.image_source import location_exists

    if not location_exists(resolved.data or ""):
        raise UsageError(f"--data {resolved.data}: no such file or directory")
    return resolved


def _resolve_online(cfg: DistillConfig) -> DistillConfig:
    """``resolve_config`` for ``--teacher``: the teacher's spec checked (name, ``custom``
    options, sizes), ``--data`` required, ``weights`` and ``out`` defaulted."""
    from cache_builder.teachers import default_weights_path
    from distill.online_teacher import teacher_spec

    spec = teacher_spec(cfg)
    if cfg.data is None:
        raise UsageError(f"--teacher {cfg.teacher}: pass --data (the image root; without a cache there is no recorded one)")
    changes: dict[str, Any] = {"lr_steps": cfg.milestones(), "weights": cfg.weights or default_weights_path(spec.name)}
    if cfg.out is None:
        changes["out"] = os.path.join("runs", file_name(f"{cfg.student}-from-{spec.name}-online"))
    resolved = dataclasses.replace(cfg, **changes)
    check_output_dir(resolved.out or ".")
    if not os.path.isdir(resolved.data or ""):
        raise UsageError(f"--data {resolved.data}: no such directory")
    return resolved
