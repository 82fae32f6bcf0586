"""Ablation of the CompRess settings on the demo data (bank size, temperature, variant, teacher size,
student architecture).

Reuses the demo's data and teacher cache (``compress-demo --out OUT`` builds them; this
script builds them too if missing), distils one student per setting with everything else at
the demo's defaults, and reports the student's val kNN accuracy (CompRess protocol: NN and
kNN-20, L2 on L2-normalised features) next to the teacher's, as the paper's ablation tables
do (docs/architecture.md, "The method": bigger bank better, tau = 0.04 best).

    python bench/ablation.py --out runs/ablation --train-per-class 500 --val-per-class 100 --epochs 15   # CPU
    python bench/ablation.py --out runs/demo-full --full     # GPU: all 60k/10k
    python bench/ablation.py --out runs/ablation --groups student --train-per-class 200 --val-per-class 50 --epochs 10

Each row reports the student backbone's parameters and GFLOPs at its input size (counted on
the meta device) beside the kNN accuracy.

Every run resumes/reuses: rerunning after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from demo.pipeline import DemoConfig, build_teacher_cache, distill_config, model_features, prepare_data  # noqa: E402
from demo.teacher_weights import find_teacher_weights  # noqa: E402


def settings(n_train: int, include: list[str]) -> list[tuple[str, dict]]:
    """``(group, overrides of the demo's defaults)`` for each ablation row."""
    rows: list[tuple[str, dict]] = []
    if "default" in include:  # the demo's settings alone (1q, queue of 4096), e.g. beside static over several seeds
        rows += [("default", {})]
    if "bank" in include:
        rows += [("bank", {"bank_size": n}) for n in (256, 1024, 4096, n_train)]
    if "temperature" in include:
        rows += [("temperature", {"t": t}) for t in (0.02, 0.04, 0.07, 0.1)]
    if "teacher" in include:  # teacher input size: a stronger teacher vs how fully a 32-px student follows it
        rows += [("teacher", {"teacher_size": size}) for size in (64, 96)]
    if "variant" in include:
        rows += [("variant", {"variant": v}) for v in ("1q", "2q", "2q-momentum")]
    if "variant" in include or "static" in include:  # 1q-style; top-512 teacher neighbours + 2048 random rows
        rows += [("static", {"bank": "static-faiss"}), ("static", {"bank": "static-faiss", "tail_correction": False})]
    if "student" in include:  # the demo's micro CNN vs a timm student of similar cost, both at 32 px
        rows += [("student", {"student": s}) for s in ("micro_mobilenet", "timm:mobilenetv3_small_050")]
    return rows


def apply(base: DemoConfig, overrides: dict) -> DemoConfig:
    """``base`` with ``overrides``: ``teacher_size`` is the demo's own setting, ``t`` sets both
    temperatures, every other key is a field of the nested ``DistillConfig``."""
    demo = {k: v for k, v in overrides.items() if k == "teacher_size"}
    distill = {k: v for k, v in overrides.items() if k not in demo and k != "t"}
    if "t" in overrides:
        distill.update(t_teacher=overrides["t"], t_student=overrides["t"])
    return dataclasses.replace(base, distill=dataclasses.replace(base.distill, **distill), **demo)


def student_cost(student: str, input_size: int) -> tuple[int, float]:
    """``(parameters, GFLOPs at input_size)`` of the student's backbone (meta device)."""
    import torch

    from cache_builder.architectures import count_parameters, gflops
    from distill.students import get_student_spec

    with torch.device("meta"):
        backbone = get_student_spec(student).builder().eval()
    return count_parameters(backbone), gflops(backbone, input_size)


def _mean_range(values: list[float]) -> str:
    """``mean`` for one value, ``mean (min-max)`` for several."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="demo output directory (data and cache are shared with compress-demo)")
    p.add_argument("--full", action="store_true", help="all images (60k/10k when the full Fashion-MNIST is installed)")
    p.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the demo's)")
    p.add_argument("--train-per-class", type=int, default=None, help="balanced subset size (default: the demo's)")
    p.add_argument("--val-per-class", type=int, default=None)
    p.add_argument("--groups", default="bank,temperature,variant,teacher",
                   help="comma-separated: default, bank, temperature, variant (includes static), static, teacher, student, "
                        "teacher-side (online teacher vs 1-, 4- and 8-view caches: bench/teacher_side.py)")
    p.add_argument("--seeds", default="0", help="comma-separated distillation seeds; each row reports the mean (and the range) over them")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="teacher-side group: DataLoader workers (0 on a small shared CPU)")
    p.add_argument("--markdown", default=None, help="also write the table here (default OUT/ablation.md)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    groups = args.groups.split(",")
    if "teacher-side" in groups:
        teacher_side(args)
        groups.remove("teacher-side")
        if not groups:
            return

    base = DemoConfig(out=args.out, full=args.full)
    base = apply(base, {"device": args.device, "progress": False, **({"epochs": args.epochs} if args.epochs else {})})
    for field in ("train_per_class", "val_per_class"):
        if getattr(args, field):
            base = dataclasses.replace(base, **{field: getattr(args, field)})
    from distill.engine import run as distill_run
    from evaluate.knn import KnnConfig, knn

    weights = find_teacher_weights(base.weights)
    caches: dict[int, tuple[str, str, dict]] = {}  # teacher size -> (data, cache, teacher metrics)

    def teacher_cache(size: int) -> tuple[str, str, dict]:
        """Data + cache of the teacher at ``size`` px (other sizes in OUT/teacher-<size>px)."""
        if size not in caches:
            cfg = base if size == base.teacher_size else dataclasses.replace(
                base, teacher_size=size, out=os.path.join(args.out, f"teacher-{size}px"))
            data, _, _ = prepare_data(cfg)
            cache = build_teacher_cache(cfg, data, weights)
            caches[size] = (data, cache, knn(KnnConfig(features=cache, protocol="compress", ks=(1, 20)))["metrics"])
        return caches[size]

    data, splits, source = prepare_data(base)
    _, _, teacher = teacher_cache(base.teacher_size)
    n_train = len(splits["train"].labels)
    print(f"{source}: {n_train} train / {len(splits['val'].labels)} val; teacher NN {teacher['nn']:.1f} kNN-20 {teacher['knn20']:.1f}")
    lines = ["| group | setting | params | GFLOPs | NN | kNN-20 | kNN-20 / its teacher | final loss | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| teacher | MobileNetV2 @{base.teacher_size}px | 2.22M | | {teacher['nn']:.1f} | {teacher['knn20']:.1f} | 1.000 | | |"]
    seen: dict[str, str] = {}
    seeds = [int(x) for x in args.seeds.split(",")]
    for group, overrides in settings(n_train, groups):
        cfg = apply(base, overrides)
        d = cfg.distill
        data, cache, teacher = teacher_cache(cfg.teacher_size)
        if group == "teacher":
            lines.append(f"| teacher | MobileNetV2 @{cfg.teacher_size}px | 2.22M | | {teacher['nn']:.1f} | {teacher['knn20']:.1f} | 1.000 | | |")
        tag = f"{d.variant}-bank{min(d.bank_size, n_train)}-t{d.t_teacher}-e{d.epochs}"
        if d.bank == "static-faiss":
            tag = f"static-k{d.neighbours}-r{d.random_anchors}{'' if d.tail_correction else '-plain'}-t{d.t_teacher}-e{d.epochs}"
        if cfg.teacher_size != base.teacher_size:
            tag += f"-teacher{cfg.teacher_size}"
        if d.student != base.distill.student:
            tag += "-" + d.student.replace(":", "_")
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "demo defaults"
        params, flops = student_cost(d.student, int(d.input_size or 32))
        cost = f"{params / 1e6:.3f}M | {flops:.4f}"
        if tag in seen:  # the demo default appears in every group: train it once
            lines.append(f"| {group} | {label} | {cost} | {seen[tag]}")
            print(lines[-1], flush=True)
            continue
        start = time.perf_counter()
        runs = []
        for seed in seeds:
            run_tag = tag if seed == 0 else f"{tag}-seed{seed}"
            dcfg = dataclasses.replace(distill_config(cfg, cache, data), out=os.path.join(args.out, "ablation", run_tag), seed=seed)
            distill_run(dcfg)
            feats = model_features(dcfg.out, data, os.path.join(args.out, "ablation", run_tag, "features"), cfg)
            m = knn(KnnConfig(features=feats, protocol="compress", ks=(1, 20)))["metrics"]
            losses = [json.loads(line)["loss"] for line in open(os.path.join(dcfg.out, "metrics.jsonl")) if '"loss"' in line]
            runs.append((m["nn"], m["knn20"], sum(losses[-5:]) / max(1, len(losses[-5:]))))
        seen[tag] = (f"{_mean_range([r[0] for r in runs])} | {_mean_range([r[1] for r in runs])} | "
                     f"{statistics.mean(r[1] for r in runs) / teacher['knn20']:.3f} | {statistics.mean(r[2] for r in runs):.3f} | "
                     f"{time.perf_counter() - start:.0f} |")
        lines.append(f"| {group} | {label} | {cost} | {seen[tag]}")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    path = args.markdown or os.path.join(args.out, "ablation.md")
    with open(path, "w") as f:
        f.write(f"{source}: {n_train} train images, {base.distill.epochs} epochs, student {base.distill.student} @{base.distill.input_size}px, "
                f"distillation seeds {args.seeds}\n\n{table}\n")
    print(table)
    print(f"written to {path}")


def teacher_side(args: argparse.Namespace) -> None:
    """The "teacher side" group (``bench/teacher_side.py``), its table in OUT/ablation-teacher-side.md."""
    from bench.teacher_side import run_teacher_side
    from demo.config import DemoConfig, demo_distill_config

    changes = {"epochs": args.epochs} if args.epochs else {}
    subset = {f: getattr(args, f) for f in ("train_per_class", "val_per_class") if getattr(args, f)}
    base = DemoConfig(out=args.out, full=args.full, **subset, distill=demo_distill_config(device=args.device, progress=False, workers=args.workers, **changes))
    lines = run_teacher_side(base, args.out, [int(x) for x in args.seeds.split(",")])
    path = os.path.join(args.out, "ablation-teacher-side.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
