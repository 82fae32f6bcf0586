"""Shared fixtures. Tests are CPU-only and small; slow/GPU tests need ``-m slow`` / ``-m gpu``."""

from __future__ import annotations

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for subprocesses: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (small CPU models: less contention on shared cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline: HF_HUB_OFFLINE=1 and any socket connection raises."""
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI tests see the errors a user sees, whatever COMPRESS_DEBUG the shell running pytest has."""
    monkeypatch.setenv("COMPRESS_DEBUG", "0")
