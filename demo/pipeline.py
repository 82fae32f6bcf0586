"""The offline demo: the whole CompRess pipeline on real images in minutes on a CPU.

``run_demo(DemoConfig(...))`` does, in ``OUT`` (every stage reuses or resumes what a previous
run left):

1. ``data/``: a balanced Fashion-MNIST subset exported as an ImageFolder (PNG);
2. ``cache/``: ``compress-cache build`` with the ImageNet MobileNetV2 teacher
   (``supervised_mobilenet_v2``, images upsampled to ``teacher_size``);
3. ``runs/student/``: ``compress-distill run`` into ``micro_mobilenet`` (>10x smaller in
   parameters and FLOPs), no labels;
4. ``features/``: features of the distilled student, of the same student untrained, and raw
   pixels (the teacher's are the cache itself);
5. ``results/``: kNN (CompRess and DINO protocols), fast linear probe and cluster alignment
   (10 clusters) for each, one table (``results.md``) and pictures (loss curve, cluster grid,
   accuracy bar chart);
6. ``student.onnx``, ``student.int8.onnx``, ``model.safetensors``: the distilled student
   exported (``demo.deploy``); its ONNX fp32 and INT8 rows are evaluated like the PyTorch
   one, with size on disk and batch-1 CPU latency measured in the same run.

The teacher is ImageNet-*supervised* (no self-supervised CNN weights are available offline);
the distillation itself uses no labels. Labels are used only by the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import numpy as np

from demo.config import DemoConfig, demo_distill_config
from demo.fashion_mnist import Split, balanced_subset, find_full_set, load_full_set, load_subset
from demo.image_folder import export_split
from storage.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["METRICS", "DemoConfig", "demo_distill_config", "run_demo"]

log = logging.getLogger(__name__)
TEACHER = "supervised_mobilenet_v2"


# ---- stage 1: data ----------------------------------------------------------------------
def demo_splits(cfg: DemoConfig) -> tuple[Split, Split, str]:
    """The train and val images and a description of where they came from."""
    full_dir = find_full_set()
    if full_dir:
        train, val = load_full_set(full_dir)
        source = f"Fashion-MNIST ({full_dir})"
    else:
        train, val = load_subset()
        source = "Fashion-MNIST bundled balanced subset (10k/2k)"
        if cfg.full:
            log.warning("the full Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): using the bundled 10k/2k")
    if not cfg.full:
        train = balanced_subset(train, cfg.train_per_class, cfg.distill.seed)
        val = balanced_subset(val, cfg.val_per_class, cfg.distill.seed + 1)
    return train, val, source


def prepare_data(cfg: DemoConfig) -> tuple[str, dict[str, Split], str]:
    """Export the splits as ``OUT/data/{train,val}/<class>/NNNNN.png`` (reused when identical)."""
    train, val, source = demo_splits(cfg)
    root = os.path.join(cfg.out, "data")
    splits = {"train": train, "val": val}
    for name, split in splits.items():
        wrote = export_split(split, os.path.join(root, name))
        log.info("%s %s images (%d) in %s", "wrote" if wrote else "reusing", name, len(split.labels), os.path.join(root, name))
    return root, splits, source


# ---- stage 2: teacher cache -----------------------------------------------------------
def build_teacher_cache(cfg: DemoConfig, data: str, weights: str) -> str:
    from cache_builder.build import BuildConfig, build_cache

    cache = os.path.join(cfg.out, "cache")
    build_cache(BuildConfig(
        teacher=TEACHER, weights=weights, data=data, out=cache, input_size=cfg.teacher_size, resize_size=cfg.teacher_size,
        batch_size=128, workers=cfg.distill.workers, device=cfg.distill.device, progress=cfg.distill.progress, knn=False,
    ))
    return cache


# ---- stage 3: distillation --------------------------------------------------------------
def distill_config(cfg: DemoConfig, cache: str, data: str) -> Any:
    """The demo's nested ``DistillConfig`` pointed at its cache, data and ``OUT/runs/student``."""
    return dataclasses.replace(cfg.distill, cache=cache, data=data, out=os.path.join(cfg.out, "runs", "student"))


