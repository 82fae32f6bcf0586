"""A cache directory: one store per split (``CACHE/train``, ``CACHE/val``, ...)."""

from __future__ import annotations

from storage.errors import NotAStoreError
from storage.location import resolve_location
from storage.manifest import MANIFEST_NAME

SPLITS = ("train", "val")


def split_store_paths(cache: str) -> list[str]:
    """Store paths under a cache directory, ``train`` and ``val`` first, then any other split;
    ``[cache]`` if ``cache`` is itself a store. Raises ``NotAStoreError`` if there is none."""
    location = resolve_location(cache)
    if location.exists(MANIFEST_NAME):
        return [cache]
    if not location.exists():
        raise NotAStoreError(f"{cache}: no such cache (the path does not exist)")
    found = [e for e in location.listdir() if resolve_location(location.describe(e)).exists(MANIFEST_NAME)]
    if not found:
        raise NotAStoreError(f"{cache}: no stores found (expected split stores such as {cache}/train with a {MANIFEST_NAME})")
    ordered = [s for s in SPLITS if s in found] + [s for s in found if s not in SPLITS]
    return [location.describe(s) for s in ordered]
