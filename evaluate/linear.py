"""Linear probe (docs/evaluate.md, "Protocols").

``compress`` protocol: frozen backbone -> L2 -> BatchNorm with statistics of the whole train
set -> linear; 40 epochs, SGD lr 0.01, momentum 0.9, wd 1e-4, lr x0.1 at epochs 15 and 30
(and 40, the end), RandomResizedCrop + flip.

``--fast`` (this module): the same classifier and schedule trained on the cached center-crop
features, without augmentation. It takes seconds instead of hours but is a **different
protocol** (``compress-fast``): numbers are not comparable to the paper's linear accuracy.
The augmented, resumable protocol needs the backbone and the images: ``evaluate.linear_full``.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from evaluate.config import LinearConfig
from evaluate.label_subset import select_train_rows

__all__ = ["LinearConfig", "LinearProbe", "linear", "probe_accuracy", "scaled_milestones", "train_linear_probe"]

REFERENCE_EPOCHS = 40
REFERENCE_MILESTONES = (15, 30, 40)


class LinearProbe(nn.Module):
    """Fixed standardisation by whole-train-set statistics, then a linear layer.

    ``(B, D)`` L2-normalised features -> ``(B, C)`` logits. The statistics are buffers (in the
    state dict) computed once, never updated by training batches.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, num_classes: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("inv_std", torch.rsqrt(var + eps))
        self.fc = nn.Linear(mean.shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x - self.mean) * self.inv_std)


def scaled_milestones(epochs: int) -> list[int]:
    """The reference lr steps (15, 30 of 40 epochs) scaled to ``epochs``."""
    return sorted({max(1, round(m * epochs / REFERENCE_EPOCHS)) for m in REFERENCE_MILESTONES[:-1]})


def train_linear_probe(
    train_features: np.ndarray, train_labels: np.ndarray, num_classes: int, *, epochs: int = 40, lr: float = 0.01,
    momentum: float = 0.9, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0, device: str = "cpu",
    statistics_from: np.ndarray | None = None,
) -> LinearProbe:
    """Train the probe on features ``(N, D)`` with labels ``(N,)``.

    Args:
        statistics_from: ``(M, D)`` rows whose mean/variance standardise the input (the whole
            train set, labelled or not); default the training rows.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_features, dtype=torch.float32, device=device)
    y = torch.as_tensor(train_labels, dtype=torch.long, device=device)
    torch.manual_seed(seed)
    stats = x if statistics_from is None else torch.as_tensor(statistics_from, dtype=torch.float32, device=device)
    probe = LinearProbe(stats.mean(0), stats.var(0, unbiased=False), num_classes).to(device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=scaled_milestones(epochs), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for s in range(0, len(x), batch_size):
            rows = order[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(probe(x[rows]), y[rows]).backward()
            opt.step()
        sched.step()
    return probe


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, features: np.ndarray, labels: np.ndarray, device: str = "cpu",
                   block: int = 8192) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of ``probe`` on features ``(N, D)``."""
    probe.eval()
    top1 = top5 = 0
    for s in range(0, len(features), block):
        logits = probe(torch.as_tensor(features[s:s + block], dtype=torch.float32, device=device))
        y = torch.as_tensor(labels[s:s + block], device=device)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked == y[:, None]).any(1).sum())
    return {"linear_top1": 100.0 * top1 / len(features), "linear_top5": 100.0 * top5 / len(features)}


def linear(cfg: LinearConfig) -> dict:
    """Run the linear probe (fast on cached features, or the augmented protocol); returns a
    result record."""
    from cache_builder.devices import resolve_device

    device = str(resolve_device(cfg.device))
    if not cfg.fast:
        from evaluate.linear_full import linear_full

        return linear_full(cfg, device=device)
    from evaluate.feature_set import load_feature_set
    from evaluate.results import make_result

    start = time.perf_counter()
    fs = load_feature_set(cfg.features)
    subset, subset_record = select_train_rows(fs.train.labels, fs.train.paths, fraction=cfg.fraction, shots=cfg.shots,
                                              subset_file=cfg.subset_file, seed=cfg.seed)
    probe = train_linear_probe(
        fs.train.rows[subset], fs.train.labels[subset], fs.num_classes, epochs=cfg.epochs, lr=cfg.lr,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, seed=cfg.seed, device=device,
        statistics_from=fs.train.rows,
    )
    metrics = probe_accuracy(probe, fs.val.rows, fs.val.labels, device)
    params = {**asdict(cfg), "milestones": scaled_milestones(cfg.epochs), "gamma": 0.1, "augmentation": "none (cached center crop)",
              "normalisation": "L2, then standardisation by whole-train-set statistics (all rows, labelled or not)",
              "train_rows_used": int(len(subset)), "label_subset": subset_record}
    return make_result("linear", "compress-fast", metrics, params, fs, wall_time=time.perf_counter() - start,
                       backend=f"torch:{device}")
