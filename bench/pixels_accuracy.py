"""Does training from the pre-resized JPEG copy (``compress-cache build --pixels``) cost accuracy?

    python bench/pixels_accuracy.py --out runs/pixels-accuracy --train-per-class 300 --val-per-class 100 --epochs 10

The demo's Fashion-MNIST images are written as ``--image-size`` px JPEGs (quality 95, upsampled
bicubic, so that the copy really is a resize and a re-encode); the demo's MobileNetV2 teacher
caches them at the demo's 64 px with ``--pixels`` (default 48, JPEG q90); then the demo's student
(``micro_mobilenet`` at 32 px, the demo's recipe) is distilled twice per seed, once from the
original files (``--data``) and once from the copy (the default), with everything else equal.
Both students are evaluated on the original files' val split (CompRess kNN, NN and kNN-20).
Every step reuses what is already in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_jpegs(out: str, per_class: dict[str, int], size: int, seed: int) -> str:
    """``out/{train,val}/<class>/NNNNN.jpg``: the demo's balanced subsets upsampled to ``size`` px."""
    from PIL import Image

    from demo.fashion_mnist import CLASSES, balanced_subset, load_subset

    if os.path.isfile(os.path.join(out, "done")):
        return out
    train, val = load_subset()
    for name, split in (("train", balanced_subset(train, per_class["train"], seed)), ("val", balanced_subset(val, per_class["val"], seed + 1))):
        for c in CLASSES:
            os.makedirs(os.path.join(out, name, c), exist_ok=True)
        for i, (image, label) in enumerate(zip(split.images, split.labels)):
            img = Image.fromarray(image, mode="L").convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            img.save(os.path.join(out, name, CLASSES[int(label)], f"{i:05d}.jpg"), quality=95)
    open(os.path.join(out, "done"), "w").close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pixels-accuracy")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=112, help="Side of the JPEGs the demo images are written as.")
    p.add_argument("--pixels", type=int, default=48, help="Short side of the pre-resized copy.")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from cache_builder.build import BuildConfig, build_cache
    from demo.config import demo_distill_config
    from demo.teacher_weights import find_teacher_weights
    from distill.engine import run
    from evaluate.config import FeaturesConfig, KnnConfig
    from evaluate.features import extract_features
    from evaluate.knn import knn

    data = write_jpegs(os.path.join(args.out, "data"), {"train": args.train_per_class, "val": args.val_per_class},
                       args.image_size, seed=0)
    cache = os.path.join(args.out, "cache")
    t = time.perf_counter()
    build_cache(BuildConfig(teacher="supervised_mobilenet_v2", weights=find_teacher_weights(), data=data, out=cache,
                            input_size=64, resize_size=64, batch_size=128, workers=args.workers, progress=False, knn=False,
                            pixels=args.pixels))
    build_s = time.perf_counter() - t
    results: dict[str, list[dict[str, float]]] = {"files": [], "copy": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        for source in ("files", "copy"):
            out = os.path.join(args.out, f"{source}-seed{seed}")
            cfg = demo_distill_config(cache=cache, out=out, epochs=args.epochs, seed=seed, workers=args.workers, progress=False,
                                      eval_every=0, data=os.path.join(data, "train") if source == "files" else None)
            t = time.perf_counter()
            run(cfg)
            seconds = time.perf_counter() - t
            features = os.path.join(out, "features")
            extract_features(FeaturesConfig(model=out, data=data, out=features, workers=args.workers, progress=False,
                                            overwrite=True))
            metrics = knn(KnnConfig(features=features, protocol="compress", ks=(1, 20)))["metrics"]
            results[source].append({"nn": metrics["nn"], "knn20": metrics["knn20"], "seconds": seconds})
            print(f"seed {seed} {source}: NN {metrics['nn']:.1f} kNN-20 {metrics['knn20']:.1f} ({seconds:.0f} s)", flush=True)

    print(f"\n{args.train_per_class * 10} train / {args.val_per_class * 10} val demo images as {args.image_size} px JPEGs; "
          f"teacher cache + --pixels {args.pixels} copy built in {build_s:.0f} s; {args.epochs} epochs; seeds {args.seeds}")
    print("\n| student trained from | NN (mean, range) | kNN-20 (mean, range) | distillation s (mean) |\n|---|---:|---:|---:|")
    for source, rows in results.items():
        def cell(key: str, rows: list[dict[str, float]] = rows) -> str:
            values = [r[key] for r in rows]
            return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"

        name = "the original files" if source == "files" else f"the --pixels {args.pixels} copy (JPEG q90)"
        print(f"| {name} | {cell('nn')} | {cell('knn20')} | {statistics.mean(r['seconds'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
