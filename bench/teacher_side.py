"""Ablation group "teacher side" (``bench/ablation.py --groups teacher-side``): where the
teacher's targets come from, on the demo data.

Four rows, each over the given seeds, everything else the demo's distillation (micro_mobilenet
at 32 px, 1q, a 4k queue, cosine lr 0.05), with the same student crops for all of them
(RandomResizedCrop of scale ``--crop-scale``, default 0.08-1 as the multi-view cache draws):

* online: the MobileNetV2 teacher runs every step on the student's crop (``--teacher``);
* 1-view cache: one centre-crop embedding per image (the paper's cache);
* K-view cache, K = 4 and 8 (``compress-cache build --views K --augment rrc``): the student
  trains on one of the K cached crops per epoch.

Reported: NN (kNN-1), kNN-20 (CompRess protocol), the fast linear probe (val top-1), the
distillation wall time per epoch (everything: loader start, bank init, probes, checkpoints), the
training throughput (median images/s of the steps, ``metrics.jsonl``: probes and checkpoints left
out), and the one-off teacher cost (the cache build; online: none,
the teacher is inside the epoch time). The paper (ImageNet, ResNet-50 -> ResNet-18 style): the
online teacher 53.4 NN vs the 1-view cache 53.0.

    python bench/ablation.py --out runs/ablation --groups teacher-side --train-per-class 200 --val-per-class 50 --epochs 4 --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any

PAPER = "paper (ImageNet): online teacher 53.4 NN, 1-view cache 53.0 NN (-0.4), linear -0.5, cache ~3x faster"


def _mean_sd(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a run that reports no time is left out); nan if none."""
    finite = [v for v in values if v == v]
    return statistics.mean(finite) if finite else float("nan")


def _epochs_logged(out: str) -> int:
    """Epochs a run directory's metrics.jsonl records as finished (0 for none)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    return max([r["epoch"] for r in map(json.loads, open(path)) if "overlap10" in r] or [0])


def _epoch_seconds(out: str, before: int, elapsed: float) -> float:
    """Wall seconds per epoch of the epochs trained now (kept in OUT/wall.json, so a reused
    finished run reports the time it took when it trained; a resumed one, its last stretch)."""
    path = os.path.join(out, "wall.json")
    trained = _epochs_logged(out) - before
    if trained > 0:
        with open(path, "w") as f:
            json.dump({"s_per_epoch": elapsed / trained, "epochs": trained}, f)
    return float(json.load(open(path))["s_per_epoch"]) if os.path.isfile(path) else float("nan")


def build_cache_views(cfg: Any, data: str, weights: str, views: int | None, out: str) -> tuple[str, float]:
    """The demo teacher's cache of ``data`` in ``out`` (``views`` RRC views, or the centre crop);
    returns ``(cache, build seconds)`` (0 when it was already complete)."""
    from cache_builder.build import BuildConfig, build_cache
    from demo.pipeline import TEACHER

    extra: dict[str, Any] = {"views": views, "augment": "rrc"} if views else {}
    return out, _timed_build(out, lambda: build_cache(BuildConfig(
        teacher=TEACHER, weights=weights, data=data, out=out, input_size=cfg.teacher_size, resize_size=cfg.teacher_size,
        batch_size=128, workers=cfg.distill.workers, device=cfg.distill.device, progress=False, knn=False, splits=("train",),
        **extra)))


def _timed_build(cache: str, build: Any) -> float:
    """Run ``build`` and return the seconds the cache took to build: measured now when the
    store was not complete yet (kept in CACHE/build_seconds.json), else the recorded time."""
    path = os.path.join(cache, "build_seconds.json")
    fresh = not _complete(os.path.join(cache, "train"))
    start = time.perf_counter()
    build()
    if fresh:
        with open(path, "w") as f:
            json.dump({"seconds": time.perf_counter() - start}, f)
    return float(json.load(open(path))["seconds"]) if os.path.isfile(path) else float("nan")


def _complete(store: str) -> bool:
    manifest = os.path.join(store, "manifest.json")
    return os.path.isfile(manifest) and bool(json.load(open(manifest)).get("complete"))


def run_teacher_side(base: Any, root: str, seeds: list[int], crop_scale: tuple[float, float] = (0.08, 1.0)) -> list[str]:
    """Train and evaluate every row; returns the markdown table lines."""
    from demo.pipeline import TEACHER, build_teacher_cache, model_features, prepare_data
    from demo.teacher_weights import find_teacher_weights
    from distill.engine import run as distill_run
    from evaluate.knn import KnnConfig, knn
    from evaluate.linear import LinearConfig, linear

    weights = find_teacher_weights(base.weights)
    data, splits, source = prepare_data(base)
    one_view = os.path.join(base.out, "cache")  # the demo's own cache (train + val)
    one_view_s = _timed_build(one_view, lambda: build_teacher_cache(base, data, weights))
    teacher = knn(KnnConfig(features=one_view, protocol="compress", ks=(1, 20)))["metrics"]
    rows: list[tuple[str, dict[str, Any], float]] = [
        ("online teacher", {"teacher": TEACHER, "weights": weights, "teacher_input_size": base.teacher_size,
                            "teacher_resize_size": base.teacher_size, "cache": None}, 0.0),
        ("1-view cache (centre crop)", {"cache": one_view}, one_view_s)]
    for k in (4, 8):
        cache, seconds = build_cache_views(base, data, weights, k, os.path.join(root, f"cache-{k}views"))
        rows.append((f"{k}-view cache (rrc)", {"cache": cache}, seconds))
    epochs = base.distill.epochs
    n_train = len(splits["train"].labels)
    lines = [f"{source}: {n_train} train / {len(splits['val'].labels)} val images, {epochs} epochs, student "
             f"{base.distill.student} @{base.distill.input_size}px, crops of scale {crop_scale[0]}-{crop_scale[1]}, seeds "
             f"{','.join(map(str, seeds))} (mean ± sd); teacher MobileNetV2 @{base.teacher_size}px NN {teacher['nn']:.1f} "
             f"kNN-20 {teacher['knn20']:.1f}. {PAPER}.", "",
             "| teacher side | NN | kNN-20 | linear | s / epoch | train img/s | teacher cost (cache build, s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, overrides, cache_s in rows:
        nn, k20, lin, per_epoch, rates = [], [], [], [], []
        for seed in seeds:
            tag = label.split(" ")[0].replace("-", "") + f"-seed{seed}"
            out = os.path.join(root, "teacher-side", tag)
            dcfg = dataclasses.replace(base.distill, data=data, out=out, seed=seed, crop_scale=crop_scale, log_every=2, **overrides)
            before = _epochs_logged(out)
            t0 = time.perf_counter()
            distill_run(dcfg)
            per_epoch.append(_epoch_seconds(out, before, time.perf_counter() - t0))
            rates += [r["img_per_s"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "img_per_s" in r]
            feats = model_features(out, data, os.path.join(out, "features"), base)
            m = knn(KnnConfig(features=feats, protocol="compress", ks=(1, 20)))["metrics"]
            nn.append(m["nn"])
            k20.append(m["knn20"])
            lin.append(linear(LinearConfig(features=feats, epochs=40, batch_size=256))["metrics"]["linear_top1"])
        rate = f"{statistics.median(rates):.0f}" if rates else "n/a"
        line = (f"| {label} | {_mean_sd(nn)} | {_mean_sd(k20)} | {_mean_sd(lin)} | {_finite_mean(per_epoch):.1f} | {rate} | "
                f"{cache_s:.0f} |")
        lines.append(line)
        print(line, flush=True)
    return lines
