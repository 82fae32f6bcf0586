"""Per-batch latency and throughput of several models in one run (``compress-eval latency``).

Every model (any ``--model`` form: a run or ``.pth`` in PyTorch eager, optionally also
``torch.compile``; ONNX files through onnxruntime, fp32 or INT8; TorchScript; safetensors)
gets the same random input of its own size. After ``warmup`` untimed calls per model, each of
``rounds`` rounds calls every model once in turn (A B A B ...), so machine noise hits all
alike. Reported per (model, batch): median and p95 latency in ms and images/s at the median.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from evaluate.latency_config import LatencyConfig
from storage.atomic import write_json_atomic, write_text_atomic
from storage.package import package_version


@dataclass
class Timed:
    """One model ready to time: ``call(batch)`` runs a forward pass of ``batch`` images."""

    label: str
    runtime: str
    size: int
    bytes: int | None
    call: Callable[[int], Any]


def _input_size(identity: dict[str, Any], default: int) -> int:
    meta = identity.get("metadata") or {}
    return int(meta.get("image_size") or default)


def _file_bytes(spec: str, identity: dict[str, Any], module: Any) -> int | None:
    path = identity.get("file") or (spec if os.path.isfile(spec) else None)
    if path and os.path.isfile(path):
        return os.path.getsize(path)
    if isinstance(module, torch.nn.Module):  # a run directory: the backbone's tensors
        return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    return None


def prepare(spec: str, cfg: LatencyConfig) -> list[Timed]:
    """The timed variants of one ``--model`` (eager, plus compiled with ``cfg.compile``)."""
    from evaluate.deployed import OnnxBackbone, is_deployed, load_deployed
    from evaluate.models import resolve_model

    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    if os.path.exists(spec) and is_deployed(spec):
        module, _, identity = load_deployed(spec, threads=cfg.threads, device=cfg.device)
    else:
        resolved = resolve_model(spec, image_size=cfg.image_size)
        module, identity = resolved.module, resolved.identity
    size = _input_size(identity, cfg.image_size or 224)
    name = identity.get("name") or os.path.basename(os.path.normpath(spec))
    nbytes = _file_bytes(spec, identity, module)
    if isinstance(module, OnnxBackbone):
        session, input_name = module.session, module.input
        dtype = np.uint8 if module.raw_input else np.float32
        inputs: dict[int, np.ndarray] = {}

        def call_onnx(batch: int) -> Any:
            if batch not in inputs:
                rng = np.random.default_rng(0)
                inputs[batch] = (rng.integers(0, 256, (batch, 3, size, size)) if module.raw_input
                                 else rng.standard_normal((batch, 3, size, size))).astype(dtype)
            return session.run(None, {input_name: inputs[batch]})

        return [Timed(name, module.runtime, size, nbytes, call_onnx)]
    module = module.to(device).eval()
    raw = bool(identity.get("raw_input"))
    variants = [Timed(name, "torch.jit" if identity.get("runtime") == "torch.jit" else "torch eager", size, nbytes,
                      _torch_call(module, size, device, raw))]
    if cfg.compile and identity.get("runtime") != "torch.jit":
        try:
            compiled = torch.compile(module)
            call = _torch_call(compiled, size, device, raw)
            call(1)
            variants.append(Timed(name, "torch.compile", size, nbytes, call))
        except Exception as e:  # noqa: BLE001  (torch.compile fails in many backend-specific ways; report and go on)
            variants.append(Timed(name, f"torch.compile (failed: {type(e).__name__})", size, nbytes, lambda batch: None))
    return variants


def _torch_call(module: Any, size: int, device: torch.device, raw: bool) -> Callable[[int], Any]:
    inputs: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def call(batch: int) -> Any:
        if batch not in inputs:
            g = torch.Generator().manual_seed(0)
            x = torch.rand(batch, 3, size, size, generator=g) if raw else torch.randn(batch, 3, size, size, generator=g)
            inputs[batch] = x.to(device)
        out = module(inputs[batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def measure(models: list[Timed], batches: tuple[int, ...], warmup: int, rounds: int) -> list[dict[str, Any]]:
    """Interleaved timing; one row per (batch, model): ``median_ms``, ``p95_ms``, ``images_per_s``."""
    rows = []
    for batch in batches:
        live = [m for m in models if "failed" not in m.runtime]
        for m in live:
            for _ in range(warmup):
                m.call(batch)
        times: dict[int, list[float]] = {id(m): [] for m in live}
        for _ in range(rounds):
            for m in live:
                start = time.perf_counter()
                m.call(batch)
                times[id(m)].append(time.perf_counter() - start)
        for m in models:
            t = sorted(times.get(id(m), []))
            median = statistics.median(t) if t else None
            p95 = t[min(len(t) - 1, int(np.ceil(0.95 * len(t))) - 1)] if t else None
            rows.append({"model": m.label, "runtime": m.runtime, "batch": batch, "input_size": m.size, "bytes": m.bytes,
                         "median_ms": None if median is None else round(median * 1e3, 4),
                         "p95_ms": None if p95 is None else round(p95 * 1e3, 4),
                         "images_per_s": None if not median else round(batch / median, 1)})
    return rows


def latency_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: model, runtime, size, batch, median and p95 ms, img/s."""
    lines = ["| model | runtime | size (MB) | batch | median (ms) | p95 (ms) | img/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = "-" if r["bytes"] is None else f"{r['bytes'] / 1e6:.3f}"
        med = "-" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
        p95 = "-" if r["p95_ms"] is None else f"{r['p95_ms']:.3f}"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
        lines.append(f"| {r['model']} | {r['runtime']} | {size} | {r['batch']} | {med} | {p95} | {ips} |")
    return "\n".join(lines)


def latency(cfg: LatencyConfig) -> dict[str, Any]:
    """Time every model of ``cfg``; returns the result record (``rows``, ``table``, machine,
    settings) and writes it to ``cfg.out`` (+ the ``.md`` table) when given."""
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        models = [t for spec in cfg.models for t in prepare(spec, cfg)]
        rows = measure(models, cfg.batch, cfg.warmup, cfg.rounds)
    finally:
        torch.set_num_threads(previous)
    table = latency_table(rows)
    result = {"command": "latency", "protocol": "interleaved", "rows": rows, "table": table, "params": asdict(cfg),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count(), "threads": cfg.threads or previous, "device": cfg.device,
                          "torch": torch.__version__},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": package_version()}
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_json_atomic(cfg.out, result)
        write_text_atomic(os.path.splitext(cfg.out)[0] + ".md", table + "\n")
    return result
