"""`compress-cache info` / `verify` on a cache directory with split stores, and one-line CLI errors."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cache_builder.cli import main
from storage import create_store
from tests.images import write_image_folder
from tests.storage.conftest import unit_rows


def _cache(tmp_path, backend="hdf5") -> str:
    for split, n in (("train", 30), ("val", 10)):
        writer = create_store(str(tmp_path / "cache" / split), n, 8, backend=backend, shard_size=10,
                              provenance={"teacher": "simclr_r50x4"})
        for s in writer.pending_shards():
            writer.write_shard(s, unit_rows(10, 8, seed=s))
        writer.finalize()
    return str(tmp_path / "cache")


def test_info_lists_every_split(tmp_path) -> None:
    result = CliRunner().invoke(main, ["info", _cache(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cache/train" in result.output and "cache/val" in result.output
    assert "30 x 8" in result.output and "complete: 3 shards" in result.output
    assert "simclr_r50x4" in result.output


def test_verify_passes_then_names_the_bad_shard(tmp_path) -> None:
    cache = _cache(tmp_path)
    ok = CliRunner().invoke(main, ["verify", cache, "--no-progress"])
    assert ok.exit_code == 0 and ok.output.count("OK") == 2
    with h5py.File(f"{cache}/val/shard-00000.h5", "r+") as f:
        f["embeddings"][0, 0] = np.float16(0.25)
    bad = CliRunner().invoke(main, ["verify", cache, "--no-progress"])
    assert bad.exit_code == 1
    assert "val: FAILED" in bad.output and "shard 0 (rows 0-9): checksum mismatch" in bad.output


def test_info_on_a_missing_cache_is_a_clean_error(tmp_path) -> None:
    result = CliRunner().invoke(main, ["info", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no such cache" in result.output


# ---- one-line errors (issue 12: every CLI mistake gives one clear line) ----------------------


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_future_manifest_version_is_one_line(tmp_path) -> None:
    cache = _cache(tmp_path)
    manifest = os.path.join(cache, "train", "manifest.json")
    with open(manifest) as f:
        obj = json.load(f)
    obj["format_version"] = 999
    with open(manifest, "w") as f:
        json.dump(obj, f)
    line = _one_line_error(CliRunner().invoke(main, ["info", cache]), 1)
    assert "manifest.json" in line and "999" in line


def test_missing_shard_is_one_line(tmp_path) -> None:
    cache = _cache(tmp_path)
    os.remove(os.path.join(cache, "val", "shard-00000.h5"))
    line = _one_line_error(CliRunner().invoke(main, ["info", cache]), 1)
    assert "shard-00000" in line or "shard 0" in line


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    import torch
    import torchvision

    base = tmp_path_factory.mktemp("cli")
    write_image_folder(str(base / "data" / "train"), classes=2, per_class=2, seed=1, size=40, style="noise")
    weights = str(base / "r18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    junk = base / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    (base / "file").write_text("a regular file")
    return {"data": str(base / "data"), "weights": weights, "junk": str(junk), "file": str(base / "file"), "base": str(base)}


def _build(tiny_data, *args: str) -> list[str]:
    return ["build", "--teacher", "custom", "--arch", "resnet18", "--weights", tiny_data["weights"], "--data", tiny_data["data"],
            "--input-size", "32", "--workers", "0", "--no-progress", "--no-knn", *args]


@pytest.mark.parametrize("args, culprit", [
    (["--batch-size", "0"], "--batch-size"),
    (["--views", "2"], "--views"),
    (["--shard-size", "-1"], "--shard-size"),
    (["--resize-size", "16"], "--resize-size"),
    (["--device", "tpu9"], "--device"),
    (["--split", "test"], "--split test"),
])
def test_build_bad_option_values_are_one_line_exit_2(tiny_data, tmp_path, args, culprit) -> None:
    line = _one_line_error(CliRunner().invoke(main, _build(tiny_data, "--out", str(tmp_path / "c"), *args)), 2)
    assert culprit in line
    assert not os.path.exists(tmp_path / "c" / "build_config.json")  # refused before any work


def test_build_out_under_a_regular_file_is_one_line(tiny_data) -> None:
    line = _one_line_error(CliRunner().invoke(main, _build(tiny_data, "--out", os.path.join(tiny_data["file"], "cache"))), 2)
    assert "--out" in line and tiny_data["file"] in line and "regular file" in line


def test_build_missing_data_is_one_line(tiny_data, tmp_path) -> None:
    args = _build(tiny_data, "--out", str(tmp_path / "c"))
    args[args.index("--data") + 1] = str(tmp_path / "nodata")
    line = _one_line_error(CliRunner().invoke(main, args), 2)
    assert "--data" in line and "nodata" in line


def test_build_bad_weights_and_unknown_teacher_are_one_line(tiny_data, tmp_path) -> None:
    args = _build(tiny_data, "--out", str(tmp_path / "c"))
    args[args.index("--weights") + 1] = tiny_data["junk"]
    line = _one_line_error(CliRunner().invoke(main, args), 1)
    assert tiny_data["junk"] in line and "weights_only=True" in line
    res = CliRunner().invoke(main, ["build", "--teacher", "moco_v2_r5O", "--weights", tiny_data["weights"], "--out", str(tmp_path / "c")])
    assert "did you mean 'moco_v2_r50'" in _one_line_error(res, 1)
    res = CliRunner().invoke(main, ["build", "--teacher", "moco_v2_r50", "--arch", "resnet18", "--out", str(tmp_path / "c")])
    assert "--arch" in _one_line_error(res, 2)


def test_build_reads_a_config_file_and_the_command_line_wins(tiny_data, tmp_path) -> None:
    config = tmp_path / "build.toml"
    config.write_text(f'teacher = "custom"\narch = "resnet18"\nweights = "{tiny_data["weights"]}"\n'
                      f'data = "{tiny_data["data"]}"\ninput-size = 32\nbatch_size = 0\nworkers = 0\nknn = false\n')
    res = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "c")])
    assert "--batch-size" in _one_line_error(res, 2)  # the file's value was used
    res = CliRunner().invoke(main, ["build", "--config", str(config), "--batch-size", "4", "--shard-size", "2", "--no-progress",
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "c" / "build_config.json") as f:
        saved = json.load(f)["config"]
    assert saved["batch_size"] == 4 and saved["input_size"] == 32 and saved["knn"] is False


def test_every_build_option_has_help() -> None:
    import click

    command = main.commands["build"]
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing
    assert "--progress / --no-progress" in CliRunner().invoke(main, ["build", "--help"]).output
