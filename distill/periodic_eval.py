"""Evaluation during distillation (``--eval-every N``, docs/distill.md, "Evaluation during training").

Every N epochs (and after the last one) the student's current **backbone** is evaluated with the
DINO kNN protocol at k = 20 (cosine on L2-normalised features, votes weighted by
``exp(sim / 0.07)``; ``distill.knn_vote.weighted_vote``, the vote ``compress-eval knn --protocol
dino`` uses): the val split's images against the train split's, both through the student's eval
transform (resize + centre crop, ``distill.students.eval_transform_recipe``), in eval mode
(BatchNorm running statistics; the student's training state is left as it was). The train side
is a fixed, seeded subsample of ``--eval-train-size`` rows (all rows when the split is smaller).
The result is logged to ``metrics.jsonl`` as ``knn_top1`` (%); the teacher's kNN on the same
rows, from the cached embeddings, is logged once at step 0 as ``teacher_knn_top1`` (for a
multi-view cache, from view 0 of each row, train and val: a random crop, not the centre crop).

The evaluation consumes no training randomness: it runs inside ``torch.random.fork_rng`` and
draws its subsample from its own generator, so a run with and without it, interrupted or not,
trains identically.

Default (``--eval-every`` unset): ``EVALUATIONS`` evaluations spread over the run when the cache
has a labelled val split, off otherwise; ``--eval-every 0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cache_builder.image_list import ImageList, discover_splits
from distill.data import ReferenceImages, normalise
from distill.knn_vote import weighted_vote
from distill.precision import autocast
from distill.students import Student, eval_transform_recipe
from distill.targets import store_listing
from distill.topk import l2_normalize, search
from storage.cache_layout import split_store_paths
from storage.errors import UsageError

log = logging.getLogger(__name__)

EVALUATIONS = 5  # evaluations over a run when --eval-every is not given
KNN_K = 20
KNN_TEMPERATURE = 0.07
SUBSAMPLE_SEED_OFFSET = 3  # the train subsample's generator: seed + 3 (probe rows use +1, bank init +2)


def val_store_path(cache: str) -> str | None:
    """The cache's ``val`` split store, or None when it has none."""
    try:
        paths = split_store_paths(cache)
    except Exception:  # noqa: BLE001  (no cache layout: nothing to evaluate on)
        return None
    val = [p for p in paths if p.rstrip("/").endswith("/val")]
    return val[0] if val else None


def resolve_eval_every(eval_every: int | None, epochs: int, has_val: bool) -> int:
    """Epochs between evaluations (0 = off).

    Raises:
        UsageError: ``--eval-every N > 0`` and the cache has no labelled val split.
    """
    if eval_every is None:
        return max(1, round(epochs / EVALUATIONS)) if has_val else 0
    if eval_every > 0 and not has_val:
        raise UsageError(f"--eval-every {eval_every}: the cache has no labelled val split to evaluate on "
                         "(build it with a val/ folder), or pass --eval-every 0")
    return eval_every


