#!/usr/bin/env bash
# The main job: set up, then run the pixel-model sample workflows through a real ComfyUI on the bundled demo
# model (models/hspace-shapes-ddpm), write their images to outputs/demo/<workflow>/ and one labelled contact sheet,
# outputs/demo/contact_sheet.png (its path is printed last). Further arguments go to harness.run_workflows, e.g.
# `bash scripts/demo.sh outputs/demo --figure docs/figures/demo_contact_sheet.png` (the README's figure).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m harness.run_workflows workflows/pixel_content_injection.json workflows/pixel_asyrp_edit.json \
    workflows/interpolation.json --out "${1:-outputs/demo}" "${@:2}"
