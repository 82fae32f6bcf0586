"""CLI tests see the errors a user sees: no COMPRESS_DEBUG (``--debug`` sets it; restored after each test)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPRESS_DEBUG", "0")
