"""The augmented linear protocol (CompRess): images -> RandomResizedCrop + flip -> frozen
backbone -> L2 -> standardisation with whole-train-set statistics -> linear layer.

Training is resumable: after every epoch the probe, the optimizer state and the epoch are
saved atomically; a rerun continues from there and ends with the same weights as an
uninterrupted run (the batch order and augmentations of epoch ``e`` are seeded by
``(seed, e)``; the learning rate is a function of the epoch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluate.errors import FeatureError, ProbeCheckpointError
from evaluate.linear import LinearProbe, scaled_milestones
from storage.atomic import write_atomic
from storage.errors import UsageError


def augmented_transform(eval_transform: Any) -> Callable:
    """The train transform derived from a model's center-crop eval transform: its Resize and
    CenterCrop are replaced by RandomResizedCrop(crop size) + RandomHorizontalFlip; the rest
    (ToTensor, normalisation) is kept.

    Raises:
        UsageError: the eval transform is not a torchvision ``Compose`` with a ``CenterCrop``.
    """
    from torchvision import transforms

    steps = list(getattr(eval_transform, "transforms", []))
    crops = [t for t in steps if isinstance(t, transforms.CenterCrop)]
    if not isinstance(eval_transform, transforms.Compose) or not crops:
        raise UsageError("--full: the augmented linear protocol needs a torchvision Compose eval transform with a CenterCrop, "
                         f"got {eval_transform!r}")
    rest = [t for t in steps if not isinstance(t, (transforms.Resize, transforms.CenterCrop))]
    return transforms.Compose([transforms.RandomResizedCrop(crops[0].size), transforms.RandomHorizontalFlip(), *rest])


def epoch_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based): x0.1 at each scaled milestone reached."""
    return base_lr * 0.1 ** sum(epoch >= m for m in scaled_milestones(epochs))


def _save_atomic(state: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f))


def train_augmented_probe(
    backbone: nn.Module, dataset_factory: Callable[[], Any], statistics: tuple[torch.Tensor, torch.Tensor], num_classes: int,
    *, epochs: int, lr: float, momentum: float, weight_decay: float, batch_size: int, seed: int, device: str,
    checkpoint: str, identity: dict, workers: int = 0, after_epoch: Callable[[int], None] | None = None,
) -> LinearProbe:
    """Train (or resume) the probe on augmented images through the frozen ``backbone``.

    Args:
        backbone: ``(B, 3, H, W)`` -> ``(B, D)``, kept in eval mode, no gradients.
        dataset_factory: returns a dataset of ``(image tensor, label)`` (the augmented train rows).
        statistics: ``(D,)`` mean and variance of the whole train set's L2-normalised features.
        checkpoint: resume file, written after every epoch.
        identity: JSON-able description of everything that must match to resume.
        after_epoch: called with the finished epoch (tests use it to simulate a kill).
    Raises:
        ProbeCheckpointError: the checkpoint was written for another model, data or setting.
    """
    from torch.utils.data import DataLoader

    backbone = backbone.to(device).eval()
    mean, var = statistics
    torch.manual_seed(seed)
    probe = LinearProbe(mean, var, num_classes).to(device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    key = json.dumps(identity, sort_keys=True, default=str)
    start = 0
    if os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["identity"] != key:
            raise ProbeCheckpointError(f"{checkpoint}: written for another model/data/setting; delete it or use another --out "
                             f"(checkpoint: {state['identity']}; now: {key})")
        probe.load_state_dict(state["probe"], strict=True)
        opt.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    loss_fn = nn.CrossEntropyLoss()
    dataset = dataset_factory()
    for epoch in range(start, epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(lr, epoch, epochs)
        torch.manual_seed(seed * 100003 + epoch)  # augmentations (workers=0) and their seeds
        order = torch.Generator().manual_seed(seed * 100003 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order, num_workers=workers)
        probe.train()
        for images, labels in loader:
            with torch.no_grad():
                feats = nn.functional.normalize(backbone(images.to(device)).float(), dim=1)
            opt.zero_grad(set_to_none=True)
            loss_fn(probe(feats), labels.to(device)).backward()
            opt.step()
        _save_atomic({"identity": key, "probe": probe.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}, checkpoint)
        if after_epoch is not None:
            after_epoch(epoch)
    return probe


def linear_full(cfg: Any, after_epoch: Callable[[int], None] | None = None, *, device: str | None = None) -> dict:
    """The augmented, resumable protocol for a ``LinearConfig`` with ``fast=False``; the
    whole-train-set statistics and the val accuracy use the center-crop features in
    ``cfg.features`` (extracted from the same model and data, with the same Parquet
    ``cfg.image_column`` / ``cfg.label_column``). ``device``: the resolved ``cfg.device``
    (default: resolved here)."""
    import time
    from dataclasses import asdict

    from cache_builder.devices import resolve_device
    from evaluate.feature_set import load_feature_set
    from evaluate.features import ImageDataset
    from evaluate.image_folder import list_classes, list_split
    from evaluate.label_subset import select_train_rows
    from evaluate.linear import probe_accuracy
    from evaluate.models import resolve_model
    from evaluate.results import make_result

    device = device or str(resolve_device(cfg.device))
    t0 = time.perf_counter()
    fs = load_feature_set(cfg.features)
    resolved = resolve_model(cfg.model, image_size=cfg.image_size)
    columns = (cfg.image_column, cfg.label_column)  # Parquet --data: the columns the features were extracted with
    listing = list_split(cfg.data, "train", list_classes(cfg.data, *columns), *columns)
    if len(listing.paths) != fs.train.n or list(listing.paths) != list(fs.train.paths):
        raise FeatureError(f"{cfg.features}: the train features do not list the images of {cfg.data}/train in the same order")
    labels = np.asarray(listing.labels)
    rows, subset_record = select_train_rows(labels, list(listing.paths), fraction=cfg.fraction, shots=cfg.shots,
                                            subset_file=cfg.subset_file, seed=cfg.seed)
    train_tf = augmented_transform(resolved.transform)
    x = torch.from_numpy(fs.train.rows)
    identity = {"model": resolved.identity, "data": os.path.abspath(cfg.data), "features": fs.train.fingerprint,
                **{k: v for k, v in asdict(cfg).items() if k not in ("features", "checkpoint", "device", "workers")}}
    probe = train_augmented_probe(
        resolved.module, lambda: ImageDataset(listing, rows, train_tf, with_labels=True), (x.mean(0), x.var(0, unbiased=False)),
        fs.num_classes, epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size, seed=cfg.seed, device=device, checkpoint=cfg.checkpoint, identity=identity,
        workers=cfg.workers, after_epoch=after_epoch,
    )
    metrics = probe_accuracy(probe, fs.val.rows, fs.val.labels, device)
    params = {**asdict(cfg), "milestones": scaled_milestones(cfg.epochs), "gamma": 0.1,
              "augmentation": "RandomResizedCrop + RandomHorizontalFlip",
              "normalisation": "L2, then standardisation by whole-train-set statistics (center crop)",
              "train_rows_used": int(len(rows)), "label_subset": subset_record}
    return make_result("linear", "compress", metrics, params, fs, wall_time=time.perf_counter() - t0,
                       backend=f"torch:{device}", model=resolved.identity, dataset=os.path.abspath(cfg.data))
