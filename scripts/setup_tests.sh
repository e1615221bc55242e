#!/usr/bin/env bash
# The test set-up: scripts/setup.sh (what the main job needs), then requirements-dev.txt and, for the editor tests,
# a Chromium (Debian's package, installed with apt-get as root; or yours, named by CHROMIUM_PATH) and playwright-core
# in harness/browser/node_modules (npm). Idempotent; sourced by test.sh.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/setup.sh"
install_requirements "$ROOT/requirements-dev.txt"
# Browser tests: Debian's Chromium (no browser download) driven by playwright-core.
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] no Chromium at ${CHROMIUM_PATH:-/usr/bin/chromium}: install it (or set CHROMIUM_PATH) for the editor tests"
  fi
fi
if [ ! -d "$ROOT/harness/browser/node_modules/playwright-core" ] && command -v npm >/dev/null 2>&1; then
  echo "[setup] installing playwright-core for the editor tests"
  (cd "$ROOT/harness/browser" && npm ci --silent --no-audit --no-fund)
fi
