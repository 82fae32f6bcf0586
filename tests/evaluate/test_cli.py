"""The compress-eval commands end to end on tiny stores and a tiny image folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from evaluate.cli import main
from tests.evaluate.stores import write_feature_dir, write_store


@pytest.fixture
def feature_dir(tmp_path) -> str:
    return write_feature_dir(str(tmp_path / "feats"))


def run(args: list[str], cwd: str | None = None):
    runner = CliRunner()
    if cwd:
        old = os.getcwd()
        os.chdir(cwd)
    try:
        return runner.invoke(main, args, catch_exceptions=False)
    finally:
        if cwd:
            os.chdir(old)


@pytest.mark.parametrize("protocol", ["compress", "dino"])
def test_knn_writes_result_with_protocol_and_fingerprints(feature_dir, tmp_path, protocol) -> None:
    out = str(tmp_path / "r.json")
    ks = ["-k", "1", "-k", "20"] if protocol == "compress" else ["-k", "10", "-k", "20"]
    res = run(["knn", "--features", feature_dir, "--protocol", protocol, *ks, "--out", out])
    assert res.exit_code == 0, res.output
    result = json.load(open(out))
    assert result["protocol"] == protocol and result["params"]["ks"] in ([1, 20], [10, 20])
    assert result["split_sizes"] == {"train": 120, "val": 30}
    assert result["features"]["train"]["fingerprint"].startswith("sha256:") and len(result["features"]["train"]["fingerprint"]) == 71
    assert result["params"]["tie_break_rule"] and result["backend"].startswith("faiss")
    assert result["params"].get("tie_break") == ("random" if protocol == "compress" else None)
    assert result["params"]["metric"] == ("l2" if protocol == "compress" else "ip")
    assert ("temperature" in result["params"]) == (protocol == "dino")
    first = next(iter(result["metrics"].values()))
    assert first > 80.0  # separable blobs
    assert "| metric | value (%) |" in res.output


def test_knn_records_the_requested_temperature(feature_dir, tmp_path) -> None:
    out = str(tmp_path / "r.json")
    assert run(["knn", "--features", feature_dir, "--protocol", "dino", "-k", "10", "--temperature", "0.1", "--out", out]).exit_code == 0
    assert json.load(open(out))["params"]["temperature"] == 0.1


def test_knn_defaults_to_local_cache_and_says_so(tmp_path) -> None:
    write_feature_dir(str(tmp_path / "cache"))
    res = run(["knn"], cwd=str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "evaluating ./cache (no --features given)" in res.output
    assert os.path.exists(tmp_path / "eval-results" / "knn-compress.json")


def test_knn_without_cache_is_a_usage_error(tmp_path) -> None:
    res = run(["knn"], cwd=str(tmp_path))
    assert res.exit_code != 0 and "there is no ./cache" in res.output


def test_errors_are_one_line_messages(tmp_path) -> None:
    write_store(str(tmp_path / "f" / "train"), np.ones((5, 4)), np.zeros(5, int))
    write_store(str(tmp_path / "f" / "val"), np.ones((5, 4)), np.zeros(5, int))
    res = run(["knn", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "k = 20 is larger than the train set (5 rows)" in res.output


def test_linear_and_cluster_and_report(feature_dir, tmp_path) -> None:
    lin, clu = str(tmp_path / "lin.json"), str(tmp_path / "clu.json")
    assert run(["linear", "--features", feature_dir, "--epochs", "5", "--out", lin]).exit_code == 0
    res = run(["cluster", "--features", feature_dir, "--clusters", "4", "--out", clu])
    assert res.exit_code == 0, res.output
    assert json.load(open(clu))["params"]["clusters"] == 4
    assert np.load(str(tmp_path / "clu-confusion.npy")).sum() == 30
    chart = str(tmp_path / "chart.png")
    res = run(["report", lin, clu, "--chart", chart])
    assert res.exit_code == 0, res.output
    assert "linear/compress-fast/linear_top1" in res.output and "cluster/compress/cluster_acc" in res.output
    assert open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_full_linear_protocol_needs_model_and_data(feature_dir) -> None:
    res = run(["linear", "--features", feature_dir, "--full"])
    # a usage error: exit status 2 (it was 1 before the one CLI error handler), one line
    assert res.exit_code == 2 and "needs --model and --data" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_stream_equals_in_memory(tmp_path, backend) -> None:
    root = str(tmp_path / "f")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, 200)
    x = np.eye(5, 8, dtype=np.float32)[labels] + 0.8 * rng.standard_normal((200, 8)).astype(np.float32)
    write_store(os.path.join(root, "train"), x[:150], labels[:150], shard_size=16)
    write_store(os.path.join(root, "val"), x[150:], labels[150:])
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert run(["knn", "--features", root, "--backend", backend, "--out", a]).exit_code == 0
    res = run(["knn", "--features", root, "--backend", backend, "--stream", "--out", b])
    assert res.exit_code == 0, res.output
    ra, rb = json.load(open(a)), json.load(open(b))
    assert ra["metrics"] == rb["metrics"] and rb["params"]["stream"] is True
    assert rb["features"]["train"]["n"] == 150 and rb["features"]["train"]["d"] == 8
    assert 40 < ra["metrics"]["knn20"] < 100  # not a trivial task


def invoke(args: list[str]):
    """The command line as a user sees it: errors are caught by the CLI's handler."""
    return CliRunner().invoke(main, args)


