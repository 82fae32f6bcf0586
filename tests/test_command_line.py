"""The shared command-line layer: one-line errors, exit codes, --debug, options from configs."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from storage.cli_errors import compress_group, one_line
from storage.config_options import config_file_option, config_from_params, config_options, setting
from storage.errors import CompressError, UsageError, unknown_name


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    epochs: int = setting(130, "Epochs.")
    lr: float = setting(0.01, "Learning rate.")
    steps: tuple[int, ...] | None = setting(None, "Milestones.")
    scale: tuple[float, float] = setting((0.08, 1.0), "Crop scale.")
    mode: str = setting("step", "Schedule.", choices=("step", "cosine"))
    amp: bool = setting(True, "Autocast.")
    compile: bool = setting(False, "torch.compile.", flag="--compile")
    hidden: int = 3

    def validate(self) -> None:
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")


@compress_group()
def toy() -> None:
    """Toy CLI."""


@toy.command()
@config_file_option
@config_options(ToyConfig)
def run(**params: object) -> None:
    cfg = config_from_params(ToyConfig, params)
    click.echo(repr(cfg))


@toy.command()
@click.option("--kind", default="data")
def fail(kind: str) -> None:
    if kind == "usage":
        raise UsageError("--thing: bad value 'x'")
    if kind == "os":
        open("/nonexistent/dir/file")
    raise CompressError("cache/train/shard-00001.zarr: missing\nsecond line")


def test_options_come_from_the_dataclass_with_its_defaults() -> None:
    result = CliRunner().invoke(toy, ["run"])
    assert result.exit_code == 0, result.output
    assert repr(ToyConfig()) in result.output
    result = CliRunner().invoke(toy, ["run", "--epochs", "20", "--steps", "5,10", "--scale", "0.5,1", "--no-amp", "--mode", "cosine"])
    assert "epochs=20" in result.output and "steps=(5, 10)" in result.output
    assert "scale=(0.5, 1.0)" in result.output and "amp=False" in result.output and "mode='cosine'" in result.output
    assert "--hidden" not in CliRunner().invoke(toy, ["run", "--help"]).output
    assert "compile=True" in CliRunner().invoke(toy, ["run", "--compile"]).output  # a switch, not an option taking a value


@pytest.mark.parametrize("args, culprit", [(["--steps", "abc"], "--steps"), (["--scale", "1"], "--scale"),
                                           (["--mode", "linear"], "--mode")])
def test_bad_option_values_name_the_option_with_exit_2(args: list[str], culprit: str) -> None:
    result = CliRunner().invoke(toy, ["run", *args])
    assert result.exit_code == 2 and culprit in result.output


def test_validation_error_is_one_line_exit_2() -> None:
    result = CliRunner().invoke(toy, ["run", "--lr", "-1"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --lr must be positive, got -1.0"


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 7\nsteps = [2, 4]\nmode = "cosine"\n')
    out = CliRunner().invoke(toy, ["run", "--config", str(toml), "--epochs", "9"]).output
    assert "epochs=9" in out and "steps=(2, 4)" in out and "mode='cosine'" in out
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.5\nscale: [0.2, 1.0]\n")
    out = CliRunner().invoke(toy, ["run", "--config", str(yaml_file)]).output
    assert "lr=0.5" in out and "scale=(0.2, 1.0)" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    result = CliRunner().invoke(toy, ["run", "--config", str(bad)])
    assert result.exit_code == 2 and "did you mean 'epochs'" in result.output and str(bad) in result.output


@pytest.mark.parametrize("kind, code", [("usage", 2), ("data", 1), ("os", 1)])
def test_errors_are_one_line_and_debug_shows_the_traceback(kind: str, code: int, monkeypatch) -> None:
    monkeypatch.delenv("COMPRESS_DEBUG", raising=False)
    result = CliRunner().invoke(toy, ["fail", "--kind", kind])
    assert result.exit_code == code
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    debug = CliRunner().invoke(toy, ["--debug", "fail", "--kind", kind])
    assert debug.exception is not None and not isinstance(debug.exception, SystemExit)


def test_worker_tracebacks_reduce_to_their_message() -> None:
    text = ("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\ncache_builder.dataset.BadImageError: data/a.jpg: cannot decode image\n')
    assert one_line(CompressError(text)) == "data/a.jpg: cannot decode image"


def test_unknown_name_suggests_close_names() -> None:
    msg = unknown_name("teacher", "moco_v2_r5O", ["moco_v2_r50", "simclr_r50"])
    assert "did you mean 'moco_v2_r50'" in msg and "known: moco_v2_r50, simclr_r50" in msg
    assert "did you mean" not in unknown_name("teacher", "zzz", ["moco_v2_r50"])