# ---- stage 4: features ------------------------------------------------------------------
def raw_pixel_features(splits: dict[str, Split], data: str, out: str) -> str:
    """``out/{train,val}`` stores of raw pixels (784-d, L2-normalised at evaluation), rows,
    labels and paths exactly as the ImageFolder listing of ``data`` (the export's file names
    are the images' indices). Written by the embedding pipeline (``cache_builder.embed``) with
    ``Flatten`` as the network, over the in-memory images."""
    import torch

    from cache_builder.embed import Embedder, StoreRows, embed_shards
    from demo.image_folder import split_fingerprint
    from evaluate.features import complete_store_matches
    from evaluate.image_folder import list_classes, list_split
    from storage import create_store

    classes = list_classes(data)
    embedder = Embedder(torch.nn.Flatten(), torch.device("cpu"), amp=False, l2=False)
    for name, split in splits.items():
        listing = list_split(data, name, classes)
        order = np.array([int(os.path.splitext(os.path.basename(p))[0]) for p in listing.paths])
        images = split.images[order]
        path, fingerprint = os.path.join(out, name), split_fingerprint(split)
        if complete_store_matches(path, fingerprint):
            continue
        writer = create_store(path, len(order), int(np.prod(images.shape[1:])), "float32", backend="zarr", normalized=False,
                              fingerprint=fingerprint, provenance={"model": "raw pixels", "split": name}, exist_ok=True)
        rows = StoreRows(np.arange(len(order), dtype=np.int64), np.asarray(listing.labels, dtype=np.int64), listing.paths)
        pending = writer.pending_shards()
        batches = ((torch.arange(a, b), torch.from_numpy(images[a:b].astype(np.float32) / 255.0), torch.empty(0))
                   for a, b in map(writer.shard_rows, pending))
        embed_shards(writer, pending, batches, embedder, rows)
        writer.finalize()
    return out


def model_features(model: str, data: str, out: str, cfg: DemoConfig) -> str:
    """Features of ``model`` (a run dir or export) in ``out``: reused while model and data are
    the same, re-extracted (replacing the old ones) when either changed."""
    from cache_builder.devices import resolve_device
    from evaluate.config import FeaturesConfig
    from evaluate.features import extract_features

    d = cfg.distill
    extract_features(FeaturesConfig(model=model, data=data, out=out, batch_size=256, workers=d.workers,
                                    device=str(resolve_device(d.device)), progress=d.progress, overwrite=True))
    return out


# ---- stage 5: evaluation ----------------------------------------------------------------
METRICS = (  # (column, command, protocol, metric key)
    ("NN", "knn", "compress", "nn"),
    ("kNN-20", "knn", "compress", "knn20"),
    ("kNN-20 (DINO)", "knn_dino", "dino", "knn20_top1"),
    ("linear", "linear", "compress-fast", "linear_top1"),
    ("cluster", "cluster", "compress", "cluster_acc"),
)