def one_line_error(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for needle in needles:
        assert needle in lines[0], res.output


@pytest.mark.parametrize("args, needles", [
    (["--temperature", "0"], ["--temperature must be > 0"]),
    (["-k", "0"], ["-k: every k must be >= 1"]),
    (["--database-block", "0"], ["--database-block must be >= 1"]),
    (["--model", "torchvision:resnet18"], ["give either --features or --model/--data, not both"]),
    (["--workers", "-1"], ["--workers must be >= 0"]),
])
def test_bad_knn_options_are_one_line_usage_errors(feature_dir, args, needles) -> None:
    one_line_error(invoke(["knn", "--features", feature_dir, *args]), 2, *needles)


def test_bad_linear_and_cluster_options_are_one_line_usage_errors(feature_dir, tmp_path) -> None:
    one_line_error(invoke(["linear", "--features", feature_dir, "--lr", "-0.1"]), 2, "--lr must be > 0")
    one_line_error(invoke(["linear", "--features", feature_dir, "--fraction", "0.1", "--shots", "2"]), 2, "--fraction and --shots")
    one_line_error(invoke(["cluster", "--features", feature_dir, "--clusters", "0"]), 2, "--clusters must be >= 1")
    one_line_error(invoke(["knn", "--model", "torchvision:resnet18"]), 2, "--model and --data go together")
    one_line_error(invoke(["cluster", "--features", feature_dir, "--grid", str(tmp_path / "g.png")]), 2, "--grid needs --data-root")


def test_choices_name_the_option(feature_dir) -> None:
    res = invoke(["knn", "--features", feature_dir, "--backend", "fais"])
    assert res.exit_code == 2 and "--backend" in res.output and "fais" in res.output


def test_missing_features_dir_is_a_usage_error(tmp_path) -> None:
    one_line_error(invoke(["knn", "--features", str(tmp_path / "nope")]), 2, "--features", "no such directory")


def test_missing_split_and_non_store_are_one_line_data_errors(tmp_path) -> None:
    root = str(tmp_path / "f")
    write_store(os.path.join(root, "train"), np.ones((5, 4)), np.zeros(5, int))
    one_line_error(invoke(["knn", "--features", root]), 1, "no val split")
    os.makedirs(os.path.join(root, "val"))
    one_line_error(invoke(["knn", "--features", root]), 1, os.path.join(root, "val"))


def test_corrupt_or_deleted_shard_is_a_one_line_data_error(feature_dir) -> None:
    import shutil

    shutil.rmtree(os.path.join(feature_dir, "train", "shard-00001.zarr"))
    one_line_error(invoke(["knn", "--features", feature_dir]), 1, os.path.join(feature_dir, "train"))


def test_report_of_a_non_result_is_a_one_line_data_error(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    one_line_error(invoke(["report", str(bad)]), 1, str(bad), "not an evaluation result")


def test_debug_shows_the_traceback(tmp_path) -> None:
    res = invoke(["--debug", "knn", "--features", str(tmp_path / "nope")])
    assert res.exception is not None and not isinstance(res.exception, SystemExit)


def test_config_file_sets_options_and_the_command_line_wins(feature_dir, tmp_path) -> None:
    cfg = tmp_path / "knn.toml"
    cfg.write_text('protocol = "dino"\ntemperature = 0.2\nks = [10]\n')
    out = str(tmp_path / "r.json")
    res = invoke(["knn", "--config", str(cfg), "--features", feature_dir, "--temperature", "0.1", "--out", out])
    assert res.exit_code == 0, res.output
    params = json.load(open(out))["params"]
    assert params["protocol"] == "dino" and params["temperature"] == 0.1 and params["ks"] == [10]


def test_k_takes_a_comma_list_too(feature_dir, tmp_path) -> None:
    out = str(tmp_path / "r.json")
    assert invoke(["knn", "--features", feature_dir, "-k", "1,5", "-k", "20", "--out", out]).exit_code == 0
    assert json.load(open(out))["params"]["ks"] == [1, 5, 20]


@pytest.mark.parametrize("command", ["knn", "linear", "cluster", "features", "report"])
def test_every_option_has_help_and_long_commands_have_no_progress(command) -> None:
    import click

    cmd = main.commands[command]
    options = [p for p in cmd.params if isinstance(p, click.Option)]
    assert all(p.help for p in options), [p.name for p in options if not p.help]
    if command != "report":
        assert "--no-progress" in CliRunner().invoke(main, [command, "--help"]).output


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from evaluate.cli import main; main(['knn', '--help'], standalone_mode=False); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
