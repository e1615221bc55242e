"""The round trip of docs/batch.md through a real ComfyUI server: a folder → ``hspace pca`` → H-Space Load Direction →
H-Space Asyrp Edit gives the library's edit along the job's direction."""
import os
import shutil

import numpy as np
import pytest
import torch

import hspace_core as hs
from hspace_core.jobs import ImageSpec, cli, read_image
from harness.server import error_message

from e2e_helpers import png
from jobs_helpers import BUNDLED, STEPS, bundled, shape_folder

pytestmark = pytest.mark.e2e


def _node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def test_pca_job_direction_loads_and_edits_in_comfyui(comfy, tmp_path):
    folder = shape_folder(str(tmp_path / "shapes"), 6)
    out = str(tmp_path / "pca")
    assert cli.main(["pca", folder, "--model", BUNDLED, "--out", out, "--steps", str(STEPS), "--k", "1",
                     "--shard-size", "4", "--name", "jobs_e2e", "--no-progress"]) == 0
    made = os.path.join(out, "directions", "jobs_e2e-0.safetensors")
    os.makedirs(os.path.join(comfy.base, "models", "hspace_directions"), exist_ok=True)
    shutil.copy(made, os.path.join(comfy.base, "models", "hspace_directions", "jobs_e2e-0.safetensors"))
    shutil.copy(os.path.join(folder, "img02.png"), os.path.join(comfy.base, "input", "jobs_e2e.png"))
    common = {"cfg": 1.0, "edit_branches": "cond"}
    prompt = {
        "unet": _node("HSpaceLoadPixelUNet", unet_folder="bundled/hspace-shapes-ddpm", repo_id=""),
        "vae": _node("VAELoader", vae_name="pixel_space"),
        "image": _node("LoadImage", image="jobs_e2e.png"),
        "inv": _node("HSpaceDDIMInversion", model=["unet", 0], image=["image", 0], vae=["vae", 0], steps=STEPS,
                     refine_iters=0, **common),
        "dir": _node("HSpaceLoadDirection", direction_file="jobs_e2e-0.safetensors"),
        "edit": _node("HSpaceAsyrpEdit", model=["unet", 0], x_T=["inv", 0], direction=["dir", 0], strength=2.0,
                      steps=STEPS, t_edit=400, strength_sweep="", seed=0, **common),
        "decode": _node("VAEDecode", samples=["edit", 0], vae=["vae", 0]),
        "save": _node("SaveImage", images=["decode", 0], filename_prefix="jobs_e2e/edit"),
    }
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    node = png(comfy.images(entry, "save")[0]).astype(float)
    x = read_image(folder, "img02.png", ImageSpec((32, 32)))
    with torch.no_grad():
        x_T = hs.invert(bundled(), x, STEPS, report=False).x_T
        edited = hs.edit(bundled(), x_T, hs.Direction.load(made), 2.0, hs.EditSchedule(num_steps=STEPS, t_edit=400))
        plain = hs.edit(bundled(), x_T, hs.Direction.load(made), 0.0, hs.EditSchedule(num_steps=STEPS, t_edit=400))
    to_png = lambda t: (((t[0].permute(1, 2, 0).clamp(-1, 1) + 1) / 2).numpy() * 255).astype(float)
    # the node's σ-space loop is the library's to 1e-5 (tests/test_one_code_path.py); SaveImage truncates to 8 bits
    assert np.abs(node - np.floor(to_png(edited))).max() <= 1.0
    assert np.abs(to_png(edited) - to_png(plain)).mean() > 2.0  # the direction does move the image
