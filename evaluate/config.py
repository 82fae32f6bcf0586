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

from storage.config_options import setting
from storage.errors import UsageError, unknown_name

PROTOCOLS: dict[str, dict[str, Any]] = {
    "compress": {"metric": "l2", "ks": (1, 20), "vote": "majority"},
    "dino": {"metric": "ip", "ks": (10, 20, 100, 200), "vote": "weighted", "temperature": 0.07},
}
SEARCH_BACKENDS = ("auto", "faiss", "torch")
DEVICE_HELP = "auto (this process's GPU when CUDA is available, else cpu), cpu, cuda or cuda:N."
DEFAULT_FEATURES = "cache"


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _known(option: str, value: str, known: tuple[str, ...] | list[str], kind: str) -> None:
    if value not in known:
        raise UsageError(f"{option}: " + unknown_name(kind, value, list(known)))


@dataclass(frozen=True)
class SourceConfig:
    """What a protocol evaluates: ``--features DIR``, or ``--model M --data ROOT`` (features
    extracted once into ``--feature-cache``), and where the result goes."""

    features: str | None = setting(None, "Features or teacher-cache directory with train/ and val/ stores "
                                         f"(default: ./{DEFAULT_FEATURES} if present).")
    model: str | None = setting(None, "Student run dir, exported .pth / .onnx / .pt (TorchScript) / .safetensors, "
                                      "teacher:NAME:WEIGHTS or torchvision:ARCH[:WEIGHTS].")
    data: str | None = setting(None, "ImageFolder-style root (train/, val/) to extract --model's features from.")
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
        if self.data and not os.path.isdir(self.data):
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
    backend: str = setting("auto", "Search backend: auto (FAISS on CPU or with faiss-gpu, else torch), faiss or torch.",
                           choices=SEARCH_BACKENDS)
    device: str = setting("auto", "Search device: " + DEVICE_HELP)
    query_block: int | None = setting(None, "Queries per search block (default: 1024 torch, 8192 faiss).")
    database_block: int = setting(131072, "Train rows per search block.")
    stream: bool = setting(False, "Stream the train rows from their store shard by shard instead of loading them.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _known("--protocol", self.protocol, tuple(PROTOCOLS), "protocol")
        _known("--backend", self.backend, SEARCH_BACKENDS, "search backend")
        if any(k < 1 for k in self.ks):
            raise UsageError(f"-k: every k must be >= 1, got {','.join(map(str, self.ks))}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        _positive(self, "query_block", "database_block")

    @property
    def resolved_ks(self) -> tuple[int, ...]:
        return tuple(sorted(self.ks)) if self.ks else PROTOCOLS[self.protocol]["ks"]


@dataclass(frozen=True)
class LinearConfig:
    """Linear probe (docs/evaluate.md, "Protocols").

    ``fast`` trains on cached features (protocol ``compress-fast``); ``fast=False`` is the
    augmented protocol (``compress``), which needs ``model``, ``data`` and ``checkpoint`` (its
    resume file). ``fraction`` / ``shots``: a class-balanced, seeded few-label subset of train.
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
    seed: int = setting(0, "Seed of the label subset, the initialisation and the batch order.")
    device: str = setting("auto", "Probe training device: " + DEVICE_HELP)
    model: str | None = setting(None, "Backbone of the augmented protocol (from --model).", cli=False)
    data: str | None = setting(None, "Images of the augmented protocol (from --data).", cli=False)
    image_size: int | None = setting(None, "Center-crop size (from --image-size).", cli=False)
    workers: int = setting(0, "DataLoader workers (from --workers).", cli=False)
    checkpoint: str | None = setting(None, "Resume file of the augmented protocol (next to the result).", cli=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.fast and not (self.model and self.data and self.checkpoint):
            raise UsageError(
                "--full: the augmented linear protocol (RandomResizedCrop + flip through the frozen backbone) "
                "needs --model and --data (and a checkpoint path); use --fast for cached features"
            )
        _positive(self, "epochs", "batch_size", "shots")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise UsageError(f"--momentum must be in [0, 1) and --weight-decay >= 0, got {self.momentum} and {self.weight_decay}")
        if self.fraction is not None and self.shots is not None:
            raise UsageError("--fraction and --shots: give one, not both")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UsageError(f"--fraction must be in (0, 1], got {self.fraction}")


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
