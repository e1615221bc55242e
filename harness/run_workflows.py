"""Run sample workflows (UI format, as the editor saves them) through a real ComfyUI and save their images.

    python -m harness.run_workflows workflows/pixel_content_injection.json ... --out outputs/demo [--figure PNG]

Starts ComfyUI headless on 127.0.0.1 with this pack (``HSPACE_COMFYUI`` picks your own install), converts each
workflow to an API prompt, queues it, waits, writes every SaveImage output to ``OUT/<workflow>/``, and ends with one
labelled contact sheet of the run, ``OUT/contact_sheet.png``: per workflow its input images, then each SaveImage's
images (reconstructions and results), upscaled so that 32-pixel images can be seen. ``--figure`` also copies the
sheet there (the README's figure: ``bash scripts/demo.sh outputs/demo --figure docs/figures/demo_contact_sheet.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from .contact_sheet import contact_sheet
from .server import REPO, ComfyServer, error_message, prepare_base
from .ui_to_api import ui_to_api

INPUTS = os.path.join(REPO, "workflows", "inputs")


def run_workflow(server: ComfyServer, prompt: dict, out_dir: str) -> list[tuple[str, list[bytes]]]:
    """Queue ``prompt``, write its SaveImage outputs as ``out_dir/<prefix>_<k>.png``; (prefix, PNGs) per node."""
    entry = server.run(prompt)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(error_message(entry))
    os.makedirs(out_dir, exist_ok=True)
    saved = []
    for node_id in entry["outputs"]:
        if prompt[node_id]["class_type"] != "SaveImage":
            continue
        label = save_label(prompt[node_id])
        images = server.images(entry, node_id)
        for k, image in enumerate(images):
            with open(os.path.join(out_dir, f"{label}_{k}.png"), "wb") as f:
                f.write(image)
        saved.append((label, images))
    return saved


def sheet_rows(prompt: dict, saved: list[tuple[str, list[bytes]]]) -> list[list[tuple[str, bytes | str]]]:
    """Contact-sheet rows of one workflow: its LoadImage inputs; its single images (reconstructions, results); then
    one row per batch (sweeps, frames), except a batch that a saved labelled grid already shows."""
    names = [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"]
    inputs = [(f"input {os.path.splitext(name)[0]}", os.path.join(INPUTS, name)) for name in names]
    singles = [(label, images[0]) for label, images in saved if len(images) == 1]
    shown = in_saved_grids(prompt)
    batches = [[(f"{label} {k}", image) for k, image in enumerate(images)] for label, images in saved
               if len(images) > 1 and label not in shown]
    return [inputs, singles, *batches]


def save_label(node: dict) -> str:
    """The name a SaveImage node's files get in OUT/<workflow>/ (the last part of its filename_prefix)."""
    return node["inputs"]["filename_prefix"].split("/")[-1]


def in_saved_grids(prompt: dict) -> set[str]:
    """Labels of the SaveImage nodes whose batch is also the input of a saved H-Space Label Sweep Grid (the sheet
    shows that batch once, as the labelled grid)."""
    saves = [node for node in prompt.values() if node["class_type"] == "SaveImage"]
    saved_sources = {tuple(node["inputs"]["images"]) for node in saves}
    gridded = {tuple(node["inputs"]["images"]) for node_id, node in prompt.items()
               if node["class_type"] == "HSpaceLabelSweepGrid" and (node_id, 0) in saved_sources}
    return {save_label(node) for node in saves if tuple(node["inputs"]["images"]) in gridded}


WEIGHT_FILES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


def missing_weights(prompt: dict, object_info: dict) -> list[str]:
    """The weight files ``prompt``'s loaders name that this ComfyUI does not list ("Node.input: file"): the Flux,
    SD3.5 and SD workflows on a ComfyUI without those checkpoints (the demo's own, which has only the bundled model)."""
    missing = []
    for node in prompt.values():
        spec = object_info.get(node["class_type"], {}).get("input", {})
        for name, value in node["inputs"].items():
            options = (spec.get("required", {}).get(name) or spec.get("optional", {}).get(name) or [None])[0]
            if isinstance(value, str) and value.endswith(WEIGHT_FILES) and isinstance(options, list) and value not in options:
                missing.append(f"{node['class_type']}.{name}: {value}")
    return missing


def run_all(server: ComfyServer, paths: list[str], out: str) -> tuple[str, int]:
    """Run every workflow on ``server``, write the images and the contact sheet; (sheet path, failures). A workflow
    whose weights this ComfyUI lacks (``missing_weights``) is skipped with a line saying which, not failed."""
    info, sections, failures = server.get("/object_info"), [], 0
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        prompt = ui_to_api(json.load(open(path)), info)
        missing = missing_weights(prompt, info)
        if missing:
            print(f"{name}: skipped: this ComfyUI has no {', '.join(missing)} (docs/guide.md names the files)",
                  flush=True)
            continue
        t0 = time.time()
        try:
            saved = run_workflow(server, prompt, os.path.join(out, name))
        except RuntimeError as e:
            failures += 1
            print(f"{name}: FAILED: {e}", flush=True)
            sections.append((f"{name}: FAILED", sheet_rows(prompt, [])))
            continue
        print(f"{name}: {sum(len(i) for _, i in saved)} images in {time.time() - t0:.1f} s -> {os.path.join(out, name)}",
              flush=True)
        sections.append((name, sheet_rows(prompt, saved)))
    sheet = os.path.join(out, "contact_sheet.png")
    contact_sheet(sections).save(sheet)
    return sheet, failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflows", nargs="+")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--figure", help="also copy the contact sheet to this path (only when every workflow succeeded)")
    args = p.parse_args(argv)
    base = tempfile.mkdtemp(prefix="hspace-demo-")
    prepare_base(base)
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    try:
        sheet, failures = run_all(server, args.workflows, args.out)
    finally:
        server.stop()
    if args.figure and not failures:
        shutil.copyfile(sheet, args.figure)
        print(f"figure: {os.path.abspath(args.figure)}", flush=True)
    print(f"contact sheet: {os.path.abspath(sheet)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
