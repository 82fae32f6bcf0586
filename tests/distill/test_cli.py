"""``compress-distill``: every option checked before any work, one-line errors, defaults that follow the run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.config import DistillConfig
from distill.schedule import learning_rate
from tests.distill.synthetic import make_cache, make_images


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("distill-cli")
    return make_cache(str(root / "cache"), make_images(str(root / "data"), per_class=6))


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output, result.output
    return [line for line in result.output.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("option,value,names", [
    ("--t-teacher", "0", "--t-teacher must be positive"),
    ("--lr", "-0.1", "--lr must be positive"),
    ("--crop-scale", "1,0.5", "--crop-scale must be lo,hi with 0 < lo <= hi <= 1"),
    ("--lr-steps", "abc", "'--lr-steps'"),
    ("--lr-steps", "120,90", "--lr-steps must be increasing"),
    ("--sgd-momentum", "1.5", "--sgd-momentum must be in [0, 1)"),
    ("--student", "resnet81", "unknown student 'resnet81' (did you mean 'resnet18'"),
    ("--bank-dtype", "float16", "'--bank-dtype'"),
])
def test_a_bad_option_is_one_line_with_exit_2_and_leaves_nothing_behind(cache, tmp_path, option, value, names) -> None:
    out = tmp_path / "run"
    result = invoke("run", "--cache", cache, "--out", str(out), "--workers", "0", "--no-progress", option, value)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and names in lines[0], result.output
    assert not out.exists()  # no config.json, no metrics.jsonl


def test_out_under_a_regular_file_is_refused_before_any_work(cache, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("run", "--cache", cache, "--out", str(blocker / "run"), "--workers", "0")
    assert result.exit_code == 2
    assert error_lines(result) == [f"Error: --out {blocker / 'run'} is under {blocker}, which is a regular file, not a directory"]


def test_a_missing_cache_is_one_line_not_a_traceback(tmp_path) -> None:
    result = invoke("run", "--cache", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and str(tmp_path / "missing") in lines[0]
    assert not (tmp_path / "run").exists()


def test_export_of_an_unfinished_run_is_refused_in_one_line(cache, tmp_path) -> None:
    out = tmp_path / "run"
    args = ["run", "--cache", cache, "--out", str(out), "--student", "tiny_cnn", "--dim", "8", "--input-size", "16",
            "--bank-size", "8", "--batch-size", "8", "--epochs", "2", "--workers", "0", "--probe-size", "8", "--max-steps", "2",
            "--no-progress"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    config = json.load(open(out / "config.json"))
    assert config["lr_steps"] == [1, 2] and "x0.2 at epochs 1,2 of 2" in config["lr_schedule"]  # the paper's 90/120 of 130, scaled
    result = invoke("export", str(out), "--out", str(tmp_path / "s.pth"))
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "unfinished (epoch 0 of 2, step 2" in lines[0] and "--allow-unfinished" in lines[0]
    result = invoke("export", str(out), "--out", str(tmp_path / "s.pth"), "--allow-unfinished")
    assert result.exit_code == 0 and "UNFINISHED at epoch 0, step 2" in result.output
    assert json.load(open(tmp_path / "s.json"))["finished"] is False


def test_options_come_from_the_config_and_a_config_file_sets_them(cache, tmp_path) -> None:
    help_text = invoke("run", "--help").output
    for option in ("--sgd-momentum", "--lr-gamma", "--probe-size", "--trust-data", "--no-progress", "--config"):
        assert option in help_text
    assert "paper's recipe" in help_text and "resnet18, resnet34" not in help_text  # no stale student list
    config = tmp_path / "run.toml"
    config.write_text('t-teacher = 0\n')
    result = invoke("run", "--config", str(config), "--cache", cache, "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "--t-teacher must be positive" in error_lines(result)[0]


def test_list_students_names_each_with_its_size() -> None:
    result = invoke("list-students")
    assert result.exit_code == 0, result.output
    assert any(line.split()[0] == "micro_mobilenet" and "0.05M" in line for line in result.output.splitlines())
    rows = json.loads(invoke("list-students", "--json").output)
    assert {r["name"] for r in rows} >= {"resnet18", "tiny_cnn", "micro_mobilenet"}


def test_lr_milestones_follow_the_number_of_epochs() -> None:
    """--lr-steps defaulted to epochs 90,120 whatever --epochs was: a 20-epoch run never decayed."""
    assert DistillConfig().milestones() == (90, 120)
    short = DistillConfig(epochs=20)
    assert short.milestones() == (14, 18)
    assert learning_rate(short, 13, 0, 10) == pytest.approx(0.01) and learning_rate(short, 14, 0, 10) == pytest.approx(0.002)
    assert learning_rate(short, 19, 0, 10) == pytest.approx(0.0004)
    assert DistillConfig(epochs=20, lr_steps=()).milestones() == ()
    assert DistillConfig(epochs=20, lr_steps=(5,)).milestones() == (5,)
    # a 1-epoch run scaled both milestones to epoch 1 and then refused its own resolved (1, 1)
    one = DistillConfig(epochs=1)
    assert one.milestones() == (1,)
    dataclasses.replace(one, lr_steps=one.milestones()).validate()


def test_registered_students_counts_match_the_networks() -> None:
    from distill.students import STUDENTS, count_backbone

    for spec in STUDENTS.values():
        parameters, gflops = count_backbone(spec)
        assert spec.parameters == parameters and spec.gflops == pytest.approx(gflops, rel=2e-3), spec.name


def test_the_benchmark_builds_the_engines_trainer() -> None:
    import torch

    from bench.distill_step import bare_step, full_step, make_trainer

    tr = make_trainer("tiny_cnn", 16, 8, bank=32, cache_rows=64, variant="2q-momentum", device=torch.device("cpu"), batch_size=8)
    images, rows = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8)
    assert torch.isfinite(full_step(tr, images, rows, 0.01)) and torch.isfinite(bare_step(tr, images, rows, 0.01))
