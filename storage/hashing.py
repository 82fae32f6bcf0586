"""Content identities of files: ``sha256:<hex>`` of a file's bytes."""

from __future__ import annotations

import hashlib


def file_sha256(path: str, chunk: int = 16 << 20) -> str:
    """``sha256:<hex>`` of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()
