"""Parquet files as an ``ImageSource``: one image per row (the layout Hugging Face ``datasets`` exports).

The image column (``--image-column``; default: ``image``, ``img`` or ``jpg`` if present, else
the only binary or ``struct<bytes, ...>`` column) holds either the encoded bytes or a struct
with a ``bytes`` field (``datasets``' ``Image`` feature: ``{"bytes": ..., "path": ...}``). The
label column (``--label-column``; default ``label`` if present, else none: -1) holds integer
class indices (a null is -1). Rows are ``<file name>#<row>``, files in listing order.

Listing reads each file's footer (row count, row-group boundaries, schema) and its label
column only, through ``image_source.open_shard`` (a remote file is read where it is, not
copied). Reading: a row is read with its row group's image column, and each process keeps the last row
group it read per file, so reading in order (stage 1, evaluation) reads every row group once.
Random order (stage 2) reads a row group per sample: write such files with small row groups
(``pyarrow.parquet.write_table(..., row_group_size=...)``), or train from the pre-resized tar
copy. A remote file is copied whole into the shard cache on its first row read
(``ImageSource.local_path``). Needs ``pyarrow`` (the ``[parquet]`` extra).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from cache_builder.image_source import ImageSource, Shard, ShardError, open_shard
from storage.errors import UsageError

IMAGE_COLUMN_NAMES = ("image", "img", "jpg")
LABEL_COLUMN_NAMES = ("label",)


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("--data: reading Parquet needs pyarrow (pip install 'compress-distill[parquet]')") from None
    return pq


def _is_image_type(t: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def choose_columns(schema: Any, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str | None]:
    """``(image column, label column or None)`` of an arrow ``schema`` (module docstring);
    ``UsageError`` names the option and the file's columns."""
    names = list(schema.names)
    known = ", ".join(names)
    if image_column is not None:
        if image_column not in names:
            raise UsageError(f"--image-column {image_column!r}: {where} has no such column (columns: {known})")
        if not _is_image_type(schema.field(image_column).type):
            raise UsageError(f"--image-column {image_column!r}: {where}: the column is {schema.field(image_column).type}, "
                             "not binary or a struct with a 'bytes' field")
        image = image_column
    else:
        candidates = [n for n in names if _is_image_type(schema.field(n).type)]
        named = [n for n in IMAGE_COLUMN_NAMES if n in candidates]
        if named:
            image = named[0]
        elif len(candidates) == 1:
            image = candidates[0]
        else:
            raise UsageError(f"--image-column: {where}: cannot tell which column holds the images "
                             f"({len(candidates)} binary columns; columns: {known}); name it")
    if label_column is not None and label_column not in names:
        raise UsageError(f"--label-column {label_column!r}: {where} has no such column (columns: {known})")
    label = label_column if label_column is not None else next((n for n in LABEL_COLUMN_NAMES if n in names), None)
    return image, label


class ParquetSource(ImageSource):
    """Rows of Parquet files (module docstring); picklable (files reopen per process)."""

    kind = "parquet"

    def __init__(self, location: str, shards: Sequence[Shard], image_column: str | None = None,
                 label_column: str | None = None, cache_dir: str | None = None) -> None:
        super().__init__(location, shards, cache_dir)
        self.counts: dict[str, int] = {}
        self.starts: dict[str, list[int]] = {}  # first row of each row group
        self.labels: dict[str, list[int]] = {}
        columns: tuple[str, str | None] | None = None
        for s in self.shards:
            chosen = self._list(s, image_column, label_column)
            if columns is not None and chosen != columns:
                raise ShardError(f"{s.url}: columns {chosen} differ from those of the first file {columns}")
            columns = chosen
        assert columns is not None
        self.image_column, self.label_column = columns
        self._files: dict[str, Any] = {}
        self._groups: dict[str, tuple[int, list[Any]]] = {}

    def _list(self, s: Shard, image_column: str | None, label_column: str | None) -> tuple[str, str | None]:
        """Record the row count, row-group starts and labels of file ``s`` from its footer and
        label column; return its ``(image, label)`` columns (``choose_columns``)."""
        pq = _pq()
        try:
            handle = open_shard(s)
        except OSError as e:
            raise ShardError(f"{s.url}: cannot open it ({e})") from None
        with handle:
            try:
                f = pq.ParquetFile(handle)
            except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
                raise ShardError(f"{s.url}: not a readable Parquet file ({type(e).__name__}: {e})") from None
            chosen = choose_columns(f.schema_arrow, image_column, label_column, s.url)
            meta = f.metadata
            self.counts[s.name] = meta.num_rows
            self.starts[s.name] = list(np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])[:-1])
            labels = [-1] * meta.num_rows
            if chosen[1] is not None:
                try:
                    values = f.read(columns=[chosen[1]]).column(0).to_pylist()
                except Exception as e:  # pyarrow's errors for a damaged file
                    raise ShardError(f"{s.url}: cannot read label column {chosen[1]!r} ({type(e).__name__}: {e})") from None
                bad = next((i for i, v in enumerate(values) if v is not None and (not isinstance(v, int) or v < -1)), None)
                if bad is not None:
                    raise ShardError(f"{s.url}#{bad}: label column {chosen[1]!r} holds {values[bad]!r}, not a class index")
                labels = [-1 if v is None else int(v) for v in values]
        self.labels[s.name] = labels
        return chosen

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}, "_groups": {}}

    def paths_and_labels(self) -> tuple[list[str], list[int]]:
        paths: list[str] = []
        labels: list[int] = []
        for s in self.shards:
            paths += [f"{s.name}#{r}" for r in range(self.counts[s.name])]
            labels += self.labels[s.name]
        return paths, labels

    def _locate(self, path: str) -> tuple[Shard, int]:
        name, _, row = path.rpartition("#")
        shard = self.shard(name, path)
        if not row.isdigit() or int(row) >= self.counts[name]:
            raise ShardError(f"{self.name(path)}: {shard.url} has {self.counts[name]} rows")
        return shard, int(row)

    def read(self, path: str) -> bytes:
        shard, row = self._locate(path)
        group = bisect.bisect_right(self.starts[shard.name], row) - 1
        cached = self._groups.get(shard.name)
        local = self.local_path(shard) if shard.name not in self._files else ""  # a remote file is copied on first read
        try:
            if cached is None or cached[0] != group:
                f = self._files.get(shard.name)
                if f is None:
                    f = self._files[shard.name] = _pq().ParquetFile(local)
                column = f.read_row_group(group, columns=[self.image_column]).column(0)
                cached = self._groups[shard.name] = (group, column.to_pylist())
        except Exception as e:  # pyarrow's errors for a damaged file
            raise ShardError(f"{self.name(path)}: cannot read row group {group} of {shard.url} ({type(e).__name__}: {e})") from None
        value = cached[1][row - self.starts[shard.name][group]]
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            raise ShardError(f"{self.name(path)}: column {self.image_column!r} holds no image bytes")
        return bytes(value)

    def identities(self, paths: Sequence[str]) -> np.ndarray:
        out = np.empty((len(paths), 2), np.int64)
        for i, path in enumerate(paths):
            shard, row = self._locate(path)
            out[i] = (shard.size, row)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_column": self.image_column, "label_column": self.label_column}

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"parquet\t{self.image_column}\t{self.label_column}".encode())
        for s in self.shards:
            h.update(f"\n{s.name}\t{s.size}\t{self.counts[s.name]}".encode())
        return "sha256:" + h.hexdigest()
