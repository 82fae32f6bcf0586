"""Few-label training subsets: a class-balanced, seeded fraction of the train set or N shots
per class (the 1 % / 10 % settings of the paper)."""

from __future__ import annotations

import numpy as np

from storage.errors import UsageError


def label_subset(labels: np.ndarray, *, fraction: float | None = None, shots: int | None = None, seed: int = 0) -> np.ndarray:
    """Row indices of a class-balanced subset, sorted.

    Args:
        labels: ``(N,)`` int64 class ids.
        fraction: keep ``round(fraction * n_c)`` rows (at least 1) of each class ``c``.
        shots: keep exactly ``shots`` rows of each class.
        seed: the draw is a function of ``(labels, seed)`` only.
    Returns:
        ``(M,)`` int64 sorted row indices; all rows if neither option is given.
    Raises:
        UsageError: both options, fraction outside (0, 1], shots < 1, or a class with fewer
            than ``shots`` rows.
    """
    if fraction is not None and shots is not None:
        raise UsageError("--fraction and --shots: give one, not both")
    if fraction is None and shots is None:
        return np.arange(len(labels), dtype=np.int64)
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
    if shots is not None and shots < 1:
        raise UsageError(f"--shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == c)
        take = shots if shots is not None else max(1, int(round(float(fraction or 0) * len(rows))))
        if take > len(rows):
            raise UsageError(f"--shots {shots}: class {c} has {len(rows)} train rows, fewer than shots = {shots}")
        keep.append(rng.permutation(rows)[:take])
    return np.sort(np.concatenate(keep)).astype(np.int64)
