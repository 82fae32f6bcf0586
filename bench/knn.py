"""kNN benchmark: ``evaluate.knn`` vs faiss flat search and the CompRess / DINO reference
implementations, in the same run, on synthetic clustered features.

Baselines:
* ``faiss-flat``: ``IndexFlatL2`` / ``IndexFlatIP`` search only (no vote) — a lower bound;
* ``compress-ref``: FAISS L2 search + a Python ``Counter`` majority vote per query (CompRess);
* ``dino-ref``: chunked matmul + ``topk`` + exp(sim/T) weighted one-hot vote (DINO).

Usage: ``python bench/knn.py --queries 2000 --database 100000 --dims 128 2048 --repeats 3``
(ImageNet is 50k x 1.28M). Prints a markdown table; medians over repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cache_builder.devices import DEVICE_HELP, resolve_device  # noqa: E402
from distill.topk import faiss_gpu_count  # noqa: E402
from evaluate.knn import knn_classify  # noqa: E402


def clustered(n: int, d: int, classes: int, rng: np.random.Generator, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n)
    x = centers[labels] + rng.standard_normal((n, d), dtype=np.float32) * 3.0 / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def compress_reference(train, tl, val, vl, k=20) -> dict[str, float]:
    import faiss

    index = faiss.IndexFlatL2(train.shape[1])
    index.add(train)
    _, idx = index.search(val, k)
    nl = tl[idx]
    pred = np.array([Counter(row.tolist()).most_common(1)[0][0] for row in nl])
    return {"nn": 100 * float((nl[:, 0] == vl).mean()), f"knn{k}": 100 * float((pred == vl).mean())}


def dino_reference(train, tl, val, vl, num_classes, k=20, t=0.07, chunks=100) -> dict[str, float]:
    train_t, tl_t = torch.from_numpy(train).T.contiguous(), torch.from_numpy(tl)
    top1 = top5 = 0
    step = max(1, len(val) // chunks)
    for s in range(0, len(val), step):
        q = torch.from_numpy(val[s:s + step])
        sims, idx = (q @ train_t).topk(k, dim=1)
        cand = tl_t.expand(len(q), -1).gather(1, idx)
        one_hot = torch.zeros(len(q) * k, num_classes).scatter_(1, cand.view(-1, 1), 1)
        probs = (one_hot.view(len(q), k, num_classes) * (sims / t).exp().view(len(q), k, 1)).sum(1)
        pred = probs.argsort(1, descending=True)
        y = torch.from_numpy(vl[s:s + step])
        top1 += int((pred[:, 0] == y).sum())
        top5 += int((pred[:, :5] == y[:, None]).any(1).sum())
    return {f"knn{k}_top1": 100 * top1 / len(val), f"knn{k}_top5": 100 * top5 / len(val)}


def faiss_flat(train, val, k, metric) -> None:
    import faiss

    index = faiss.IndexFlatIP(train.shape[1]) if metric == "ip" else faiss.IndexFlatL2(train.shape[1])
    index.add(train)
    index.search(val, k)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--database", type=int, default=100000)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args()
    args.device = str(resolve_device(args.device))
    print(f"machine: {os.cpu_count()} cores ({cpu_name()}), torch threads {torch.get_num_threads()}, "
          f"device {args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}")
    print(f"{args.queries} queries x {args.database} database, {args.classes} classes, median of {args.repeats}\n")
    print("| D | protocol | method | time (s) | ratio to fastest baseline | accuracy (%) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for d in args.dims:
        centers = rng.standard_normal((args.classes, d), dtype=np.float32) / np.sqrt(d)
        train, tl = clustered(args.database, d, args.classes, rng, centers)
        val, vl = clustered(args.queries, d, args.classes, rng, centers)
        for protocol, metric, ks in (("compress", "l2", (1, 20)), ("dino", "ip", (20,))):
            rows = [("faiss-flat (search only)", *timed(lambda: faiss_flat(train, val, 20, metric), args.repeats))]
            if protocol == "compress":
                rows.append(("compress-ref (faiss L2 + Counter)", *timed(lambda: compress_reference(train, tl, val, vl), args.repeats)))
            else:
                rows.append(("dino-ref (chunked matmul + topk)",
                             *timed(lambda: dino_reference(train, tl, val, vl, args.classes), args.repeats)))
            fastest = min(r[1] for r in rows)
            for backend in ("faiss", "torch"):
                dev = "cpu" if backend == "faiss" and not faiss_gpu_count() else args.device
                rows.append((f"evaluate.knn backend={backend}", *timed(
                    lambda: knn_classify(train, tl, val, vl, protocol=protocol, ks=ks, backend=backend, device=dev), args.repeats)))
            for name, seconds, metrics in rows:
                acc = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) if metrics else "-"
                print(f"| {d} | {protocol} | {name} | {seconds:.2f} | {seconds / fastest:.2f} | {acc} |", flush=True)


if __name__ == "__main__":
    main()
