"""Regenerate the UI workflow files (and their .jpg thumbnails) from workflows/api/ in the real editor.

Starts a headless ComfyUI with this pack and the tiny test models, then runs `editor.js export` against it.
Usage: python -m harness.export_workflows   (after `source scripts/setup.sh`)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from harness.server import STATE, ComfyServer, prepare_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    base = tempfile.mkdtemp(prefix="hspace-export-")
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    try:
        return subprocess.run(["node", "harness/browser/editor.js", "export", str(server.port), "workflows/api", "workflows"],
                              cwd=ROOT).returncode
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
