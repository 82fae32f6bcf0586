"""``compress-demo``'s options: the demo config nests the distillation config; one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

import demo.pipeline
from demo.cli import main
from demo.config import DISTILL_OVERRIDES, DemoConfig


def test_the_demo_config_nests_the_distillation_config_with_the_demo_recipe() -> None:
    from distill.config import DistillConfig

    cfg = DemoConfig()
    assert isinstance(cfg.distill, DistillConfig)
    for name, value in DISTILL_OVERRIDES.items():
        assert getattr(cfg.distill, name) == value, name
    untouched = {f.name for f in dataclasses.fields(DistillConfig)} - set(DISTILL_OVERRIDES)
    assert all(getattr(cfg.distill, n) == getattr(DistillConfig(), n) for n in untouched)
    assert not {f.name for f in dataclasses.fields(DemoConfig)} & (set(DISTILL_OVERRIDES) | {"device", "seed"})


def test_options_set_the_nested_config(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"summary": {"knn_ratio": 1.0, "knn_gain": 0.0, "train": 1, "val": 1, "wall_time_s": 0}, "table": "", "files": {}}

    monkeypatch.setattr(demo.pipeline, "run_demo", fake_run)
    res = CliRunner().invoke(main, ["--out", str(tmp_path), "--epochs", "3", "--temperature", "0.1", "--device", "cpu",
                                    "--crop-scale", "0.3,1", "--no-progress", "--train-per-class", "5"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.out == str(tmp_path) and cfg.train_per_class == 5
    d = cfg.distill
    assert (d.epochs, d.t_teacher, d.t_student, d.device, d.crop_scale, d.progress) == (3, 0.1, 0.1, "cpu", (0.3, 1.0), False)
    assert d.lr == DISTILL_OVERRIDES["lr"] and d.student == "micro_mobilenet"


@pytest.mark.parametrize("args, culprit", [(["--train-per-class", "0"], "--train-per-class must be >= 1"),
                                           (["--teacher-size", "0"], "--teacher-size must be >= 1")])
def test_bad_options_are_one_line_usage_errors(args, culprit, monkeypatch) -> None:
    monkeypatch.setattr(demo.pipeline, "run_demo", lambda cfg: pytest.fail("ran despite a bad option"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.output.strip() == f"Error: {culprit}, got 0"


def test_missing_weights_are_one_line(tmp_path) -> None:
    res = CliRunner().invoke(main, ["--out", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pth")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "none.pth" in res.output


def test_every_option_has_help() -> None:
    import click

    assert all(p.help for p in main.params if isinstance(p, click.Option))
    assert "--no-progress" in CliRunner().invoke(main, ["--help"]).output