def evaluate_features(features: str, results_dir: str, *, grid: str | None = None, data_root: str | None = None) -> dict[str, float]:
    """kNN (both protocols), fast linear probe and 10-cluster alignment of one features dir;
    records go to ``results_dir/<command>.json`` and are reused while the features match."""
    from evaluate.cluster import ClusterConfig, cluster
    from evaluate.knn import KnnConfig, knn
    from evaluate.linear import LinearConfig, linear
    from evaluate.results import write_result

    os.makedirs(results_dir, exist_ok=True)
    runs = {
        "knn": lambda: knn(KnnConfig(features=features, protocol="compress", ks=(1, 20))),
        "knn_dino": lambda: knn(KnnConfig(features=features, protocol="dino", ks=(20,))),
        "linear": lambda: linear(LinearConfig(features=features, epochs=40, batch_size=256)),
        "cluster": lambda: cluster(ClusterConfig(features=features, clusters=10, iterations=20, grid=grid,
                                                 data_root=data_root, grid_clusters=10, grid_samples=10)),
    }
    stamp = _features_stamp(features)
    metrics: dict[str, float] = {}
    for name, evaluate in runs.items():
        path = os.path.join(results_dir, f"{name}.json")
        record = json.load(open(path)) if os.path.isfile(path) else None
        if record is None or record.get("features_stamp") != stamp or (name == "cluster" and grid and not os.path.isfile(grid)):
            record = {**evaluate(), "features_stamp": stamp}
            write_result(record, path)
        for column, command, _, key in METRICS:
            if command == name:
                metrics[column] = float(record["metrics"][key])
    return metrics


def _features_stamp(features: str) -> str:
    """The content fingerprints (``Store.content_fingerprint``) of the train and val stores."""
    from storage import open_store

    return "|".join(open_store(os.path.join(features, split)).content_fingerprint() for split in ("train", "val"))


def load_profiles(path: str, models: dict[str, tuple[Any, int]]) -> dict[str, dict[str, Any]]:
    """Size and speed of each ``{name: (build_model, input_size)}``, measured once and kept in
    ``path`` (a rerun reuses them)."""
    from demo.model_profile import profile_model

    known = json.load(open(path)) if os.path.isfile(path) else {}
    missing = [name for name, (_, size) in models.items() if known.get(name, {}).get("input_size") != size]
    for name in missing:
        build, size = models[name]
        known[name] = dataclasses.asdict(profile_model(build(), size))
    if missing:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, known)
    return {name: known[name] for name in models}


DEPLOY_LABELS = {"onnx fp32": "ONNX fp32", "onnx int8": "ONNX INT8"}


def deployed_rows(cfg: DemoConfig, run: str, data: str, student_row: dict[str, Any], feats: str) -> list[dict[str, Any]]:
    """Export the student (``demo.deploy``), evaluate its ONNX fp32 and INT8 files like the
    PyTorch student and time all three together; adds ``deploy`` to ``student_row``."""
    from demo.deploy import EXPORTS, deploy_timing, export_student_files

    files = export_student_files(cfg.out, run)
    timing = deploy_timing(run, files)
    student_row["deploy"] = timing["pytorch"]
    rows = []
    for i, name in enumerate(EXPORTS):
        features = model_features(files[name], data, os.path.join(feats, name.replace(" ", "-")), cfg)
        metrics = evaluate_features(features, os.path.join(cfg.out, "results", f"deploy-{i}"))
        profile = None if student_row.get("profile") is None else {**student_row["profile"], "images_per_s": timing[name]["images_per_s"]}
        rows.append({"name": student_row["name"].replace(":", f" {DEPLOY_LABELS[name]}:", 1), "features": features,
                     "metrics": metrics, "profile": profile, "deploy": timing[name], "file": files[name]})
    return rows


def deploy_summary(student: dict[str, Any], fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, float]:
    """The parity and speed ratios of the deployed rows (docs/deploy.md's targets)."""
    return {
        "onnx_knn20_delta": fp32["metrics"]["kNN-20"] - student["metrics"]["kNN-20"],
        "int8_knn20_delta": int8["metrics"]["kNN-20"] - fp32["metrics"]["kNN-20"],
        "int8_size_ratio": int8["deploy"]["bytes"] / fp32["deploy"]["bytes"],
        "int8_b1_speedup": fp32["deploy"]["b1_ms"] / int8["deploy"]["b1_ms"],
        "onnx_b1_speedup": student["deploy"]["b1_ms"] / fp32["deploy"]["b1_ms"],
    }


