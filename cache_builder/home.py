"""Where CompRess keeps its files by default: ``$COMPRESS_HOME``, else ``~/.cache/compress``.

The one definition, used by the teacher registry (``$COMPRESS_HOME/weights/<teacher>.pth``) and
the demo, so a weights file placed where ``compress-cache`` looks is found by every command.
"""

from __future__ import annotations

import os

DEFAULT_HOME = os.path.join("~", ".cache", "compress")


def compress_home() -> str:
    """``$COMPRESS_HOME`` when set (and not empty), else ``~/.cache/compress`` (expanded)."""
    return os.path.expanduser(os.environ.get("COMPRESS_HOME") or DEFAULT_HOME)


def file_name(name: str) -> str:
    """``name`` (a teacher or student name such as ``timm:vit_small_patch14_dinov2.lvd142m``) as one
    portable file-name component: ``:``, ``/`` and ``\\`` become ``_`` (a colon is not allowed in
    Windows file names and is a separator in ``PATH``-like lists and ``scp`` targets)."""
    return name.replace(":", "_").replace("/", "_").replace("\\", "_")
