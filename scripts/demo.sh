#!/usr/bin/env bash
# The main job: set up, then run the demo and write images to outputs/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m hspace_core.demo.run --out "${1:-outputs/demo}"
