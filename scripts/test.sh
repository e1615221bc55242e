#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests on a real ComfyUI server.
#   bash scripts/test.sh [pytest arguments: -m e2e, tests/test_FOO.py, -k ...]
#   HSPACE_COMFYUI / HSPACE_VENV: another ComfyUI and its venv (scripts/setup.sh); HSPACE_COMFY_ARGS: more server flags
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_tests.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m pytest -p no:cacheprovider "$@"   # no paths given: pyproject's testpaths (tests/)
