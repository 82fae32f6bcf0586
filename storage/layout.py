"""File names inside a store directory, shared by the writer, the reader and verification.

    STORE/manifest.json          the manifest (written at create and at finalize)
    STORE/shard-00000.zarr       shard data (".h5" for hdf5)
    STORE/shard-00000.done       completion marker: JSON with the shard's row range, the
                                 store fingerprint it was written for, checksum, CRC32Cs and
                                 byte size, written atomically after the data is in place
    STORE/shard-00000.zarr.tmp-PID data being written by process PID (removed when that shard
                                 is retried, or on the next run once PID is dead)
    STORE/.writer.lock, .writer.guard  the writer lock (``writer_lock.py``)
"""

from __future__ import annotations

import json
import re
from typing import Any

from storage.location import Location
from storage.manifest import MANIFEST_NAME, Manifest, ShardRecord

SHARD_PREFIX = "shard-"
MARKER_SUFFIX = ".done"
TMP_INFIX = ".tmp-"
_TMP_PID = re.compile(re.escape(TMP_INFIX) + r"(\d+)")


def tmp_pid(entry: str) -> int | None:
    """The writer pid in a temporary name (``x.tmp-1234`` or ``x.tmp-1234-ab12cd34``), else ``None``."""
    m = _TMP_PID.search(entry)
    return int(m.group(1)) if m else None


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


def make_marker(manifest: Manifest, record: ShardRecord) -> dict[str, Any]:
    """The completion marker of a complete shard ``record`` of a store with ``manifest``'s fingerprint."""
    return {"shard_id": record.shard_id, "start": record.start, "stop": record.stop, "fingerprint": manifest.fingerprint,
            "checksum": record.checksum, "bytes": record.bytes, "crc32c": record.crc32c}


def marker_record(manifest: Manifest, marker: dict[str, Any]) -> ShardRecord | None:
    """The complete shard a marker describes, or ``None`` when it does not belong to this store:
    unknown shard, another row range, or another fingerprint (a marker left by a writer of other
    rows is never taken as done)."""
    try:
        shard_id = int(marker["shard_id"])
        if not 0 <= shard_id < len(manifest.shards):
            return None
        rec = manifest.shards[shard_id]
        if (marker.get("start"), marker.get("stop")) != (rec.start, rec.stop) or marker.get("fingerprint") != manifest.fingerprint:
            return None
        crc = marker.get("crc32c")
        size = marker.get("bytes")
        return ShardRecord(shard_id, rec.start, rec.stop, True, str(marker["checksum"]), None if size is None else int(size),
                           None if crc is None else {str(k): [int(x) for x in v] for k, v in crc.items()})
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def merge_markers(manifest: Manifest, markers: dict[int, dict[str, Any]]) -> Manifest:
    """The manifest with every shard that has a valid marker (``marker_record``) marked complete."""
    for marker in markers.values():
        done = marker_record(manifest, marker)
        if done is not None and not manifest.shards[done.shard_id].complete:
            manifest = manifest.with_shard(done)
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
