"""The loader benchmarks run (tiny, on the CPU): what a GPU session runs must not fail there first."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_end_to_end_loader_benchmark_runs_and_reports_every_path(python_env) -> None:
    cmd = [sys.executable, "bench/loader_e2e.py", "--device", "cpu", "--images", "16", "--size", "32", "--batch-size", "8",
           "--steps", "1", "--warmup", "1", "--rounds", "1", "--workers", "1", "--pixels", "64"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(python_env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| bare step (batch already on the device)", "| end to end, files, --decode cpu",
                                                      "| end to end, --pixels 64 copy, --decode cpu"]
    assert rows[1].endswith("| 1.00x |")
