"""Storage benchmark: write rate, ``load_all`` vs raw ``np.fromfile`` of the same bytes, the cost
of ``load_all``'s CRC32C verification (``verify=True`` vs ``verify=False``, interleaved in the
same run, medians), random row gathers, and bytes on disk, for each backend. Prints a markdown table.

    python bench/storage.py [--repeats 5] [--dir /tmp/compress-bench]

Both reads are from the page cache (files were just written); the ratios are what matter.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage import create_store, open_store  # noqa: E402

CASES = [(200_000, 128), (50_000, 2048)]


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, the functions timed in turn within every repeat."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(root: str, n: int, d: int, backend: str, repeats: int) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float16)
    raw = os.path.join(root, "raw.bin")
    x.tofile(raw)
    path = os.path.join(root, f"{backend}-{n}x{d}")

    def write() -> None:
        shutil.rmtree(path, ignore_errors=True)
        w = create_store(path, n, d, "float16", backend=backend, normalized=False)
        for s in w.pending_shards():
            a, b = w.shard_rows(s)
            w.write_shard(s, x[a:b])
        w.finalize()

    t_write = median_time(write, max(1, repeats // 2))
    store = open_store(path)
    t_load, t_plain = interleaved_medians([store.load_all, lambda: store.load_all(verify=False)], repeats)
    out = store.load_all()
    assert np.array_equal(out, x)
    t_raw = median_time(lambda: np.fromfile(raw, dtype=np.float16), repeats)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, n, 256) for _ in range(200)]
    t0 = time.perf_counter()
    for b in batches:
        out[b]
    t_gather = (time.perf_counter() - t0) / len(batches)
    return {
        "write_gbs": x.nbytes / t_write / 1e9,
        "load_gbs": x.nbytes / t_load / 1e9,
        "plain_gbs": x.nbytes / t_plain / 1e9,
        "verify_cost": t_load / t_plain - 1.0,
        "raw_gbs": x.nbytes / t_raw / 1e9,
        "ratio": t_raw / t_load,
        "gather_ms": t_gather * 1e3,
        "bytes_ratio": dir_bytes(path) / x.nbytes,
        "shards": len(store.manifest.shards),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="compress-bench-")
    os.makedirs(root, exist_ok=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} cores, {cpu}, python {platform.python_version()}, numpy {np.__version__}")
    print("| N x D (fp16) | backend | shards | write GB/s | load_all GB/s | without CRC check GB/s | CRC check cost | "
          "np.fromfile GB/s | load_all / fromfile | 256-row gather (ms) | store bytes / raw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for n, d in CASES:
            for backend in ("zarr", "hdf5"):
                r = bench_case(root, n, d, backend, args.repeats)
                print(f"| {n:,} x {d} | {backend} | {r['shards']:.0f} | {r['write_gbs']:.2f} | {r['load_gbs']:.2f} | "
                      f"{r['plain_gbs']:.2f} | {100 * r['verify_cost']:+.1f} % | {r['raw_gbs']:.2f} | {r['ratio']:.2f} | "
                      f"{r['gather_ms']:.3f} | {r['bytes_ratio']:.4f} |", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
