"""The settings of every ``compress-eval`` protocol: frozen dataclasses, the one place their
defaults and help texts live (``storage.config_options`` turns them into the CLI options).

This module imports neither torch nor faiss, so ``compress-eval --help`` stays instant.
Each config's ``validate()`` (called on construction) raises ``UsageError`` naming the option.
Protocol definitions: docs/evaluate.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from cache_builder.build_config import IMAGE_COLUMN_HELP, LABEL_COLUMN_HELP
from cache_builder.devices import DEVICE_HELP
from storage.config_options import setting
from storage.errors import UsageError, unknown_name

PROTOCOLS: dict[str, dict[str, Any]] = {
    "compress": {"metric": "l2", "ks": (1, 20), "vote": "majority"},
    "dino": {"metric": "ip", "ks": (10, 20, 100, 200), "vote": "weighted", "temperature": 0.07},
}
SEARCH_BACKENDS = ("auto", "faiss", "torch")
DEFAULT_FEATURES = "cache"
MODEL_HELP = ("Student run dir, exported .pth / .onnx / .pt (TorchScript) / .safetensors, teacher:NAME:WEIGHTS or "
              "torchvision:ARCH[:WEIGHTS].")
TIE_BREAKS = ("random", "nearest")  # distill.knn_vote.TIE_BREAKS (not imported here: no torch at --help)


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_subset(cfg: Any) -> None:
    """The few-label options (``evaluate.label_subset.select_train_rows``): at most one, valid."""
    given = [f"--{n.replace('_', '-')}" for n in ("fraction", "shots", "subset_file") if getattr(cfg, n) is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give one, not several")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1], got {cfg.fraction}")
    _positive(cfg, "shots")
    if cfg.subset_file is not None and not os.path.isfile(cfg.subset_file):
        raise UsageError(f"--subset-file {cfg.subset_file}: no such file")


SUBSET_FILE_HELP = ("Labelled train subset: one image per line, a path relative to the train root or (SimCLR's "
                    "1percent.txt / 10percent.txt) a file name.")


def _known(option: str, value: str, known: tuple[str, ...] | list[str], kind: str) -> None:
    if value not in known:
        raise UsageError(f"{option}: " + unknown_name(kind, value, list(known)))


@dataclass(frozen=True)
class SourceConfig:
    """What a protocol evaluates: ``--features DIR``, or ``--model M --data ROOT`` (features
    extracted once into ``--feature-cache``), and where the result goes."""

    features: str | None = setting(None, "Features or teacher-cache directory with train/ and val/ stores "
                                         f"(default: ./{DEFAULT_FEATURES} if present).")
    model: str | None = setting(None, MODEL_HELP)
    data: str | None = setting(None, "ImageFolder-style root (train/, val/), or tar shards / Parquet files in train/ and "
                                     "val/ sub-locations (a directory or an fsspec URL), to extract --model's features from.")
    image_column: str | None = setting(None, IMAGE_COLUMN_HELP)
    label_column: str | None = setting(None, LABEL_COLUMN_HELP)
    feature_cache: str | None = setting(None, "Where --model/--data features are cached (default: RUN/eval/features or ./eval-cache).")
    image_size: int | None = setting(None, "Center-crop size for torchvision models.")
    extract_batch_size: int = setting(64, "Feature extraction batch size.", flag="--batch-size")
    workers: int = setting(0, "Feature extraction DataLoader workers.")
    out: str | None = setting(None, "Result JSON path (default: under eval-results/ or RUN/eval/).")
    progress: bool = setting(True, "Show a progress bar while extracting features.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.features and (self.model or self.data):
            raise UsageError("--features: give either --features or --model/--data, not both")
        if bool(self.model) != bool(self.data):
            raise UsageError("--model and --data go together" + (" (--data is missing)" if self.model else " (--model is missing)"))
        if self.data and not (os.path.isdir(self.data) or "://" in self.data or "{" in self.data):
            raise UsageError(f"--data {self.data}: no such directory")
        if self.features and not os.path.isdir(self.features):
            raise UsageError(f"--features {self.features}: no such directory")
        if self.out and os.path.isdir(self.out):
            raise UsageError(f"--out {self.out}: is a directory; give the result's JSON file path")
        _positive(self, "image_size", "extract_batch_size")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class KnnConfig:
    """kNN evaluation (docs/evaluate.md, "Protocols").

    ``features``: the features directory with ``train`` and ``val`` stores. ``ks`` empty means
    the protocol's neighbour counts. ``stream`` leaves the train rows in their store and
    streams them shard by shard (the database need not fit in RAM).
    """

    features: str
    protocol: str = setting("compress", "compress: L2, majority vote, k=1,20; dino: cosine, weighted vote, k=10,20,100,200.",
                            choices=tuple(PROTOCOLS))
    ks: tuple[int, ...] = setting((), "Neighbour counts, e.g. -k 1,20 or -k 1 -k 20 (default: the protocol's).", cli=False)
    temperature: float = setting(0.07, "DINO vote temperature (votes weighted by exp(similarity / T)).")
    tie_break: str = setting("random", "compress protocol's majority ties: random (the official rule: uniform among the "
                                       "top-voted classes, seeded by --seed) or nearest (the nearest neighbour's class).",
                             choices=TIE_BREAKS)
    seed: int = setting(0, "Seed of the random tie-break (and of the --fraction/--shots label subset).")
    backend: str = setting("auto", "Search backend: auto (FAISS on CPU or with faiss-gpu, else torch), faiss or torch.",
                           choices=SEARCH_BACKENDS)
    device: str = setting("auto", "Search device: " + DEVICE_HELP)
    query_block: int | None = setting(None, "Queries per search block (default: 1024 torch, 8192 faiss).")
    database_block: int = setting(131072, "Train rows per search block.")
    stream: bool = setting(False, "Stream the train rows from their store shard by shard instead of loading them.")
    fraction: float | None = setting(None, "Few-label kNN: class-balanced, seeded fraction of the train labels (e.g. 0.01, 0.1).")
    shots: int | None = setting(None, "Few-label kNN: labelled train images per class (seeded).")
    subset_file: str | None = setting(None, SUBSET_FILE_HELP)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _known("--protocol", self.protocol, tuple(PROTOCOLS), "protocol")
        _known("--backend", self.backend, SEARCH_BACKENDS, "search backend")
        _known("--tie-break", self.tie_break, TIE_BREAKS, "tie-break")
        if any(k < 1 for k in self.ks):
            raise UsageError(f"-k: every k must be >= 1, got {','.join(map(str, self.ks))}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        _positive(self, "query_block", "database_block")
        _check_subset(self)

    @property
    def resolved_ks(self) -> tuple[int, ...]:
        return tuple(sorted(self.ks)) if self.ks else PROTOCOLS[self.protocol]["ks"]


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe (docs/evaluate.md, "Protocols").

    ``fast`` trains on cached features (protocol ``compress-fast``); ``fast=False`` is the
    augmented protocol (``compress``), which needs ``model``, ``data`` and ``checkpoint`` (its
    resume file), and ``image_column`` / ``label_column`` for Parquet ``data``.
    ``fraction`` / ``shots`` / ``subset_file``: a few-label subset of train
    (``evaluate.label_subset.select_train_rows``).
    """

    features: str
    fast: bool = setting(True, "--fast: train on cached center-crop features (a different protocol, 'compress-fast'). "
                               "--full: RandomResizedCrop + flip through the frozen backbone (needs --model/--data; resumable).",
                         flag="--fast/--full")
    epochs: int = setting(40, "Epochs (the lr steps x0.1 at 15 and 30 of 40, scaled to --epochs).")
    lr: float = setting(0.01, "SGD learning rate.")
    momentum: float = setting(0.9, "SGD momentum.")
    weight_decay: float = setting(1e-4, "SGD weight decay.")
    batch_size: int = setting(256, "Probe training batch size.", flag="--train-batch-size")
    fraction: float | None = setting(None, "Class-balanced fraction of train labels (e.g. 0.01, 0.1).")
    shots: int | None = setting(None, "Labelled train images per class.")
    subset_file: str | None = setting(None, SUBSET_FILE_HELP)
    seed: int = setting(0, "Seed of the label subset, the initialisation and the batch order.")
    device: str = setting("auto", "Probe training device: " + DEVICE_HELP)
    model: str | None = setting(None, "Backbone of the augmented protocol (from --model).", cli=False)
    data: str | None = setting(None, "Images of the augmented protocol (from --data).", cli=False)
    image_size: int | None = setting(None, "Center-crop size (from --image-size).", cli=False)
    workers: int = setting(0, "DataLoader workers (from --workers).", cli=False)
    checkpoint: str | None = setting(None, "Resume file of the augmented protocol (next to the result).", cli=False)
    image_column: str | None = setting(None, IMAGE_COLUMN_HELP, cli=False)  # the command's --image-column (SourceConfig)
    label_column: str | None = setting(None, LABEL_COLUMN_HELP, cli=False)  # the command's --label-column (SourceConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.fast and not (self.model and self.data and self.checkpoint):
            raise UsageError(
                "--full: the augmented linear protocol (RandomResizedCrop + flip through the frozen backbone) "
                "needs --model and --data (and a checkpoint path); use --fast for cached features"
            )
        _positive(self, "epochs", "batch_size")
        _check_subset(self)
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise UsageError(f"--momentum must be in [0, 1) and --weight-decay >= 0, got {self.momentum} and {self.weight_decay}")


