"""The installed CompRess package: its distribution name and version (recorded in every output)."""

from __future__ import annotations

DISTRIBUTION = "compress-distill"


def package_version() -> str:
    """The installed version of CompRess, or ``"unknown"`` when run from an uninstalled checkout."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
