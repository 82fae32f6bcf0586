"""Settings of ``compress-distill export``: one frozen dataclass, the one place their defaults
and help texts live (``storage.config_options`` turns them into the CLI options).

No torch import here (``compress-distill --help`` stays instant). ``validate()`` raises
``UsageError`` naming the option. The formats are documented in docs/deploy.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from storage.config_options import setting
from storage.errors import UsageError, unknown_name

FORMATS = ("pth", "onnx", "torchscript", "safetensors")
QUANTIZE = ("none", "int8", "fp16")
SUFFIXES = {".pth": "pth", ".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".safetensors": "safetensors"}


def infer_format(out: str) -> str:
    """The export format of ``out`` from its suffix (a path without a suffix is a safetensors
    directory: ``DIR/model.safetensors`` + ``DIR/config.json``)."""
    ext = os.path.splitext(out)[1].lower()
    if ext in SUFFIXES:
        return SUFFIXES[ext]
    if not ext:
        return "safetensors"
    raise UsageError(f"--out {out}: cannot tell the format from the suffix {ext!r} "
                     f"(known: {', '.join(SUFFIXES)}); pass --format {'|'.join(FORMATS)}")


@dataclass(frozen=True)
class ExportConfig:
    """One export of a run's (or a ``.pth`` export's) student backbone.

    ``run``: the run directory or exported ``.pth``; ``out``: the file to write (its sidecar
    JSON goes beside it: ``NAME.json``, or ``config.json`` for safetensors).
    """

    run: str = setting("", "Run directory or exported .pth.", cli=False)
    out: str = setting("", "Output file: NAME.pth | NAME.onnx | NAME.pt (TorchScript) | NAME.safetensors or a directory "
                           "(model.safetensors + config.json); a .json sidecar is written beside it.", cli=False)
    format: str | None = setting(None, "Export format: pth, onnx, torchscript or safetensors (default: from --out's suffix).")
    quantize: str = setting("none", "ONNX only: int8 (static QDQ, per-channel weights, calibrated on training images) or "
                                    "fp16 (for GPU runtimes).", choices=QUANTIZE)
    calibration_images: int = setting(256, "INT8: training images drawn (seeded) for calibration, with the eval preprocessing.")
    seed: int = setting(0, "Seed of the calibration and parity image draw.")
    raw_input: bool = setting(False, "ONNX/TorchScript: take uint8 (B, 3, S, S) images; scaling and mean/std are in the graph.")
    normalize: bool = setting(True, "ONNX/TorchScript: L2-normalise the embedding in the graph (as the evaluation protocols do).")
    allow_unfinished: bool = setting(False, "Export the latest checkpoint of a run that has not trained all its epochs.")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def resolved_format(self) -> str:
        return self.format or infer_format(self.out)

    def validate(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise UsageError("--format: " + unknown_name("format", self.format, list(FORMATS)))
        if self.quantize not in QUANTIZE:
            raise UsageError("--quantize: " + unknown_name("quantization", self.quantize, list(QUANTIZE)))
        if not self.out:
            return
        fmt = self.resolved_format
        if self.quantize != "none" and fmt != "onnx":
            raise UsageError(f"--quantize {self.quantize}: only for --format onnx (got {fmt})")
        if self.raw_input and fmt not in ("onnx", "torchscript"):
            raise UsageError(f"--raw-input: only for graphs (onnx, torchscript), not {fmt}")
        if self.calibration_images < 1:
            raise UsageError(f"--calibration-images must be >= 1, got {self.calibration_images}")
