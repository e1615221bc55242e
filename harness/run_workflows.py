"""Run sample workflows (UI format, as the editor saves them) through a real ComfyUI and save their images.

    python -m harness.run_workflows workflows/pixel_content_injection.json ... --out outputs/demo

Starts ComfyUI headless on 127.0.0.1 with this pack (``HSPACE_COMFYUI`` picks your own install), converts each
workflow to an API prompt, queues it, waits, and writes every SaveImage output to ``OUT/<workflow>/``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from .server import ComfyServer, error_message, prepare_base
from .ui_to_api import ui_to_api


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflows", nargs="+")
    p.add_argument("--out", default="outputs/demo")
    args = p.parse_args(argv)
    base = tempfile.mkdtemp(prefix="hspace-demo-")
    prepare_base(base)
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    failures = 0
    try:
        info = server.get("/object_info")
        for path in args.workflows:
            name = os.path.splitext(os.path.basename(path))[0]
            prompt = ui_to_api(json.load(open(path)), info)
            t0 = time.time()
            entry = server.run(prompt)
            if entry["status"]["status_str"] != "success":
                failures += 1
                print(f"{name}: FAILED: {error_message(entry)}", flush=True)
                continue
            out_dir = os.path.join(args.out, name)
            os.makedirs(out_dir, exist_ok=True)
            written = []
            for node_id, outputs in entry["outputs"].items():
                for k, image in enumerate(server.images(entry, node_id)):
                    label = prompt[node_id]["inputs"].get("filename_prefix", f"node{node_id}").split("/")[-1]
                    if prompt[node_id]["class_type"] != "SaveImage":
                        continue
                    target = os.path.join(out_dir, f"{label}_{k}.png")
                    with open(target, "wb") as f:
                        f.write(image)
                    written.append(target)
            print(f"{name}: {len(written)} images in {time.time() - t0:.1f} s -> {out_dir}", flush=True)
    finally:
        server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