# ---- report ---------------------------------------------------------------------------------
def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: accuracy columns (%), parameters, GFLOPs, img/s."""
    head = ["model", *[c for c, *_ in METRICS], "params", "GFLOPs", "img/s (CPU)", "size (MB)", "batch-1 ms (CPU)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        prof = r.get("profile")
        size = "-" if prof is None else f"{prof['params'] / 1e6:.3f} M"
        flops = "-" if prof is None else f"{prof['gflops']:.4f}"
        dep = r.get("deploy")
        speed = f"{dep['images_per_s']:.0f}" if dep else "-" if prof is None else f"{prof['images_per_s']:.0f}"
        cells = [f"{r['metrics'][c]:.1f}" for c, *_ in METRICS]
        disk = "-" if dep is None else f"{dep['bytes'] / 1e6:.3f}"
        b1 = "-" if dep is None else f"{dep['b1_ms']:.3f}"
        lines.append("| " + " | ".join([r["name"], *cells, size, flops, speed, disk, b1]) + " |")
    return "\n".join(lines)


def write_report(cfg: DemoConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """``results.md`` (+ ``results.json``) and the bar chart; returns the paths."""
    from evaluate.results import bar_chart
    from evaluate.tradeoff import tradeoff_chart

    out, d = cfg.out, cfg.distill
    cols = [c for c, *_ in METRICS]
    chart = bar_chart([r["name"] for r in rows], cols, [[r["metrics"][c] for c in cols] for r in rows], os.path.join(out, "accuracy.png"))
    tradeoff_chart([{"name": r["name"], "knn20": r["metrics"]["kNN-20"], "linear": r["metrics"]["linear"], **({"parameters": r["profile"]["params"], "latency_ms": 1e3 / r["profile"]["images_per_s"]} if r.get("profile") else {})} for r in rows], os.path.join(out, "tradeoff.png"))  # noqa: E501
    table = results_table(rows)
    text = [
        "# CompRess demo: MobileNetV2 (ImageNet) -> micro_mobilenet on Fashion-MNIST",
        "",
        f"Data: {summary['source']}, {summary['train']} train / {summary['val']} val images. Teacher: torchvision MobileNetV2 "
        f"(ImageNet-supervised) at {cfg.teacher_size} px; student: `{d.student}` at {d.input_size} px, distilled with "
        f"CompRess `{d.variant}` (bank {summary['bank_size']}, tau {d.t_teacher}, {d.epochs} epochs, no labels). Accuracies in % on val; "
        "kNN and cluster alignment as in docs/evaluate.md (cluster: 10 clusters, Hungarian on train); linear = fast probe on "
        "frozen features. img/s: forward throughput on this machine, batch 256 (for the deployed rows and the PyTorch student: one "
        "thread, measured interleaved with each other in this run). size: the file on disk (model.safetensors for the PyTorch student); "
        "batch-1 ms: median CPU latency of one image (one thread).",
        "",
        table,
        "",
        f"Distilled student kNN-20 / teacher: {summary['knn_ratio']:.3f}; gain over the untrained student: "
        f"{summary['knn_gain']:+.1f} points. Wall time: {summary['wall_time_s']:.0f} s.",
        "",
        _deploy_line(summary["deploy"]),
        "",
        "![loss curve](loss_curve.png) ![accuracy](accuracy.png)",
        "",
        "Student clusters (one row per cluster, 10 random train images each):",
        "",
        "![clusters](clusters.png)",
    ]
    md = os.path.join(out, "results.md")
    write_text_atomic(md, "\n".join(text) + "\n")
    write_json_atomic(os.path.join(out, "results.json"), {"config": _config_json(cfg), "summary": summary, "rows": rows})
    return {"table": md, "chart": chart, "loss_curve": os.path.join(out, "loss_curve.png"), "clusters": os.path.join(out, "clusters.png"),
            "tradeoff": os.path.join(out, "tradeoff.png")}


def _deploy_line(d: dict[str, float]) -> str:
    return (f"Deployed (student.onnx, student.int8.onnx, model.safetensors): kNN-20 ONNX fp32 - PyTorch {d['onnx_knn20_delta']:+.2f}, "
            f"INT8 - fp32 {d['int8_knn20_delta']:+.2f} points; INT8 file {d['int8_size_ratio']:.2f}x the fp32 file; batch-1 CPU "
            f"latency speed-up: ONNX fp32 {d['onnx_b1_speedup']:.2f}x over PyTorch eager, INT8 {d['int8_b1_speedup']:.2f}x over fp32 "
            "(below 1: slower).")


def _config_json(cfg: DemoConfig) -> dict[str, Any]:
    """The demo config with its nested distillation config, JSON-ready."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


