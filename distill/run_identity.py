"""A run's identity: what makes two invocations the same run (so the second one resumes).

The identity is every non-runtime field of the resolved ``DistillConfig`` (the online-teacher
fields only for an online run; ``lr_steps`` as
resolved, ``decode`` and ``bank_dtype`` as they actually run: GPU decoding gives slightly
different pixels, and ``auto`` precisions differ by machine), the cache's content fingerprint
(``Store.content_fingerprint``; for an online teacher, ``OnlineTeacher.fingerprint``: teacher,
weights sha256, preprocessing) and the data listing's fingerprint. Its ``fingerprint`` is a
hash of all three; a refused resume names the options that differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from distill.config import ONLINE_FIELDS, RUNTIME_FIELDS, DistillConfig
from storage.errors import CompressError


class RunMismatchError(CompressError, ValueError):
    """The output directory holds a run of another config, cache or data."""


@dataclass(frozen=True)
class RunIdentity:
    """``fields``: option name (``lr_steps``) -> JSON value; ``cache``/``data``: content fingerprints."""

    fields: dict[str, Any]
    cache: str
    data: str

    @classmethod
    def of(cls, cfg: DistillConfig, cache: str, data: str, *, decode: str, bank_dtype: str) -> RunIdentity:
        """The identity of resolved ``cfg`` run with decoder ``decode`` and bank precision ``bank_dtype``."""
        skip = RUNTIME_FIELDS + (ONLINE_FIELDS if cfg.teacher is None else ())
        fields = {k: v for k, v in cfg.to_json().items() if k not in skip}
        fields.update(decode=decode, bank_dtype=bank_dtype)
        return cls(json.loads(json.dumps(fields, default=str)), cache, data)  # tuples as lists, as stored

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode())
        h.update(f"|cache {self.cache}|data {self.data}".encode())
        return h.hexdigest()[:24]

    def to_json(self) -> str:
        return json.dumps({"fields": self.fields, "cache": self.cache, "data": self.data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunIdentity:
        obj = json.loads(text)
        return cls(dict(obj["fields"]), str(obj["cache"]), str(obj["data"]))

    def differences(self, now: RunIdentity) -> list[str]:
        """``["--lr: 0.01 in the run, 0.02 now", ...]`` for every difference from ``now``."""
        out = []
        for key in sorted(set(self.fields) | set(now.fields)):
            old, new = self.fields.get(key, "<unset>"), now.fields.get(key, "<unset>")
            if old != new:
                out.append(f"--{key.replace('_', '-')}: {_show(old)} in the run, {_show(new)} now")
        if self.cache != now.cache:
            what = "teacher" if self.cache.startswith("online:") or now.cache.startswith("online:") else "cache contents"
            out.append(f"{what}: {self.cache[:26]}... in the run, {now.cache[:26]}... now")
        if self.data != now.data:
            out.append(f"data listing: {self.data[:19]}... in the run, {now.data[:19]}... now")
        return out


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return str(value)
