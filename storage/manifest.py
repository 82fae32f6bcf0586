"""The store manifest: one JSON document that describes a store and the state of its shards.

The manifest is written when a store is created (every shard incomplete) and rewritten by
``StoreWriter.finalize`` once all shards are done. In between, each finished shard leaves a
small completion marker beside its data (see ``writer.py``), so that several writers never
race on the manifest; readers merge the markers in (``layout.read_manifest``).

Format version 2 (see docs/cache.md, "The store format"): every complete shard records
its SHA-256 ``checksum`` (canonical bytes, backend independent; ``verify``), the byte size of
its data on disk (``bytes``; checked by ``open_store``) and a CRC32C per array (``crc32c``;
checked as ``load_all``/``load_metadata`` read). Parsing checks that the shards tile
``[0, n)`` exactly; any other format version is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.errors import StoreFormatError
from storage.sharding import shard_ranges

FORMAT_NAME = "compress-store"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
SUPPORTED_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class ColumnSpec:
    """An extra per-row column: each row holds an array of ``shape`` and ``dtype``
    (for example crop parameters of augmented views, shape ``(V, 5)`` float32)."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ColumnSpec:
        return ColumnSpec(tuple(int(s) for s in obj["shape"]), str(obj["dtype"]))


@dataclass(frozen=True)
class ShardRecord:
    """One shard: rows ``[start, stop)``; the integrity fields are set once it is complete.

    ``checksum``: ``sha256:<hex>`` of the canonical bytes (``ShardBlock.checksum``);
    ``bytes``: size of the shard's data on disk (sum over a zarr directory), ``None`` where
    the location cannot tell (memory stores); ``crc32c``: by array name, the CRC32Cs of blocks
    of the array's canonical bytes (``ShardBlock.crc32c``).
    """

    shard_id: int
    start: int
    stop: int
    complete: bool = False
    checksum: str | None = None
    bytes: int | None = None
    crc32c: dict[str, list[int]] | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.shard_id,
            "start": self.start,
            "stop": self.stop,
            "rows": self.rows,
            "complete": self.complete,
            "checksum": self.checksum,
            "bytes": self.bytes,
            "crc32c": self.crc32c,
        }

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ShardRecord:
        crc = obj.get("crc32c")
        if "rows" in obj and int(obj["rows"]) != int(obj["stop"]) - int(obj["start"]):
            raise ValueError(f"shard {obj['id']}: 'rows' is {obj['rows']} but 'stop' - 'start' is {int(obj['stop']) - int(obj['start'])}")
        return ShardRecord(
            int(obj["id"]), int(obj["start"]), int(obj["stop"]), bool(obj["complete"]), obj.get("checksum"),
            None if obj.get("bytes") is None else int(obj["bytes"]),
            None if crc is None else {str(k): [int(x) for x in v] for k, v in crc.items()},
        )


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to know about a store.

    ``views`` is ``None`` for one embedding per row, shape ``(N, D)``, or ``V`` for a
    multi-view store, shape ``(N, V, D)``. ``fingerprint`` is an opaque identity chosen
    by the producer (teacher, weights, recipe, data list); resuming into a store with a
    different fingerprint is refused.
    """

    n: int
    d: int
    dtype: str
    backend: str
    shard_size: int
    normalized: bool
    views: int | None = None
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    shards: tuple[ShardRecord, ...] = ()
    fingerprint: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ---- derived -----------------------------------------------------------------
    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row of embeddings: ``(D,)`` or ``(V, D)``."""
        return (self.d,) if self.views is None else (self.views, self.d)

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.shards)

    @property
    def done_shards(self) -> list[int]:
        return [s.shard_id for s in self.shards if s.complete]

    @property
    def missing_shards(self) -> list[int]:
        return [s.shard_id for s in self.shards if not s.complete]

    def layout(self) -> dict[str, Any]:
        """The fields that fix where every byte goes; two stores with equal layouts
        (and fingerprints) can be resumed into one another."""
        return {
            "n": self.n,
            "d": self.d,
            "dtype": self.dtype,
            "backend": self.backend,
            "shard_size": self.shard_size,
            "normalized": self.normalized,
            "views": self.views,
            "columns": {k: v.to_json() for k, v in sorted(self.columns.items())},
            "fingerprint": self.fingerprint,
        }

    def with_shard(self, record: ShardRecord) -> Manifest:
        shards = list(self.shards)
        shards[record.shard_id] = record
        return dataclasses.replace(self, shards=tuple(shards))

    # ---- construction and JSON ---------------------------------------------------
    @staticmethod
    def new(
        n: int,
        d: int,
        dtype: str,
        backend: str,
        shard_size: int,
        normalized: bool,
        views: int | None = None,
        columns: dict[str, ColumnSpec] | None = None,
        fingerprint: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Manifest:
        """A manifest for an empty store; validates every argument."""
        if n < 0:
            raise ValueError(f"n must be >= 0 rows, got {n}")
        if d <= 0:
            raise ValueError(f"d must be a positive embedding dimension, got {d}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
        if views is not None and views <= 0:
            raise ValueError(f"views must be None or a positive count, got {views}")
        shards = tuple(ShardRecord(r.shard_id, r.start, r.stop) for r in shard_ranges(n, shard_size))
        return Manifest(
            n=n, d=d, dtype=dtype, backend=backend, shard_size=shard_size, normalized=normalized,
            views=views, columns=dict(columns or {}), shards=shards, fingerprint=fingerprint,
            provenance=dict(provenance or {}),
        )

    def to_json(self) -> str:
        obj = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            **self.layout(),
            "complete": self.complete,
            "shards": [s.to_json() for s in self.shards],
            "provenance": self.provenance,
        }
        return json.dumps(obj, indent=2, sort_keys=False) + "\n"

    @staticmethod
    def from_json(text: str, source: str) -> Manifest:
        """Parse a manifest; ``source`` names the file in error messages."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreFormatError(f"{source}: manifest is not valid JSON ({e})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
            raise StoreFormatError(f"{source}: not a CompRess store manifest (no \"format\": \"{FORMAT_NAME}\")")
        version = obj.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{source}: store format version {version!r} is newer than this package supports "
                f"({FORMAT_VERSION}); upgrade compress-distill to read it"
            )
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{source}: store format version {version!r} is not supported (this package reads version "
                f"{FORMAT_VERSION}); rebuild the store with the command that built it (with --overwrite)"
            )
        try:
            manifest = Manifest(
                n=int(obj["n"]), d=int(obj["d"]), dtype=str(obj["dtype"]), backend=str(obj["backend"]),
                shard_size=int(obj["shard_size"]), normalized=bool(obj["normalized"]),
                views=None if obj.get("views") is None else int(obj["views"]),
                columns={k: ColumnSpec.from_json(v) for k, v in obj.get("columns", {}).items()},
                shards=tuple(ShardRecord.from_json(s) for s in obj["shards"]),
                fingerprint=obj.get("fingerprint"), provenance=dict(obj.get("provenance", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreFormatError(f"{source}: manifest is missing or has a malformed field ({e!r})") from None
        manifest.check(source)
        return manifest

    def check(self, source: str) -> None:
        """Raise ``StoreFormatError`` naming the manifest field unless the manifest is self-consistent:
        ``n``/``d``/``dtype``/``views``/``columns`` are valid and ``shards`` tile ``[0, n)`` exactly in
        ``shard_size`` steps (so no row is uncovered, doubly covered or beyond ``n``)."""

        def bad(field_name: str, text: str) -> StoreFormatError:
            return StoreFormatError(f"{source}: manifest field {field_name!r} {text}")

        if self.n < 0:
            raise bad("n", f"is {self.n}; a store holds n >= 0 rows")
        if self.d <= 0:
            raise bad("d", f"is {self.d}; the embedding dimension must be positive")
        if self.dtype not in SUPPORTED_DTYPES:
            raise bad("dtype", f"is {self.dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
        if self.views is not None and self.views <= 0:
            raise bad("views", f"is {self.views}; it must be null or a positive count")
        if self.shard_size <= 0:
            raise bad("shard_size", f"is {self.shard_size}; it must be a positive number of rows")
        for name, spec in self.columns.items():
            try:
                np.dtype(spec.dtype)
            except TypeError:
                raise bad("columns", f"gives column {name!r} the unknown dtype {spec.dtype!r}") from None
            if any(s <= 0 for s in spec.shape):
                raise bad("columns", f"gives column {name!r} the shape {list(spec.shape)}; every axis must be positive")
        expected = shard_ranges(self.n, self.shard_size)
        if len(self.shards) != len(expected):
            covered = self.shards[-1].stop if self.shards else 0
            raise bad(
                "n", f"is {self.n} but the {len(self.shards)} shards of 'shard_size' {self.shard_size} cover rows "
                f"[0, {covered}), which needs {len(expected)} shards; the manifest was edited or is damaged",
            )
        for i, (rec, want) in enumerate(zip(self.shards, expected)):
            if (rec.shard_id, rec.start, rec.stop) != tuple(want):
                raise bad(
                    "shards", f"entry {i} is shard {rec.shard_id} rows [{rec.start}, {rec.stop}), expected shard {want.shard_id} "
                    f"rows [{want.start}, {want.stop}) for 'n' {self.n} and 'shard_size' {self.shard_size}: the shards "
                    f"must tile [0, n) exactly",
                )
