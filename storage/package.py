"""The installed CompRess package: its distribution name and version (recorded in every output),
and the optional packages its extras bring (``require_module``)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from storage.errors import CompressError

DISTRIBUTION = "compress-distill"


class MissingPackageError(CompressError):
    """An optional package is not installed; the message names the extra that brings it."""


def require_module(module: str, purpose: str, extra: str, hint: str = "",
                   error: type[MissingPackageError] = MissingPackageError) -> Any:
    """``import module``, or raise ``error``: "PURPOSE needs the 'PACKAGE' package, which is not
    installed: pip install 'compress-distill[EXTRA]'" (plus ``hint``)."""
    package = module.split(".")[0]
    try:
        if importlib.util.find_spec(package) is None:
            raise ImportError(package)
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{purpose} needs the '{package}' package, which is not installed: "
                    f"pip install '{DISTRIBUTION}[{extra}]'{hint}") from None


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
