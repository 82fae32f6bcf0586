"""File names inside a store directory, shared by the writer, the reader and verification.

    STORE/manifest.json          the manifest (written at create and at finalize)
    STORE/shard-00000.zarr       shard data (".h5" for hdf5)
    STORE/shard-00000.done       completion marker: JSON with the shard's checksum,
                                 written atomically after the data is in place
    STORE/shard-00000.zarr.tmp-* data being written (removed when that shard is retried)
"""

from __future__ import annotations

import json
from typing import Any

from storage.location import Location
from storage.manifest import MANIFEST_NAME, Manifest, ShardRecord

SHARD_PREFIX = "shard-"
MARKER_SUFFIX = ".done"
TMP_INFIX = ".tmp-"


def shard_base(shard_id: int) -> str:
    return f"{SHARD_PREFIX}{shard_id:05d}"


def shard_data_name(shard_id: int, suffix: str) -> str:
    return shard_base(shard_id) + suffix


def marker_name(shard_id: int) -> str:
    return shard_base(shard_id) + MARKER_SUFFIX


def read_markers(location: Location) -> dict[int, dict[str, Any]]:
    """Completion markers present at ``location``, by shard id."""
    markers: dict[int, dict[str, Any]] = {}
    for entry in location.listdir():
        if entry.startswith(SHARD_PREFIX) and entry.endswith(MARKER_SUFFIX) and TMP_INFIX not in entry:
            try:
                obj = json.loads(location.read_bytes(entry))
                markers[int(obj["shard_id"])] = obj
            except (ValueError, KeyError, OSError):
                continue  # an unreadable marker means the shard is not done: it is rewritten
    return markers


def merge_markers(manifest: Manifest, markers: dict[int, dict[str, Any]]) -> Manifest:
    """The manifest with every shard that has a valid marker marked complete."""
    for shard_id, marker in markers.items():
        if 0 <= shard_id < len(manifest.shards):
            rec = manifest.shards[shard_id]
            if not rec.complete and marker.get("start") == rec.start and marker.get("stop") == rec.stop:
                manifest = manifest.with_shard(ShardRecord(shard_id, rec.start, rec.stop, True, marker["checksum"]))
    return manifest


def read_manifest(location: Location) -> Manifest:
    """The manifest with completion markers merged in. Raises ``FileNotFoundError`` if absent."""
    text = location.read_bytes(MANIFEST_NAME).decode("utf-8", errors="replace")
    manifest = Manifest.from_json(text, location.describe(MANIFEST_NAME))
    if manifest.complete:
        return manifest
    return merge_markers(manifest, read_markers(location))


def write_manifest(location: Location, manifest: Manifest) -> None:
    location.write_bytes_atomic(MANIFEST_NAME, manifest.to_json().encode("utf-8"))
