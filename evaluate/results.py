"""Result records: one JSON document per evaluation, and markdown comparison tables.

A record holds the metric values and everything needed to reproduce or compare them::

    {
      "command": "knn", "protocol": "compress",
      "metrics": {"nn": 53.4, "knn20": 55.1},
      "params": {...every protocol parameter...},
      "features": {"dir": ..., "train": {"path", "n", "d", "fingerprint"}, "val": {...}},
      "model": {...} or null, "dataset": ..., "split_sizes": {"train": N, "val": M},
      "backend": "faiss:cpu", "wall_time_s": 1.23, "created": ISO time, "version": "0.1.0"
    }
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
from typing import Any

from evaluate.errors import ResultError
from storage.atomic import write_atomic, write_json_atomic
from storage.package import package_version

RESULT_SUFFIX = ".json"


def make_result(
    command: str,
    protocol: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    feature_set: Any,
    *,
    wall_time: float,
    backend: str,
    model: dict[str, Any] | None = None,
    dataset: str | None = None,
    extra: dict[str, Any] | None = None,
    split_sizes: dict[str, int] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Build a result record (a JSON-ready dict). ``feature_set``: anything with
    ``describe()``; a ``FeatureSet`` gives the split sizes and class count, which
    ``split_sizes`` / ``num_classes`` otherwise give (e.g. retrieval's one split)."""
    features = feature_set.describe()
    return {
        "command": command,
        "protocol": protocol,
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "params": params,
        "features": features,
        "model": model,
        "dataset": dataset,
        "split_sizes": split_sizes if split_sizes is not None else {"train": feature_set.train.n, "val": feature_set.val.n},
        "num_classes": num_classes if num_classes is not None else feature_set.num_classes,
        "backend": backend,
        "wall_time_s": round(float(wall_time), 3),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "version": package_version(),
        **(extra or {}),
    }


def write_result(result: dict[str, Any], path: str) -> str:
    """Write ``result`` as JSON to ``path`` atomically (``storage.atomic``); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, result)
    return path


def track_result(result: dict[str, Any], out: str, loggers: tuple[str, ...], mlflow_uri: str | None = None) -> str:
    """Send a result's metrics (step 0) and params to the experiment trackers
    (``distill.tracking``): TensorBoard under ``<out dir>/tensorboard/<command>-<protocol>``, a
    new MLflow run named after the result file in experiment ``compress-eval``. Returns where."""
    from distill.tracking import Tracker

    run_dir = os.path.dirname(os.path.abspath(out))
    name = os.path.splitext(os.path.basename(out))[0]
    tracker = Tracker(run_dir, loggers, mlflow_uri=mlflow_uri, name=name, experiment="compress-eval",
                      params={"command": result["command"], "protocol": result["protocol"], **result["params"]},
                      subdir=os.path.join("tensorboard", name), keep_run_id=False)
    tracker.log(result["metrics"], 0)
    tracker.close(finished=True)
    return ", ".join(n for n in loggers if n != "jsonl") + f" ({run_dir})"


def read_results(sources: list[str]) -> list[dict[str, Any]]:
    """Result records from JSON files, or from every ``*.json`` result under run directories.

    Raises:
        ResultError: a path is neither a result file nor a directory holding results, or a
            file is not a result record.
    """
    out = []
    for src in sources:
        if os.path.isdir(src):
            files = sorted(glob.glob(os.path.join(src, "**", f"*{RESULT_SUFFIX}"), recursive=True))
            found = [r for r in (_read_one(f, strict=False) for f in files) if r is not None]
            if not found:
                raise ResultError(f"{src}: no evaluation results (JSON files with 'command' and 'metrics') found below it")
            out.extend(found)
        elif os.path.isfile(src):
            record = _read_one(src, strict=True)
            if record is not None:  # strict: never None
                out.append(record)
        else:
            raise ResultError(f"{src}: no such result file or run directory")
    return out


def _read_one(path: str, strict: bool) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        if strict:
            raise ResultError(f"{path}: not a readable JSON result ({e})") from None
        return None
    if not isinstance(obj, dict) or "metrics" not in obj or "command" not in obj:
        if strict:
            raise ResultError(f"{path}: not an evaluation result (expected keys 'command' and 'metrics')")
        return None
    obj.setdefault("_source", path)
    return obj


def result_name(result: dict[str, Any]) -> str:
    """Short row name: model name, else the features directory, else the file."""
    model = result.get("model") or {}
    if model.get("name"):
        return str(model["name"])
    feats = result.get("features") or {}
    return str(feats.get("dir") or result.get("_source", "?"))


def metric_table(result: dict[str, Any]) -> str:
    """A one-result table (metric | value) for the terminal, in markdown."""
    lines = [
        f"{result['command']} ({result['protocol']}) on {result_name(result)}: "
        + ", ".join(f"{name} {n}" for name, n in result["split_sizes"].items()) + ", "
        f"backend {result['backend']}, {result['wall_time_s']:.2f} s",
        "",
        "| metric | value (%) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["metrics"].items()]
    return "\n".join(lines)


def comparison_table(results: list[dict[str, Any]]) -> tuple[str, list[str], list[str], list[list[float | None]]]:
    """Markdown table comparing results: one row per evaluated thing, one column per
    ``command/protocol/metric``.

    Returns:
        ``(markdown, row_names, column_names, values)`` with ``values[row][col]`` or None.
    """
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], float] = {}
    for r in results:
        name = result_name(r)
        if name not in rows:
            rows.append(name)
        for metric, value in r["metrics"].items():
            col = f"{r['command']}/{r['protocol']}/{metric}"
            if col not in cols:
                cols.append(col)
            cells[(name, col)] = float(value)
    values = [[cells.get((row, col)) for col in cols] for row in rows]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row, vals in zip(rows, values):
        lines.append(f"| {row} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines), rows, cols, values


def bar_chart(rows: list[str], cols: list[str], values: list[list[float | None]], path: str) -> str:
    """Grouped bar chart PNG (one group per metric column, one bar per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) * max(1, len(rows)) / 2), 4.5))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(cols))
    for i, (row, vals) in enumerate(zip(rows, values)):
        ax.bar(x + i * width - 0.4 + width / 2, [0.0 if v is None else v for v in vals], width, label=row)
    ax.set_xticks(x)
    ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
