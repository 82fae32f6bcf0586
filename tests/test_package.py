"""Package-level guarantees: our packages (not PyPI's namesakes) are imported, the CLIs answer
``--help`` without importing heavy libraries, and packages only import whom DESIGN.md allows."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ["storage", "cache_builder", "distill", "evaluate", "demo"]
CLIS = ["cache_builder.cli", "distill.cli", "evaluate.cli", "demo.cli"]
HEAVY = ["torch", "torchvision", "faiss", "zarr", "h5py", "scipy"]

# who may import whom (DESIGN.md section 1)
ALLOWED_IMPORTS = {
    "storage": set(),
    "cache_builder": {"storage"},
    "distill": {"storage", "cache_builder"},
    "evaluate": {"storage", "distill", "cache_builder"},
    "demo": {"storage", "cache_builder", "distill", "evaluate"},
}


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_resolve_to_this_repository(name: str) -> None:
    module = __import__(name)
    assert os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))) == REPO_ROOT, (
        f"`import {name}` resolved to {module.__file__}, not to this repository "
        "(PyPI has unrelated packages named `storage` and `evaluate`)"
    )


@pytest.mark.parametrize("cli", CLIS)
def test_cli_help_is_instant_and_imports_nothing_heavy(cli: str, python_env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        f"from {cli} import main\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=python_env, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert "HEAVY:\n" in out.stdout or out.stdout.rstrip().endswith("HEAVY:"), f"--help imported: {out.stdout.splitlines()[-1]}"


def _imported_top_level(path: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_design(package: str) -> None:
    violations = []
    for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                ours = _imported_top_level(path) & set(PACKAGES) - {package}
                bad = ours - ALLOWED_IMPORTS[package]
                if bad:
                    violations.append(f"{os.path.relpath(path, REPO_ROOT)} imports {sorted(bad)}")
    assert not violations, "; ".join(violations)
