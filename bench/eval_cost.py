"""Cost of the evaluation during distillation (``--eval-every``) at given ``--eval-train-size``s.

Reruns the distillation of an existing run (its ``config.json``; e.g. the demo's
``OUT/runs/student``) into a scratch directory once per train-side size, with everything else
as recorded, and prints the evaluations' summed ``eval_s`` (from ``metrics.jsonl``) against
the run's wall time. The evaluation consumes no training randomness, so the trained student is
the same in every row. Not a timed test; results go to bench/RESULTS.md.

    python bench/eval_cost.py --run /tmp/demo/runs/student --sizes 5000,3000,2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, not bench/storage.py

from distill.config import DistillConfig  # noqa: E402
from distill.engine import run  # noqa: E402


def recorded_config(run_dir: str) -> DistillConfig:
    """The ``DistillConfig`` a run directory's ``config.json`` records."""
    raw = json.load(open(os.path.join(run_dir, "config.json")))
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    return DistillConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields})


def measure(cfg: DistillConfig, size: int, out: str) -> dict[str, float]:
    """Train ``cfg`` into ``out`` with ``--eval-train-size size``; wall time, evaluation time, kNN values."""
    run_cfg = dataclasses.replace(cfg, out=out, eval_train_size=size, progress=False, fresh=True)
    start = time.perf_counter()
    run(run_cfg)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evaluation = sum(r.get("eval_s", 0.0) for r in records)
    return {"size": size, "wall_s": wall, "eval_s": evaluation, "share": evaluation / wall,
            "knn": [r["knn_top1"] for r in records if "knn_top1" in r]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished run directory whose config.json is rerun")
    p.add_argument("--sizes", default="5000,3000,2000", help="comma-separated --eval-train-size values")
    args = p.parse_args()
    cfg = recorded_config(args.run)
    print("| --eval-train-size | run wall time | evaluation | share | knn_top1 |\n|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(cfg, size, os.path.join(scratch, f"size-{size}"))
            print(f"| {size:,} | {r['wall_s']:.0f} s | {r['eval_s']:.1f} s | {100 * r['share']:.1f} % | "
                  f"{', '.join(f'{v:g}' for v in r['knn'])} |", flush=True)


if __name__ == "__main__":
    main()
