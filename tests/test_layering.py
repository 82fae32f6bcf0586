"""The package layering of docs/architecture.md, checked on the source (every import, including
those inside functions and under ``TYPE_CHECKING``):

    storage <- cache_builder <- distill <- evaluate <- demo

``storage`` imports none of our packages; each package imports only those to its left; no product
module imports ``tests`` or ``bench``.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("storage", "cache_builder", "distill", "evaluate", "demo")
NOT_PRODUCT = ("tests", "bench")

# who may import whom (docs/architecture.md, "Packages")
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "storage": set(),
    "cache_builder": {"storage"},
    "distill": {"storage", "cache_builder"},
    "evaluate": {"storage", "cache_builder", "distill"},
    "demo": {"storage", "cache_builder", "distill", "evaluate"},
}


def product_modules(package: str) -> list[str]:
    """Every ``.py`` file of ``package``, as paths relative to the repository root, sorted."""
    found = []
    for dirpath, dirnames, files in os.walk(os.path.join(REPO_ROOT, package)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found += [os.path.relpath(os.path.join(dirpath, f), REPO_ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def module_name(relpath: str) -> str:
    """``distill/cli.py`` -> ``distill.cli``; ``storage/backends/__init__.py`` -> ``storage.backends``."""
    parts = relpath[:-3].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(relpath: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file, relative imports resolved."""
    path = os.path.join(REPO_ROOT, relpath)
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = module_name(relpath)
    if not relpath.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.lineno, node.module or ""))
            else:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                out.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
    return sorted(out)


def layering_violations(package: str) -> list[str]:
    """``file:line imports X`` for every import of ``package``'s modules the layering forbids."""
    allowed = ALLOWED_IMPORTS[package] | {package}
    ours = set(PACKAGES) | set(NOT_PRODUCT)
    bad = []
    for relpath in product_modules(package):
        for line, name in imported_modules(relpath):
            top = name.split(".")[0]
            if top in ours and top not in allowed:
                bad.append(f"{relpath}:{line} imports {name}")
    return bad


def test_every_package_is_checked() -> None:
    assert set(ALLOWED_IMPORTS) == set(PACKAGES)
    for package in PACKAGES:
        assert product_modules(package), f"{package}/ has no modules"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_layering(package: str) -> None:
    violations = layering_violations(package)
    assert not violations, f"{package} may import only {sorted(ALLOWED_IMPORTS[package]) or 'nothing of ours'}: " + "; ".join(violations)


def test_the_checker_sees_imports_inside_functions_and_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser resolves relative imports and finds imports nested in functions and classes."""
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..distill import engine\n"
        "def f():\n"
        "    import evaluate.knn\n"
        "    class C:\n"
        "        from tests import conftest\n"
    )
    pkg = tmp_path / "cache_builder" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", str(tmp_path))
    names = [name for _, name in imported_modules(os.path.join("cache_builder", "sub", "mod.py"))]
    assert names == ["os", "cache_builder.sub", "cache_builder.distill", "evaluate.knn", "tests"]
    assert layering_violations("cache_builder") == [
        "cache_builder/sub/mod.py:5 imports evaluate.knn",
        "cache_builder/sub/mod.py:7 imports tests",
    ]
