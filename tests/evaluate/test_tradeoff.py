"""tradeoff.png: accuracy vs parameters and vs CPU latency, from result records."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from PIL import Image

from evaluate.cli import main
from evaluate.tradeoff import tradeoff_chart, tradeoff_points


def result(command: str, protocol: str, name: str, metrics: dict, **extra) -> dict:
    return {"command": command, "protocol": protocol, "metrics": metrics, "params": {}, "model": {"name": name, **extra},
            "split_sizes": {"train": 1, "val": 1}, "backend": "x", "wall_time_s": 0.0}


def test_points_collect_accuracy_parameters_and_latency() -> None:
    results = [
        result("knn", "compress", "teacher", {"nn": 50.0, "knn20": 60.0}, parameters=2_000_000),
        result("linear", "compress-fast", "teacher", {"linear_top1": 70.0}),
        result("linear", "compress", "teacher", {"linear_top1": 72.0}),
        result("latency", "cpu", "teacher", {"latency_ms_mean": 9.0, "latency_ms_p50": 8.0}),
        result("knn", "compress", "student", {"nn": 45.0, "knn20": 58.0}, parameters=50_000),
        result("knn", "dino", "student", {"knn20_top1": 59.0}),
    ]
    points = tradeoff_points(results)
    assert points == [
        {"name": "teacher", "knn20": 60.0, "parameters": 2e6, "linear": 72.0, "latency_ms": 8.0},
        {"name": "student", "knn20": 58.0, "parameters": 5e4},
    ]


def test_chart_has_a_latency_panel_only_with_latency(tmp_path) -> None:
    pts = [{"name": "a", "knn20": 60.0, "parameters": 1e6}, {"name": "b", "knn20": 50.0, "linear": 55.0, "parameters": 1e4}]
    one = tradeoff_chart(pts, str(tmp_path / "one.png"))
    pts[0]["latency_ms"] = 3.0
    two = tradeoff_chart(pts, str(tmp_path / "two.png"))
    assert one and two
    assert Image.open(two).width > 1.5 * Image.open(one).width  # a second panel
    assert tradeoff_chart([{"name": "c", "knn20": 1.0}], str(tmp_path / "none.png")) is None
    assert not os.path.exists(tmp_path / "none.png")


def test_report_writes_the_tradeoff_plot(tmp_path) -> None:
    paths = []
    for i, r in enumerate([result("knn", "compress", "t", {"knn20": 60.0}, parameters=10),
                           result("latency", "cpu", "t", {"latency_ms": 2.0})]):
        paths.append(str(tmp_path / f"{i}.json"))
        json.dump(r, open(paths[-1], "w"))
    out = str(tmp_path / "trade.png")
    res = CliRunner().invoke(main, ["report", *paths, "--chart", str(tmp_path / "c.png"), "--tradeoff", out])
    assert res.exit_code == 0, res.output
    assert "tradeoff plot written" in res.output and os.path.getsize(out) > 0
