"""The newest core's rules on a GPU (docs/compatibility.md, "Allocation graph and multi-GPU copies"), through a real
ComfyUI server with this pack: what the checks can reach depends on the ComfyUI it is given.

    HSPACE_COMFYUI=/path/to/ComfyUI python -m benchmarks.gpu_rules      # a CUDA machine (benchmarks/gpu.sh runs it)
    python -m benchmarks.gpu_rules --dry-run                            # the same on the CPU (--cpu server)

1. The blueprint "H-Space Invert and Reconstruct" on the bundled pixel U-Net and on the tiny SD1.5 checkpoint of the
   tests, once with ComfyUI's defaults and, where main.py has the flag, once with --disable-comfy-compiler: with the
   pack's h recorder and edits kept out of core's allocation graph, both give the same image.
2. Where core has the Select Model Device node (ComfyUI >= 0.33): the pixel loader's MODEL moved to the CPU, which on a
   GPU makes core call the loader's cached_patcher_init for a fresh copy ("cannot retarget" in the log when a loader
   has none); the reconstruction on the CPU matches the GPU's.
Prints one line per check and exits 1 if one fails.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from harness import blueprints
from harness.server import STATE, ComfyServer, comfy_dir, prepare_base

STEPS = 20


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _prompt(bp: dict, model: str, select_device: str | None) -> dict:
    """The reconstruction of hspace_content.png by the blueprint, on the pixel U-Net or the tiny SD checkpoint."""
    if model == "pixel":
        nodes = {"unet": {"class_type": "HSpaceLoadPixelUNet",
                          "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm", "repo_id": ""}},
                 "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}}}
        model_out, vae_out, extra = ["unet", 0], ["vae", 0], {}
    else:
        nodes = {"ckpt": {"class_type": "CheckpointLoaderSimple",
                          "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},  # the tests' tiny SD1.5
                 "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a photo"}}}
        model_out, vae_out, extra = ["ckpt", 0], ["ckpt", 2], {"positive": ["text", 0]}
    if select_device:
        nodes["device"] = {"class_type": "SelectModelDevice", "inputs": {"model": model_out, "device": select_device}}
        model_out = ["device", 0]
    nodes.update({
        "image": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "recon": {"class_type": blueprints.subgraph_id(bp),
                  "inputs": {**blueprints.knobs_of(bp), "steps": STEPS, "model": model_out, "vae": vae_out, "image": ["image", 0], **extra}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["recon", 0]}}})
    return nodes


def _run(base: str, flags: list[str], runs: list, cpu: bool) -> dict:
    server = ComfyServer(base, os.path.join(base, f"server{len(flags)}.log"), extra_args=flags, cpu=cpu).start()
    try:
        bp = json.load(open(os.path.join(blueprints.FOLDER, "H-Space Invert and Reconstruct.json")))
        out = {}
        for model, device in runs:
            if device and "SelectModelDevice" not in server.get("/object_info"):
                out[(model, device)] = None
                continue
            prompt = blueprints.expand(_prompt(bp, model, device), [bp], server.get("/object_info"))
            entry = server.run(prompt, timeout=1800)
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"{model} {flags}: {entry['status']}")
            out[(model, device)] = _png(server.images(entry, "show")[0])
        out["log"] = open(server.log_path).read()
        return out
    finally:
        server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="a --cpu server (no GPU): the checks that apply there")
    args = p.parse_args(argv)
    base = tempfile.mkdtemp(prefix="hspace-gpu-rules-")
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    flags = subprocess.run([sys.executable, "main.py", "--help"], cwd=comfy_dir(), capture_output=True, text=True).stdout
    runs = [("pixel", None), ("sd", None), ("pixel", "cpu")]
    default = _run(base, [], runs, args.dry_run)
    ok = True
    if "--disable-comfy-compiler" in flags:
        off = _run(base, ["--disable-comfy-compiler"], runs[:2], args.dry_run)
        for model in ("pixel", "sd"):
            diff = int(np.abs(default[(model, None)] - off[(model, None)]).max())
            ok &= diff <= 1
            print(f"{model}: compiler on vs --disable-comfy-compiler: max difference {diff} (≤ 1 expected)")
    else:
        print("skipped: this ComfyUI's main.py has no --disable-comfy-compiler (no allocation graph to compare with)")
    moved = default[("pixel", "cpu")]
    if moved is None:
        print("skipped: this ComfyUI has no Select Model Device node (multi-GPU copies came with 0.33)")
    else:
        refused = "cannot retarget" in default["log"]
        diff = int(np.abs(moved - default[("pixel", None)]).max())
        ok &= not refused and diff <= 2
        print(f"pixel: Select Model Device 'cpu' {'refused (no cached_patcher_init)' if refused else 'accepted'}; "
              f"max difference to the default device {diff} (≤ 2 expected)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
