"""Exported students as feature extractors: ONNX files (onnxruntime), TorchScript files
(``torch.jit.load``) and safetensors state dicts (rebuilt architecture, strict loading).

``load_deployed(path)`` returns ``(module, transform, identity)``: ``module`` is an
``nn.Module`` mapping ``(B, 3, S, S)`` float images to ``(B, D)`` features, ``transform`` the
export's eval preprocessing from its sidecar (``distill.deploy``): normalised float images, or
for a ``--raw-input`` graph the same crop in [0, 1], which the module turns back into the
exact uint8 pixels the graph takes. ``identity`` records the runtime and the file (and its
sha256), so results and feature caches of a deployed file never mix with the run's.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.checkpoint import CheckpointError
from storage.hashing import file_sha256

DEPLOYED_SUFFIXES = (".onnx", ".pt", ".ts", ".safetensors")


def is_deployed(path: str) -> bool:
    """A file of a deployable format, or a directory holding ``model.safetensors``."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "model.safetensors"))
    return path.endswith(DEPLOYED_SUFFIXES)


class OnnxBackbone(nn.Module):
    """An onnxruntime session as a module: ``(B, 3, S, S)`` -> ``(B, D)`` float32 (CPU tensors).
    With ``raw_input`` the float input in [0, 1] is rounded back to the uint8 the graph takes."""

    def __init__(self, path: str, raw_input: bool, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__()
        from distill.deploy import onnx_session

        self.path, self.raw_input = path, raw_input
        self.session: Any = onnx_session(path, threads=threads, device=device)
        self.input = self.session.get_inputs()[0].name
        self.runtime = "onnxruntime:" + ",".join(self.session.get_providers())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().cpu()
        array = (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy() if self.raw_input and x.is_floating_point() \
            else x.numpy().astype(np.uint8 if self.raw_input else np.float32, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input: array})[0]).to(images.device)


class RawInputAdapter(nn.Module):
    """A uint8-input TorchScript graph fed [0, 1] float crops (rounded back to its pixels)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images * 255.0).round().clamp(0, 255).to(torch.uint8) if images.is_floating_point() else images
        return self.graph(x)


def sidecar(path: str) -> tuple[str, dict[str, Any]]:
    """The export's sidecar path and contents (``FILE.json``; ``config.json`` for safetensors)."""
    if path.endswith(".safetensors") or os.path.isdir(path):
        side = os.path.join(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)), "config.json")
    else:
        side = path + ".json"
    if not os.path.isfile(side):
        raise CheckpointError(f"--model {path}: its sidecar {side} is missing (written by compress-distill export; "
                              "it says the architecture and preprocessing)")
    with open(side) as f:
        return side, json.load(f)


def _transform(meta: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms as T

    from cache_builder.image_decode import rgb_image
    from distill.students import build_eval_transform

    recipe = meta["eval_transform"]
    if not meta.get("raw_input"):
        return build_eval_transform(recipe)
    return T.Compose([T.Lambda(rgb_image), T.Resize(recipe["resize"], antialias=True), T.CenterCrop(recipe["crop"]), T.ToTensor()])


def load_deployed(path: str, *, threads: int | None = None, device: str = "cpu") -> tuple[nn.Module, Callable[[Any], torch.Tensor], dict[str, Any]]:
    """``(module, transform, identity)`` of an exported file (see module docstring).

    Raises:
        CheckpointError: the sidecar is missing, or the state dict does not fit its architecture.
        distill.quantize.MissingDependencyError: an ONNX file without onnxruntime installed.
    """
    side, meta = sidecar(path)
    fmt = meta.get("format") or ("onnx" if path.endswith(".onnx") else "torchscript" if path.endswith((".pt", ".ts")) else "safetensors")
    module: nn.Module
    if fmt == "onnx":
        module = OnnxBackbone(path, bool(meta.get("raw_input")), threads=threads, device=device)
        runtime = module.runtime
        weights = path
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            graph = torch.jit.load(path, map_location="cpu")
        module = RawInputAdapter(graph) if meta.get("raw_input") else graph
        runtime, weights = "torch.jit", path
    else:
        from safetensors.torch import load_file

        from distill.students import get_student_spec

        weights = path if path.endswith(".safetensors") else os.path.join(path, "model.safetensors")
        module = get_student_spec(meta["student"]).builder()
        missing, unexpected = module.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"--model {path}: does not fit {meta['student']}: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
        runtime = "torch (safetensors state dict)"
    identity = {"kind": "deployed", "format": meta.get("format"), "quantize": meta.get("quantize", "none"), "runtime": runtime,
                "name": os.path.basename(os.path.normpath(path)), "file": os.path.abspath(weights), "weights_sha256": file_sha256(weights),
                "sidecar": os.path.abspath(side), "raw_input": bool(meta.get("raw_input")), "preprocessing": repr(meta["eval_transform"]),
                "metadata": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k not in ("source",)}}
    return module.eval(), _transform(meta), identity
