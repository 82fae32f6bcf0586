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


def read_subset_file(path: str, train_paths: list[str]) -> np.ndarray:
    """Train rows named by a subset file (SimCLR's ``1percent.txt`` / ``10percent.txt`` format).

    One image per line, blank lines ignored. A line with a ``/`` is a path relative to the
    train root (``n01440764/n01440764_10026.JPEG``) and must equal a row's recorded path; a line
    without one (SimCLR's files: ``n01440764_10026.JPEG``) is matched against the rows' file
    names, which must then be unique.

    Args:
        path: the subset file.
        train_paths: the train split's N relative paths, in row order.
    Returns:
        ``(M,)`` int64 sorted row indices (duplicate lines count once).
    Raises:
        UsageError: unreadable file, a line matching no row (file, line number and entry
            named), an ambiguous file name, or an empty file.
    """
    import os

    try:
        with open(path, encoding="utf-8") as f:
            entries = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except OSError as e:
        raise UsageError(f"--subset-file {path}: cannot read it ({e.strerror or e})") from None
    if not entries:
        raise UsageError(f"--subset-file {path}: no image paths in it")
    by_path = {p.replace(os.sep, "/"): i for i, p in enumerate(train_paths)}
    by_name: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, p in enumerate(train_paths):
        name = p.replace(os.sep, "/").rsplit("/", 1)[-1]
        if name in by_name:
            ambiguous.add(name)
        by_name[name] = i
    rows = set()
    for line_no, entry in entries:
        entry = entry.replace("\\", "/")
        if "/" in entry:
            row = by_path.get(entry.removeprefix("./"))
        else:
            if entry in ambiguous:
                raise UsageError(f"--subset-file {path}:{line_no}: {entry!r} names several train images; give the relative path")
            row = by_name.get(entry)
        if row is None:
            raise UsageError(f"--subset-file {path}:{line_no}: {entry!r} is not an image of the train split")
        rows.add(row)
    return np.array(sorted(rows), dtype=np.int64)


def select_train_rows(labels: np.ndarray, paths: list[str], *, fraction: float | None = None, shots: int | None = None,
                      subset_file: str | None = None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The labelled train rows a few-label protocol (kNN, linear) uses: the one selection.

    Args:
        labels: ``(N,)`` int64 train labels (``-1`` = unknown, never selected).
        paths: the N relative train paths (for ``subset_file``).
        fraction / shots / subset_file: at most one (``label_subset`` / ``read_subset_file``).
        seed: the draw's seed.
    Returns:
        ``(rows, record)``: ``(M,)`` int64 sorted row indices, and a JSON-ready description
        (rule, sizes, the subset file's sha256) to store in the result.
    Raises:
        UsageError: several options, or the subset file names an unlabelled row.
    """
    given = [name for name, v in (("--fraction", fraction), ("--shots", shots), ("--subset-file", subset_file)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give one, not several")
    labelled = np.flatnonzero(labels >= 0)
    record: dict = {"rule": "all labelled train rows", "seed": seed}
    if subset_file is not None:
        from storage.hashing import file_sha256

        rows = read_subset_file(subset_file, paths)
        unlabelled = rows[labels[rows] < 0]
        if len(unlabelled):
            raise UsageError(f"--subset-file {subset_file}: {paths[int(unlabelled[0])]!r} has no label")
        record = {"rule": "subset file", "subset_file": subset_file, "subset_file_sha256": file_sha256(subset_file)}
    else:
        rows = labelled[label_subset(labels[labelled], fraction=fraction, shots=shots, seed=seed)]
        if fraction is not None:
            record = {"rule": "class-balanced fraction", "fraction": fraction, "seed": seed}
        elif shots is not None:
            record = {"rule": "shots per class", "shots": shots, "seed": seed}
    record.update(rows=int(len(rows)), of=int(len(labelled)), classes=int(len(np.unique(labels[rows]))))
    return rows, record
