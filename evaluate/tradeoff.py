"""The accuracy-vs-cost picture (``tradeoff.png``): kNN-20 (and linear, when present) of every
evaluated model against its parameter count and, when a latency was measured, its CPU latency.

Points come from result records (``tradeoff_points``) or from any caller (the demo) as dicts
``{"name", "knn20", "linear"?, "parameters"?, "latency_ms"?}``:

* ``knn20``: ``knn``/``compress`` ``knn20``; ``linear``: a ``linear`` result's ``linear_top1``
  (the augmented protocol preferred over ``compress-fast``);
* ``parameters``: ``model.parameters`` of any of the model's results (written by
  ``compress-eval`` for ``--model``), or a ``parameters`` field of a latency result;
* ``latency_ms``: a ``latency`` result's CPU latency metric (the first metric whose name has
  ``latency`` or ends in ``_ms``, ``p50``/median names preferred).
"""

from __future__ import annotations

import os
from typing import Any

from storage.atomic import write_bytes_atomic

__all__ = ["tradeoff_chart", "tradeoff_points"]


def _latency(metrics: dict[str, Any]) -> float | None:
    names = [k for k in metrics if "latency" in k or k.endswith("_ms")]
    names.sort(key=lambda k: (not any(t in k for t in ("p50", "median")), k))
    return float(metrics[names[0]]) if names else None


def _parameters(result: dict[str, Any]) -> float | None:
    for holder in (result.get("model") or {}, result, result.get("params") or {}, result.get("metrics") or {}):
        value = holder.get("parameters")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def tradeoff_points(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per evaluated model (``evaluate.results.result_name``), in first-seen order."""
    from evaluate.results import result_name

    points: dict[str, dict[str, Any]] = {}
    for r in results:
        p = points.setdefault(result_name(r), {"name": result_name(r)})
        metrics = r.get("metrics") or {}
        if r.get("command") == "knn" and r.get("protocol") == "compress" and "knn20" in metrics:
            p["knn20"] = float(metrics["knn20"])
        if r.get("command") == "linear" and "linear_top1" in metrics and (r.get("protocol") == "compress" or "linear" not in p):
            p["linear"] = float(metrics["linear_top1"])
        if r.get("command") == "latency" and _latency(metrics) is not None:
            p["latency_ms"] = _latency(metrics)
        if _parameters(r) is not None:
            p["parameters"] = _parameters(r)
    return list(points.values())


def tradeoff_chart(points: list[dict[str, Any]], path: str) -> str | None:
    """Draw ``path`` (PNG, written atomically): accuracy vs parameters, and vs latency when any
    point has one; each point labelled with its model. Returns the path, or None (nothing
    written) when no point has both a kNN-20 accuracy and a parameter count or latency."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = [(key, label) for key, label in (("parameters", "parameters"), ("latency_ms", "CPU latency (ms / image)"))
                 if any(key in p and "knn20" in p for p in points)]
    if not axes_keys:
        return None
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6 * len(axes_keys), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_keys):
        for metric, marker, colour, legend in (("knn20", "o", "tab:blue", "kNN-20"), ("linear", "s", "tab:orange", "linear")):
            pts = [p for p in points if key in p and metric in p]
            if not pts:
                continue
            ax.scatter([p[key] for p in pts], [p[metric] for p in pts], marker=marker, color=colour, label=legend)
            for p in pts:
                ax.annotate(p["name"], (p[key], p[metric]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label + " (log scale)")
        ax.set_ylabel("accuracy on val (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("accuracy vs cost")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    return path