def parse_class_range(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` -> ``(A, B)``: 0-based class indices ``A <= c < B`` (``--classes``)."""
    if text is None:
        return None
    a, sep, b = str(text).partition(":")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        lo = hi = -1
    if not sep or lo < 0 or hi <= lo:
        raise UsageError(f"--classes must be A:B with 0 <= A < B (0-based class indices, B excluded), got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class RetrievalConfig:
    """Image retrieval, the metric-learning protocol (docs/evaluate.md, "Retrieval").

    Query set = gallery = ``split``; each query's own row is excluded; cosine similarity on
    L2-normalised features. ``classes`` ``"A:B"`` keeps the classes ``A <= c < B`` (0-based):
    CUB-200's test half is ``100:200``, Cars196's ``98:196``.
    """

    features: str
    split: str = setting("val", "The split that is both query set and gallery.", choices=("val", "train"))
    ks: tuple[int, ...] = setting((1, 2, 4, 8), "Recall@K cut-offs, comma-separated.")
    classes: str | None = setting(None, "Keep classes A:B only (0-based, B excluded): CUB-200 test half 100:200, Cars196 98:196.")
    backend: str = setting("auto", "Search backend: auto (FAISS on CPU or with faiss-gpu, else torch), faiss or torch.",
                           choices=SEARCH_BACKENDS)
    device: str = setting("auto", "Search device: " + DEVICE_HELP)
    query_block: int | None = setting(None, "Queries per search block (default: 1024 torch, 8192 faiss).")
    database_block: int = setting(131072, "Gallery rows per search block.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _known("--backend", self.backend, SEARCH_BACKENDS, "search backend")
        _known("--split", self.split, ("val", "train"), "split")
        if not self.ks or any(k < 1 for k in self.ks):
            raise UsageError(f"--ks: every K must be >= 1, got {','.join(map(str, self.ks)) or 'none'}")
        parse_class_range(self.classes)
        _positive(self, "query_block", "database_block")


@dataclass(frozen=True)
class ClusterConfig:
    """Cluster alignment (docs/evaluate.md, "Protocols")."""

    features: str
    clusters: int = setting(1000, "k-means clusters K.")
    iterations: int = setting(20, "k-means iterations.")
    seed: int = setting(0, "k-means seed.")
    backend: str = setting("auto", "k-means backend: auto (FAISS on CPU or with faiss-gpu, else torch), faiss or torch.",
                           choices=SEARCH_BACKENDS)
    device: str = setting("auto", "k-means device: " + DEVICE_HELP)
    confusion: str | None = setting(None, "Confusion matrix .npy (default: next to the result).")
    grid: str | None = setting(None, "PNG grid of train images from random clusters (needs --data-root or --data).")
    data_root: str | None = setting(None, "Image root the stores' paths are relative to (for --grid; default --data).")
    grid_clusters: int = setting(8, "Clusters shown in --grid.")
    grid_samples: int = setting(8, "Images per cluster in --grid.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive(self, "clusters", "iterations", "grid_clusters", "grid_samples")
        _known("--backend", self.backend, SEARCH_BACKENDS, "k-means backend")
        if self.grid and not self.data_root:
            raise UsageError("--grid needs --data-root (the image root the stores' paths are relative to)")
        if self.data_root and not os.path.isdir(self.data_root):
            raise UsageError(f"--data-root {self.data_root}: no such directory")


FEATURE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class FeaturesConfig:
    """``compress-eval features``: a frozen backbone over an image folder into ``OUT/train`` and
    ``OUT/val`` stores of L2-normalised center-crop features (``evaluate.features.extract_features``).

    ``model``, ``data`` and ``out`` are required (explicit options of the command).
    """

    model: str
    data: str
    out: str
    batch_size: int = setting(64, "Extraction batch size.")
    workers: int = setting(0, "DataLoader workers.")
    device: str = setting("auto", DEVICE_HELP)
    image_size: int | None = setting(None, "Center-crop size for torchvision models.")
    dtype: str = setting("float16", "Store dtype.", choices=FEATURE_DTYPES)
    shard_size: int | None = setting(None, "Rows per shard (default: the store's).")
    overwrite: bool = setting(False, "Replace features extracted with another model or dataset.", flag="--overwrite")
    progress: bool = setting(True, "Show a progress bar per split.")
    image_column: str | None = setting(None, IMAGE_COLUMN_HELP)
    label_column: str | None = setting(None, LABEL_COLUMN_HELP)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive(self, "batch_size", "shard_size", "image_size")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        _known("--dtype", self.dtype, FEATURE_DTYPES, "dtype")