# ---- the whole demo -----------------------------------------------------------------------
def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"rows", "summary", "files", "table"}``."""
    import torch

    from cache_builder.teachers import load_teacher
    from demo.teacher_weights import find_teacher_weights
    from distill.engine import run as distill_run
    from distill.export import export_untrained, load_student

    start = time.perf_counter()
    weights = find_teacher_weights(cfg.weights)
    os.makedirs(cfg.out, exist_ok=True)
    data, splits, source = prepare_data(cfg)
    cache = build_teacher_cache(cfg, data, weights)
    dcfg = distill_config(cfg, cache, data)
    distill_run(dcfg)
    with open(os.path.join(dcfg.out, "loss_curve.png"), "rb") as f:
        write_bytes_atomic(os.path.join(cfg.out, "loss_curve.png"), f.read())
    untrained = os.path.join(cfg.out, "runs", "untrained", "student.pth")
    export_untrained(dcfg.student, dcfg.dim, dcfg.input_size, untrained, seed=dcfg.seed)

    feats = os.path.join(cfg.out, "features")
    sources = {
        "raw pixels": raw_pixel_features(splits, data, os.path.join(feats, "pixels")),
        f"teacher: MobileNetV2 @{cfg.teacher_size}px": cache,
        f"student untrained: {dcfg.student} @{dcfg.input_size}px": model_features(untrained, data, os.path.join(feats, "untrained"), cfg),
        f"student CompRess: {dcfg.student} @{dcfg.input_size}px": model_features(dcfg.out, data, os.path.join(feats, "student"), cfg),
    }
    teacher_name, untrained_name, student_name = list(sources)[1:]
    profiles = load_profiles(os.path.join(cfg.out, "results", "profiles.json"), {
        teacher_name: (lambda: load_teacher(TEACHER, weights)[0], cfg.teacher_size),
        untrained_name: (lambda: load_student(untrained)[0], dcfg.input_size),
    })
    profiles[student_name] = profiles[untrained_name]  # same architecture, same cost
    rows: list[dict[str, Any]] = []
    for i, (name, features) in enumerate(sources.items()):
        is_student = name.startswith("student CompRess")
        metrics = evaluate_features(features, os.path.join(cfg.out, "results", f"{i}"),
                                    grid=os.path.join(cfg.out, "clusters.png") if is_student else None,
                                    data_root=data if is_student else None)
        rows.append({"name": name, "features": features, "metrics": metrics, "profile": profiles.get(name)})
    rows += deployed_rows(cfg, dcfg.out, data, rows[3], feats)
    teacher, untrained_row, student = rows[1]["metrics"], rows[2]["metrics"], rows[3]["metrics"]
    summary = {
        "source": source, "train": len(splits["train"].labels), "val": len(splits["val"].labels),
        "bank_size": min(dcfg.bank_size, len(splits["train"].labels)),
        "knn_ratio": student["kNN-20"] / teacher["kNN-20"], "knn_gain": student["kNN-20"] - untrained_row["kNN-20"],
        "wall_time_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
        "deploy": deploy_summary(rows[3], rows[4], rows[5]),
    }
    files = write_report(cfg, rows, summary)
    return {"rows": rows, "summary": summary, "files": files, "table": results_table(rows)}
