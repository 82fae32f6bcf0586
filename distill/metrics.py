"""What a run logs: ``metrics.jsonl`` (one JSON object per line), the probe metrics and the loss plot.

Lines are ``{"step", "epoch", "loss", "lr", "img_per_s"}`` every ``--log-every`` steps and
``{"step", "epoch", "agreement", "overlap10"}`` at the start and after every epoch; with the
evaluation during training (``distill.periodic_eval``) the epoch lines also hold ``knn_top1``,
``eval_train_rows``, ``eval_s``, and the step-0 line ``teacher_knn_top1``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from storage.atomic import write_bytes_atomic

OVERLAP_K = 10  # metrics.jsonl's overlap10: teacher-student top-10 neighbour overlap on the probe set


def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor, k: int = OVERLAP_K) -> dict[str, float]:
    """How alike two neighbourhood structures are on the same ``P`` probe images.

    Args:
        student, teacher: L2-normalised ``(P, D_s)`` and ``(P, D_t)`` embeddings on one device.
    Returns:
        ``{"agreement": a, f"overlap{OVERLAP_K}": o}``: ``a`` is the fraction of probes whose
        nearest other probe is the same for both (a coarse signal: with a few dozen probes it
        moves by whole images); ``o`` is the mean fraction of each probe's ``k`` nearest teacher
        neighbours among its ``k`` nearest student neighbours (``k`` clipped to ``P - 1``).
    """
    sims_s, sims_t = student @ student.T, teacher @ teacher.T
    sims_s.fill_diagonal_(-2)
    sims_t.fill_diagonal_(-2)
    k = max(1, min(k, len(student) - 1))
    top_s, top_t = sims_s.topk(k, dim=1).indices, sims_t.topk(k, dim=1).indices
    shared = (top_s.unsqueeze(2) == top_t.unsqueeze(1)).any(2).float().sum(1) / k
    return {"agreement": float((sims_s.argmax(1) == sims_t.argmax(1)).float().mean()), f"overlap{OVERLAP_K}": float(shared.mean())}


class MetricsLog:
    """Appends records to ``path`` (``metrics.jsonl``) and, when given, to an experiment
    ``tracker`` (``distill.tracking.Tracker``) at the record's step."""

    def __init__(self, path: str, tracker: Any = None) -> None:
        self.path = path
        self.tracker = tracker

    def start(self) -> None:
        """Begin a new run's log (an empty file)."""
        open(self.path, "w").close()

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log(record, int(record["step"]))

    def close(self, finished: bool = False) -> None:
        """Flush the tracker (``finished``: the run reached its last epoch)."""
        if self.tracker is not None:
            self.tracker.close(finished)

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run logs them again from its checkpoint)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def records(self) -> list[dict[str, Any]]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


class TrainingClock:
    """Steps per second of training time only: time spent in ``pause``d calls (checkpoints,
    probes) is left out."""

    def __init__(self, step: int) -> None:
        self.last_time, self.last_step, self.paused = time.perf_counter(), step, 0.0

    def pause(self, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        fn()
        self.paused += time.perf_counter() - start

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time - self.paused, 1e-9)
        self.last_time, self.last_step, self.paused = now, step, 0.0
        return rate


def plot_loss_curve(metrics_path: str, png_path: str) -> None:
    """Loss (and neighbour agreement, and the student's kNN-20 top-1 with the teacher's as a
    dashed reference line, as fractions) against step, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = MetricsLog(metrics_path).records()
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    overlap = f"overlap{OVERLAP_K}"
    probes = {"agreement": ("teacher-student NN agreement (top-1)", "tab:orange"),
              overlap: (f"top-{OVERLAP_K} neighbour overlap", "tab:green")}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", label="CompRess loss (KL)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    knn = [(r["step"], r["knn_top1"] / 100) for r in records if "knn_top1" in r]
    teacher = [r["teacher_knn_top1"] / 100 for r in records if "teacher_knn_top1" in r]
    if knn or any(key in r for r in records for key in probes):
        ax2 = ax.twinx()
        for key, (label, colour) in probes.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax2.plot(*zip(*points), "o-", color=colour, label=label)
        if knn:
            ax2.plot(*zip(*knn), "s-", color="tab:red", label="student kNN-20 top-1 (val)")
        if teacher:
            ax2.axhline(teacher[-1], color="tab:red", linestyle="--", linewidth=1, label=f"teacher kNN-20 ({100 * teacher[-1]:.1f} %)")
        ax2.set_ylabel("agreement / kNN accuracy" if knn else "neighbour agreement")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(png_path, buffer.getvalue())
