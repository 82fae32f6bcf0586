#!/usr/bin/env bash
# Install the package with its test extras into ./.venv (created if missing) and run the
# fast test suite. Slow and GPU tests are opt-in: pass `-m slow` or `-m gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
