"""Regenerate the UI workflow files from workflows/api/ in the real editor, and their .jpg thumbnails.

Starts a headless ComfyUI with this pack and the tiny test models, runs `editor.js export` against it, then
harness.thumbnails: pixel workflows run on the bundled model and show their results, SD workflows a diagram.
Usage: python -m harness.export_workflows   (after `source scripts/setup.sh`)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from harness.server import STATE, ComfyServer, prepare_base
from harness.thumbnails import write_thumbnails

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    base = tempfile.mkdtemp(prefix="hspace-export-")
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    try:
        exported = subprocess.run(["node", "harness/browser/editor.js", "export", str(server.port), "workflows/api",
                                   "workflows"], cwd=ROOT).returncode
        if exported == 0:
            write_thumbnails(server, os.path.join(ROOT, "workflows", "api"), os.path.join(ROOT, "workflows"))
        return exported
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
