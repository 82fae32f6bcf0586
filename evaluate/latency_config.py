"""Settings of ``compress-eval latency`` (no torch import: ``--help`` stays instant)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.config_options import setting
from storage.errors import UsageError

LATENCY_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class LatencyConfig:
    """Per-batch latency of several models, measured in one interleaved run (docs/deploy.md)."""

    models: tuple[str, ...] = setting((), "Models to time (--model, repeatable).", cli=False)
    batch: tuple[int, ...] = setting((1, 32), "Batch sizes, e.g. 1,32.")
    threads: int | None = setting(None, "CPU threads of every runtime (torch and onnxruntime; default: torch's current count).")
    device: str = setting("cpu", "cpu, or cuda (PyTorch models on the GPU, ONNX with onnxruntime-gpu's CUDA provider).",
                          choices=LATENCY_DEVICES)
    warmup: int = setting(5, "Untimed calls per model and batch size before the timed rounds.")
    rounds: int = setting(30, "Timed rounds; each round calls every model once, in turn (A B A B ...).")
    compile: bool = setting(False, "Also time torch.compile of every PyTorch model (skipped with the reason where it fails).")
    image_size: int | None = setting(None, "Input size for models without one recorded (torchvision:ARCH; default 224).")
    out: str | None = setting(None, "Result JSON (default: eval-results/latency.json); a .md table is written beside it.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.models:
            raise UsageError("--model: give at least one model to time")
        if not self.batch or any(b < 1 for b in self.batch):
            raise UsageError(f"--batch: every batch size must be >= 1, got {','.join(map(str, self.batch))}")
        for name in ("warmup", "rounds"):
            if getattr(self, name) < (0 if name == "warmup" else 1):
                raise UsageError(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.device not in LATENCY_DEVICES:
            raise UsageError(f"--device must be cpu or cuda, got {self.device!r}")
