"""Package-level guarantees: our packages (not PyPI's namesakes) are imported, and the CLIs answer
``--help`` without importing heavy libraries. (Who may import whom: tests/test_layering.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ["storage", "cache_builder", "distill", "evaluate", "demo"]
CLIS = ["cache_builder.cli", "distill.cli", "evaluate.cli", "demo.cli"]
HEAVY = ["torch", "torchvision", "faiss", "zarr", "h5py", "scipy"]


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
