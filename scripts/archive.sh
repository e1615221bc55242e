#!/usr/bin/env bash
# Build the Comfy Registry archive exactly as `comfy node publish` does (`comfy node pack`: git-tracked files minus
# .comfyignore, plus [tool.comfy] includes) from a clean clone of HEAD, and print its size and largest entries.
#   bash scripts/archive.sh [OUT.zip]     (default ~/.cache/hspace-nodes/node.zip; comfy-cli goes into its own venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HSPACE_HOME:-$HOME/.cache/hspace-nodes}"
OUT="$(realpath -m "${1:-$STATE/node.zip}")"
CLI="$STATE/comfy-cli"
mkdir -p "$STATE" "$(dirname "$OUT")"
if [ ! -x "$CLI/bin/comfy" ]; then
  echo "[archive] installing comfy-cli into $CLI"
  python3 -m venv "$CLI" && "$CLI/bin/python" -m pip install --quiet comfy-cli
fi
clone="$(mktemp -d)"
trap 'rm -rf "$clone"' EXIT
git clone --quiet --no-hardlinks "$ROOT" "$clone/pack"
(cd "$clone/pack" && "$CLI/bin/comfy" --skip-prompt --no-enable-telemetry node pack >/dev/null)
mv "$clone/pack/node.zip" "$OUT"
python3 - "$OUT" <<'PYEOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
infos = z.infolist()
packed, raw = sum(i.compress_size for i in infos), sum(i.file_size for i in infos)
print(f"{sys.argv[1]}: {len(infos)} files, {packed / 2**20:.2f} MiB zipped ({raw / 2**20:.2f} MiB unpacked)")
for i in sorted(infos, key=lambda i: -i.compress_size)[:8]:
    print(f"  {i.compress_size / 2**20:6.2f} MiB  {i.filename}")
PYEOF