class PeriodicEval:
    """The kNN-20 evaluation of one run (module doc); built once per run, on rank 0."""

    def __init__(self, cfg: Any, targets: Any, input_size: int, device: torch.device, every: int, val_path: str) -> None:
        from storage import open_store

        self.cfg, self.targets, self.device, self.every = cfg, targets, device, every
        self.input_size = input_size
        store = open_store(val_path)
        store.require_complete("evaluation during distillation")
        meta = store.load_metadata()
        keep = np.flatnonzero(meta.labels >= 0)
        self.val_images = self._val_listing(cfg, store).subset([int(i) for i in keep])
        self.val_labels = meta.labels[keep].astype(np.int64)
        val_teacher = np.asarray(store.load_all(), dtype=np.float32)[keep]
        self.val_teacher = val_teacher[:, 0] if val_teacher.ndim == 3 else val_teacher  # a multi-view cache: view 0
        n = len(targets.images)
        gen = torch.Generator().manual_seed(cfg.seed + SUBSAMPLE_SEED_OFFSET)
        size = n if cfg.eval_train_size == 0 else min(cfg.eval_train_size, n)
        rows = torch.randperm(n, generator=gen)[:size].sort().values if size < n else torch.arange(n)
        self.train_rows = rows
        self.train_labels = np.asarray(targets.images.labels, dtype=np.int64)[rows.numpy()]
        if (self.train_labels < 0).all():
            raise UsageError(f"--eval-every: the train split of {cfg.cache} has no labels; kNN needs them (or --eval-every 0)")

    @staticmethod
    def _val_listing(cfg: Any, store: Any) -> ImageList:
        """The images of the cache's val store, read from where the data is (folders, tar shards or
        Parquet) and checked row by row against the store: the ``val`` split of ``--data`` when it
        has one, else the val root the cache recorded, else ``val`` beside the train root."""
        columns = {"image_column": cfg.image_column, "label_column": cfg.label_column}
        splits = discover_splits(cfg.data, **columns)
        if "val" in splits:
            listing = splits["val"]
        else:
            root = str(store.provenance.get("data_root") or "")
            if "://" not in root and not os.path.exists(root):  # a moved dataset: val/ beside the train root
                root = os.path.join(os.path.dirname(str(cfg.data).rstrip("/")), "val")
            listing = discover_splits(root, **columns)["train"]
        return store_listing(store, listing, cfg.data)[0]

    @classmethod
    def create(cls, cfg: Any, targets: Any, input_size: int, device: torch.device, rank: int = 0) -> PeriodicEval | None:
        """The run's evaluation, or None when it is off (``resolve_eval_every``) or on a rank
        other than 0 (every rank checks the option, so a bad one fails on all of them)."""
        val = val_store_path(cfg.cache)
        every = resolve_eval_every(cfg.eval_every, cfg.epochs, val is not None)
        return cls(cfg, targets, input_size, device, every, val) if every and val and rank == 0 else None

    def due(self, epoch: int) -> bool:
        """Whether to evaluate after ``epoch`` epochs (every ``every``-th and the last)."""
        return epoch % self.every == 0 or epoch == self.cfg.epochs

    def knn_top1(self, train: np.ndarray, val: np.ndarray) -> float:
        """DINO kNN-20 top-1 (%) of L2-normalised ``val`` ``(Q, D)`` against ``train`` ``(M, D)``."""
        k = min(KNN_K, len(train))
        sims, idx = search(val, train, k, metric="ip", backend="torch", device=str(self.device))
        num_classes = int(max(self.train_labels.max(), self.val_labels.max())) + 1
        ranked = weighted_vote(self.train_labels[idx], sims, num_classes, KNN_TEMPERATURE, top=1)
        return 100.0 * float((ranked[:, 0] == self.val_labels).mean())

    def reference(self) -> dict[str, float]:
        """``{"teacher_knn_top1": %}``: the cached teacher embeddings under the same protocol."""
        teacher = self.targets.reference(self.train_rows).float().cpu().numpy()  # view 0 of a multi-view cache
        return {"teacher_knn_top1": self.knn_top1(l2_normalize(teacher), l2_normalize(self.val_teacher))}

    @torch.no_grad()
    def _features(self, student: Student, images: ImageList, rows: list[int]) -> np.ndarray:
        recipe = eval_transform_recipe(student.spec, self.input_size)
        dataset = ReferenceImages(images, recipe["crop"], recipe["resize"], None)
        bs = self.cfg.batch_size
        loader = DataLoader(dataset, batch_sampler=[rows[i:i + bs] for i in range(0, len(rows), bs)], num_workers=self.cfg.workers)
        out = []
        for batch, _ in loader:
            x = normalise(batch.to(self.device), student.spec.mean, student.spec.std)
            with autocast(self.device):
                out.append(student.backbone(x).float().cpu())
        return l2_normalize(torch.cat(out).numpy())

    def evaluate(self, student: Student) -> dict[str, float]:
        """``{"knn_top1": %, "eval_train_rows": M, "eval_s": seconds}`` for the student now; its
        mode and every random state are as before."""
        start = time.perf_counter()
        was_training = student.training
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            student.eval()
            try:
                train = self._features(student, self.targets.images, self.train_rows.tolist())
                val = self._features(student, self.val_images, list(range(len(self.val_images))))
            finally:
                student.train(was_training)
            top1 = self.knn_top1(train, val)
        return {"knn_top1": top1, "eval_train_rows": int(len(self.train_rows)), "eval_s": round(time.perf_counter() - start, 3)}
