"""The build's sanity check: the teacher's 1-NN accuracy of val against train.

A cheap signal that the cache is sensible (a random or mis-loaded teacher gives chance
accuracy); not an evaluation protocol (``compress-eval knn`` is).
"""

from __future__ import annotations

import numpy as np
import torch

import storage


def knn_top1(train: storage.Store, val: storage.Store, block: int = 1024) -> float | None:
    """1-NN accuracy of val against train (cosine = dot product of unit rows), over labelled val rows.

    Returns ``None`` when val or train has no labels.
    """
    train_labels = train.load_metadata().labels
    val_labels = val.load_metadata().labels
    keep = val_labels >= 0
    if not keep.any() or (train_labels < 0).all():
        return None
    xt = torch.from_numpy(np.asarray(train.load_all(), dtype=np.float32))
    xv = torch.from_numpy(np.asarray(val.load_all(), dtype=np.float32)[keep])
    yt = torch.from_numpy(train_labels)
    yv = torch.from_numpy(val_labels[keep])
    correct = 0
    for s in range(0, len(xv), block):
        nn_idx = (xv[s:s + block] @ xt.T).argmax(dim=1)
        correct += int((yt[nn_idx] == yv[s:s + block]).sum())
    return correct / len(xv)
