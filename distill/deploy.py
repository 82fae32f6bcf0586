"""Deployable students: ONNX (fp32, INT8, fp16), TorchScript and safetensors exports, each
checked against the PyTorch backbone it came from.

``export_deployable(cfg)`` loads a run directory or ``.pth`` export (``distill.export.load_student``)
and writes one file plus a sidecar JSON:

* ``onnx``: opset 17, input ``images`` ``(B, 3, S, S)`` with a dynamic batch axis (float32
  normalised as the student's eval preprocessing says, or uint8 with ``raw_input``: the
  scaling and mean/std are in the graph), output ``embedding`` ``(B, F)`` (L2-normalised when
  ``normalize``); checked with ``onnx.checker``. ``quantize`` int8 / fp16 rewrite it
  (``distill.quantize``).
* ``torchscript``: the same graph traced (``torch.jit.load`` needs only torch).
* ``safetensors``: the backbone state dict ``model.safetensors`` + ``config.json``; it loads
  with ``strict=True`` into the torchvision architecture with its classifier set to Identity.

Sidecar (``FILE.json``, e.g. ``student.onnx.json``; ``config.json`` for safetensors): the export's metadata
(``distill.export``) plus ``format``, ``file``, ``bytes``, ``input``/``output`` names, dtypes and
shapes, ``raw_input``, ``normalize``, ``mean``/``std``, ``cache_fingerprint``, ``quantize``,
``calibration`` (images, seed, fingerprint), ``parity`` (max abs diff and min cosine against
PyTorch on a fixed batch; INT8/fp16 also against the fp32 graph) and versions.

Files are written under a temporary name in the target directory and renamed into place:
a failure at any point leaves no file under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.deploy_config import ExportConfig
from distill.export import UnfinishedRunError, load_student
from distill.quantize import convert_fp16, quantize_int8, random_images, require, sample_images, to_model_input
from distill.students import get_student_spec
from storage.atomic import rename_durable, temporary_name, write_json_atomic, write_path_atomic
from storage.errors import CompressError
from storage.package import package_version

log = logging.getLogger(__name__)
OPSET = 17
PARITY_IMAGES = 8
INPUT, OUTPUT = "images", "embedding"


class DeployGraph(nn.Module):
    """The exported computation: ``(B, 3, S, S)`` (uint8 with ``raw_input``, else normalised
    float32) -> backbone -> ``(B, F)`` (unit rows with ``normalize``)."""

    def __init__(self, backbone: nn.Module, mean: Any, std: Any, raw_input: bool, normalize: bool) -> None:
        super().__init__()
        self.backbone, self.raw_input, self.normalize = backbone, raw_input, normalize
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std if self.raw_input else images
        y = self.backbone(x)
        return F.normalize(y, dim=1) if self.normalize else y


def sidecar_for(out: str, fmt: str) -> str:
    """``config.json`` beside a safetensors file, else ``NAME.json``."""
    if fmt == "safetensors":
        return os.path.join(os.path.dirname(os.path.abspath(out)), "config.json")
    return out + ".json"


def weights_file(out: str) -> str:
    """The safetensors file of ``out`` (a ``.safetensors`` path, or ``DIR/model.safetensors``)."""
    return out if out.endswith(".safetensors") else os.path.join(out, "model.safetensors")


def _check_writable(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise CompressError(f"--out {path}: cannot create the directory {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise CompressError(f"--out {path}: the directory {parent} is not writable")
    if os.path.isdir(path):
        raise CompressError(f"--out {path}: is a directory")


def _training_listing(meta: dict[str, Any], run: str) -> Any:
    """The run's training images (``config.json``'s ``data``), or None when they are gone."""
    from cache_builder.image_list import discover_splits

    config = os.path.join(run, "config.json") if os.path.isdir(run) else None
    data = None
    if config and os.path.isfile(config):
        with open(config) as f:
            data = json.load(f).get("data")
    data = data or meta.get("data")
    if not data or not os.path.exists(data):
        return None
    return discover_splits(data).get("train")


def _cache_fingerprint(cache: str | None) -> str | None:
    if not cache:
        return None
    try:
        from distill.targets import train_store_path
        from storage import open_store

        return open_store(train_store_path(cache)).content_fingerprint()
    except (CompressError, OSError, ValueError):
        return None


def parity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """``max_abs_diff`` and per-row ``min_cosine`` / ``mean_cosine`` of two ``(B, F)`` arrays."""
    a, b = torch.from_numpy(np.asarray(reference, np.float32)), torch.from_numpy(np.asarray(other, np.float32))
    cos = F.cosine_similarity(a, b, dim=1)
    return {"max_abs_diff": float((a - b).abs().max()), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def onnx_session(path: str, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime ``InferenceSession`` (CPU, or CUDA when ``device`` is cuda and available)."""
    ort = require("onnxruntime", "running an ONNX model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own untyped errors)
        raise CompressError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None


def _export_onnx(graph: DeployGraph, example: torch.Tensor, path: str) -> None:
    """``torch.onnx.export`` (the TorchScript-based exporter: offline, no onnxscript) + checker."""
    onnx = require("onnx", "--format onnx")
    require("onnxruntime", "--format onnx (parity check)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), path, input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path))


def _write_onnx(cfg: ExportConfig, graph: DeployGraph, images: torch.Tensor, calibration: np.ndarray | None,
                mean: Any, std: Any) -> dict[str, Any]:
    """Write cfg.out (fp32, int8 or fp16 ONNX); returns parity info."""
    out = cfg.out
    x = to_model_input(images, cfg.raw_input, mean, std)
    with torch.no_grad():
        reference = graph(torch.from_numpy(x)).numpy()
    fp32 = temporary_name(out) + ".onnx"
    final_tmp = temporary_name(out) + ".onnx"
    info: dict[str, Any] = {}
    try:
        _export_onnx(graph, torch.from_numpy(x[:2]), fp32)
        fp32_rows = onnx_session(fp32).run(None, {INPUT: x})[0]
        if cfg.quantize == "none":
            os.replace(fp32, final_tmp)
            rows = fp32_rows
        else:
            (quantize_int8(fp32, final_tmp, calibration) if cfg.quantize == "int8" else convert_fp16(fp32, final_tmp))  # type: ignore[arg-type]
            require("onnx", "--quantize").checker.check_model(final_tmp)
            rows = onnx_session(final_tmp).run(None, {INPUT: x})[0]
            info["vs_fp32"] = parity(fp32_rows, rows)
            info["fp32_bytes"] = os.path.getsize(fp32)
        info["vs_pytorch"] = parity(reference, rows)
        with open(final_tmp, "rb+") as f:
            os.fsync(f.fileno())
        rename_durable(final_tmp, out)
    finally:
        for p in (fp32, final_tmp):
            if os.path.exists(p):
                os.remove(p)
    return info


def _write_torchscript(out: str, graph: DeployGraph, x: np.ndarray) -> dict[str, Any]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = graph(torch.from_numpy(x)).numpy()
        traced = torch.jit.trace(graph, torch.from_numpy(x[:2]), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        write_path_atomic(out, lambda tmp: torch.jit.save(traced, tmp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(out)
    with torch.no_grad():
        rows = loaded(torch.from_numpy(x)).numpy()
    return {"vs_pytorch": parity(reference, rows)}


def _write_safetensors(path: str, backbone: nn.Module, builder: Any, x: np.ndarray) -> dict[str, Any]:
    """``path`` (the backbone state dict), reloaded strictly into a fresh ``builder()`` to check it."""
    from safetensors.torch import load_file, save_file

    state = {k: v.detach().contiguous().clone() for k, v in backbone.state_dict().items()}
    def write(tmp: str) -> None:
        save_file(state, tmp, metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates it private; make it an ordinary file

    write_path_atomic(path, write)
    fresh = builder()
    fresh.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        reference = backbone(torch.from_numpy(x)).numpy()
        rows = fresh.eval()(torch.from_numpy(x)).numpy()
    return {"vs_pytorch": parity(reference, rows)}


def export_deployable(cfg: ExportConfig) -> dict[str, Any]:
    """Write ``cfg.out`` in ``cfg.resolved_format`` and its sidecar; returns the sidecar.

    Raises:
        UnfinishedRunError: the run has not finished and not ``allow_unfinished``.
        MissingDependencyError: onnx / onnxruntime are needed and not installed.
        CompressError: an unwritable ``out``.
    """
    fmt = cfg.resolved_format
    if fmt == "pth":
        from distill.export import export_student

        return export_student(cfg.run, cfg.out, allow_unfinished=cfg.allow_unfinished)
    if fmt == "onnx":
        require("onnx", "--format onnx")
        require("onnxruntime", "--format onnx")
    target = weights_file(cfg.out) if fmt == "safetensors" else cfg.out
    _check_writable(target)
    backbone, meta = load_student(cfg.run)
    if not meta.get("finished", True) and not cfg.allow_unfinished:
        raise UnfinishedRunError(f"{cfg.run}: the run is unfinished (latest checkpoint: epoch {meta['epoch']}, step {meta['steps']}); "
                                 "rerun it to finish, or pass --allow-unfinished to export that checkpoint")
    recipe = meta["eval_transform"]
    mean, std, size = recipe["mean"], recipe["std"], int(recipe["crop"])
    listing = _training_listing(meta, cfg.run)
    n_calibration = cfg.calibration_images if cfg.quantize == "int8" else 0
    calibration_info: dict[str, Any] | None = None
    calibration = None
    if listing is not None and len(listing):
        images, info = sample_images(listing, max(n_calibration, PARITY_IMAGES), cfg.seed, recipe)
        parity_images, parity_source = images[:PARITY_IMAGES], f"{min(PARITY_IMAGES, len(images))} training images (seed {cfg.seed})"
        if n_calibration:
            calibration, calibration_info = to_model_input(images, cfg.raw_input, mean, std), info
    elif cfg.quantize == "int8":
        raise CompressError(f"{cfg.run}: --quantize int8 calibrates on the run's training images, and they are not found "
                            "(config.json's data is missing or moved)")
    else:
        parity_images, parity_source = random_images(PARITY_IMAGES, size, cfg.seed), f"{PARITY_IMAGES} random uint8 images (seed {cfg.seed})"
    graph = DeployGraph(backbone, mean, std, cfg.raw_input, cfg.normalize).eval()
    x = to_model_input(parity_images, cfg.raw_input, mean, std)
    try:
        if fmt == "onnx":
            checks = _write_onnx(cfg, graph, parity_images, calibration, mean, std)
        elif fmt == "torchscript":
            checks = _write_torchscript(cfg.out, graph, x)
        else:
            checks = _write_safetensors(target, backbone, get_student_spec(meta["student"]).builder,
                                        to_model_input(parity_images, False, mean, std))
    except OSError as e:
        raise CompressError(f"--out {target}: cannot write the export ({e.strerror or e})") from None
    graph_format = fmt in ("onnx", "torchscript")
    sidecar = {
        **meta, "format": fmt, "file": os.path.basename(target), "bytes": os.path.getsize(target),
        "source": os.path.abspath(cfg.run), "cache_fingerprint": _cache_fingerprint(meta.get("cache")),
        "mean": list(mean), "std": list(std),
        "input": {"name": INPUT, "dtype": "uint8" if cfg.raw_input else "float32", "shape": ["batch", 3, size, size]} if graph_format else None,
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", meta["feature_dim"]]} if graph_format else None,
        "raw_input": cfg.raw_input if graph_format else False, "normalize": cfg.normalize if graph_format else False,
        "quantize": cfg.quantize, "opset": OPSET if fmt == "onnx" else None, "calibration": calibration_info,
        "parity": {"images": parity_source, **checks},
        "versions": {"compress": package_version(), "torch": torch.__version__, **_runtime_versions(fmt)},
    }
    write_json_atomic(sidecar_for(target, fmt), sidecar)
    return sidecar


def _runtime_versions(fmt: str) -> dict[str, str]:
    if fmt != "onnx":
        return {}
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def describe(sidecar: dict[str, Any]) -> list[str]:
    """The lines ``compress-distill export`` prints: file, size, parity."""
    p = sidecar.get("parity", {})
    lines = [f"wrote {sidecar.get('file')} ({sidecar['format']}{'' if sidecar.get('quantize', 'none') == 'none' else ' ' + sidecar['quantize']}, "
             f"{sidecar['bytes'] / 1e6:.3f} MB, {sidecar['architecture']}, {sidecar['feature_dim']}-d)"]
    if "vs_pytorch" in p:
        v = p["vs_pytorch"]
        lines.append(f"parity vs PyTorch on {p['images']}: max abs diff {v['max_abs_diff']:.2e}, min cosine {v['min_cosine']:.6f}")
    if "vs_fp32" in p:
        v = p["vs_fp32"]
        lines.append(f"{sidecar['quantize']} vs the fp32 graph: min cosine {v['min_cosine']:.6f}, mean cosine {v['mean_cosine']:.6f}; "
                     f"size {sidecar['bytes'] / p['fp32_bytes']:.2f}x the fp32 file")
    if not sidecar.get("finished", True):
        lines.append(f"UNFINISHED run: exported the checkpoint of epoch {sidecar['epoch']}, step {sidecar['steps']}")
    return lines
