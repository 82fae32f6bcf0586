"""Cluster-alignment benchmark: k-means (K clusters, same iterations) of ``evaluate.cluster``
(FAISS on all points, torch k-means) vs ``faiss.Kmeans`` with its defaults, plus the time of
the assignment and of the Hungarian matching, on synthetic clustered features.

Usage: ``python bench/cluster.py --points 200000 --dim 128 --clusters 1000 --repeats 3``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.knn import clustered, cpu_name  # noqa: E402
from cache_builder.devices import DEVICE_HELP, resolve_device  # noqa: E402
from evaluate.cluster import aligned_accuracy, assign, faiss_kmeans, match_clusters, torch_kmeans  # noqa: E402


def faiss_default(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed)
    km.train(x)
    return km.centroids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args()
    args.device = str(resolve_device(args.device))
    import scipy.optimize  # noqa: F401  (import outside the timed Hungarian)
    print(f"machine: {os.cpu_count()} cores ({cpu_name()}), torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"k-means {args.clusters} clusters x {args.iterations} iterations on {args.points} x {args.dim}, "
          f"{args.classes} classes, median of {args.repeats}\n")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.classes, args.dim), dtype=np.float32) / np.sqrt(args.dim)
    train, tl = clustered(args.points, args.dim, args.classes, rng, centers)
    val, vl = clustered(max(1000, args.points // 20), args.dim, args.classes, rng, centers)
    methods = {
        "faiss.Kmeans defaults": lambda: faiss_default(train, args.clusters, args.iterations, 0),
        "evaluate faiss (all points)": lambda: faiss_kmeans(train, args.clusters, iterations=args.iterations),
        f"evaluate torch ({args.device})": lambda: torch_kmeans(train, args.clusters, iterations=args.iterations, device=args.device),
    }
    print("| method | k-means (s) | ratio | assign train+val (s) | Hungarian (s) | cluster acc val (%) |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, fn in methods.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            centroids = fn()
            times.append(time.perf_counter() - t0)
        km = statistics.median(times)
        base = base or km
        t0 = time.perf_counter()
        tc, vc = assign(train, centroids, device=args.device), assign(val, centroids, device=args.device)
        t1 = time.perf_counter()
        mapping = match_clusters(tc, tl, args.clusters, args.classes)
        t2 = time.perf_counter()
        acc = aligned_accuracy(vc, vl, mapping)
        print(f"| {name} | {km:.2f} | {km / base:.2f} | {t1 - t0:.2f} | {t2 - t1:.3f} | {acc:.2f} |", flush=True)


if __name__ == "__main__":
    main()
