"""The demo's deployed student: ``OUT/student.onnx`` (fp32), ``OUT/student.int8.onnx`` (static
INT8, calibrated on 256 training images) and ``OUT/model.safetensors`` (+ ``OUT/config.json``),
exported from the distilled run (``distill.deploy``) and reused while the run is the same.

``deploy_timing`` times the PyTorch student and both ONNX files in one interleaved run
(``evaluate.latency.measure``): batch-1 CPU latency and batch-256 throughput.
"""

from __future__ import annotations

import json
import os
from typing import Any

EXPORTS = {"onnx fp32": ("student.onnx", "none"), "onnx int8": ("student.int8.onnx", "int8")}
SAFETENSORS = "model.safetensors"
CALIBRATION_IMAGES = 256


def _current(sidecar: str, run_fingerprint: str, quantize: str) -> bool:
    if not os.path.isfile(sidecar):
        return False
    with open(sidecar) as f:
        meta = json.load(f)
    return meta.get("run_fingerprint") == run_fingerprint and meta.get("quantize") == quantize


def export_student_files(out: str, run: str) -> dict[str, str]:
    """``{"onnx fp32": path, "onnx int8": path, "safetensors": path}`` in ``out``, exported from
    ``run`` unless already there for the same run fingerprint."""
    from distill.deploy import export_deployable, sidecar_for
    from distill.deploy_config import ExportConfig
    from distill.export import load_student

    fingerprint = load_student(run)[1]["run_fingerprint"]
    files = {}
    for name, (file, quantize) in EXPORTS.items():
        path = os.path.join(out, file)
        if not (os.path.isfile(path) and _current(sidecar_for(path, "onnx"), fingerprint, quantize)):
            export_deployable(ExportConfig(run=run, out=path, quantize=quantize, calibration_images=CALIBRATION_IMAGES))
        files[name] = path
    st = os.path.join(out, SAFETENSORS)
    if not (os.path.isfile(st) and _current(sidecar_for(st, "safetensors"), fingerprint, "none")):
        export_deployable(ExportConfig(run=run, out=st))
    files["safetensors"] = st
    return files


def deploy_timing(run: str, files: dict[str, str], rounds: int = 50) -> dict[str, dict[str, Any]]:
    """``{"pytorch": ..., "onnx fp32": ..., "onnx int8": ...}``: ``bytes`` on disk (the safetensors
    file for PyTorch), ``b1_ms`` (median batch-1 latency), ``b1_images_per_s``, ``images_per_s``
    (batch 256); all measured interleaved in this call, on the CPU, one thread each."""
    import torch

    from evaluate.latency import measure, prepare
    from evaluate.latency_config import LatencyConfig

    cfg = LatencyConfig(models=(run,), batch=(1, 256), device="cpu", threads=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread for every runtime: comparable, and robust to a busy machine
    try:
        models = prepare(run, cfg) + [t for name in EXPORTS for t in prepare(files[name], cfg)]
        rows = measure(models, (1,), warmup=10, rounds=rounds) + measure(models, (256,), warmup=1, rounds=5)
    finally:
        torch.set_num_threads(previous)
    keys = ["pytorch", *EXPORTS]
    out: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        b1, b256 = rows[i], rows[len(keys) + i]
        size = os.path.getsize(files["safetensors"] if key == "pytorch" else files[key])
        out[key] = {"bytes": size, "b1_ms": b1["median_ms"], "b1_p95_ms": b1["p95_ms"], "b1_images_per_s": b1["images_per_s"],
                    "images_per_s": b256["images_per_s"]}
    return out
