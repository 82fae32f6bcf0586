"""compress-eval latency: every model gets a row per batch size, timed interleaved."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from distill.deploy import export_deployable
from distill.deploy_config import ExportConfig
from distill.export import export_untrained
from evaluate.cli import main
from evaluate.latency import Timed, measure


def test_latency_table_has_every_model_and_batch(tmp_path) -> None:
    pth = str(tmp_path / "u.pth")
    export_untrained("micro_mobilenet", 16, 16, pth)
    models = [pth]
    for name in ("s.onnx", "s.pt"):  # (INT8 needs training images to calibrate: tests/distill/test_deploy.py)
        out = str(tmp_path / name)
        export_deployable(ExportConfig(run=pth, out=out, allow_unfinished=True))
        models.append(out)
    args = ["latency", "--batch", "1,3", "--threads", "1", "--warmup", "1", "--rounds", "3", "--out", str(tmp_path / "lat.json")]
    for m in models:
        args += ["--model", m]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.load(open(tmp_path / "lat.json"))
    assert {(r["model"], r["batch"]) for r in record["rows"]} == {(os.path.basename(m), b) for m in models for b in (1, 3)}
    runtimes = {r["model"]: r["runtime"] for r in record["rows"]}
    assert runtimes["u.pth"] == "torch eager" and runtimes["s.pt"] == "torch.jit" and runtimes["s.onnx"].startswith("onnxruntime")
    assert all(r["median_ms"] > 0 and r["p95_ms"] >= r["median_ms"] and r["images_per_s"] > 0 for r in record["rows"])
    table = open(tmp_path / "lat.md").read()
    assert all(os.path.basename(m) in table for m in models) and "| batch |" in table


def test_rounds_are_interleaved() -> None:
    calls: list[str] = []
    models = [Timed(n, "x", 8, None, lambda b, n=n: calls.append(n)) for n in "AB"]
    rows = measure(models, (1,), warmup=0, rounds=3)
    assert calls == list("ABABAB") and len(rows) == 2


def test_no_model_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["latency", "--batch", "1"])
    assert result.exit_code == 2 and "--model" in result.output


@pytest.mark.parametrize("args,culprit", [(["--batch", "0"], "--batch"), (["--threads", "0"], "--threads"), (["--device", "tpu"], "--device")])
def test_bad_options(args, culprit, tmp_path) -> None:
    result = CliRunner().invoke(main, ["latency", "--model", str(tmp_path), *args])
    assert result.exit_code == 2 and culprit in result.output
