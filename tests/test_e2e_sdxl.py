"""End to end: the SDXL sample workflow through a real ComfyUI server over HTTP, on the tiny SDXL.

ComfyUI cannot detect a tiny SDXL checkpoint (its detection needs full-size SDXL weights), so the workflow's
CheckpointLoaderSimple is swapped for the harness-only TinySDXLCheckpointLoader (e2e_helpers.load_prompt), which returns
the MODEL / CLIP / VAE harness/tiny_sdxl.py builds with ComfyUI's own SDXL classes; the rest of the graph —
CLIPTextEncodeSDXL, inversion, injection with style calibration, decode and save — runs as shipped, at 64² and 8 steps.
"""
import json
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, SDXL_CHECKPOINT, TINY_SDXL_LOADER, find, load_prompt, png
from harness.server import error_message

pytestmark = pytest.mark.e2e
PATH = os.path.join(ROOT, "workflows", "sdxl_style_mixing.json")


def test_sdxl_style_mixing_runs_on_the_tiny_sdxl(comfy):
    shipped = json.load(open(os.path.join(ROOT, "workflows", "api", "sdxl_style_mixing.json")))
    assert shipped[find(shipped, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] == SDXL_CHECKPOINT
    assert shipped[find(shipped, "CLIPTextEncodeSDXL")]["inputs"]["target_width"] == 1024
    assert "HSpaceStyleCalibrate" in {n["class_type"] for n in shipped.values()}

    prompt = load_prompt(PATH, comfy.object_info)
    loader = find(prompt, TINY_SDXL_LOADER)
    assert shipped[loader] == {"class_type": "CheckpointLoaderSimple", "inputs": prompt[loader]["inputs"]}
    for node_id, node in shipped.items():  # the rest as shipped, at the test size and steps
        assert prompt[node_id]["class_type"] == node["class_type"] or node_id == loader
        changed = {key for key, value in node["inputs"].items() if prompt[node_id]["inputs"][key] != value}
        assert changed <= {"width", "height", "steps"}, (node_id, changed)
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    images = {}
    for node_id, node in prompt.items():
        if node["class_type"] == "SaveImage":
            (data,) = comfy.images(entry, node_id)
            images[node["inputs"]["filename_prefix"].split("/")[-1]] = png(data)
    assert images["sdxl_style_mix"].shape == images["sdxl_style_reconstruction"].shape == (64, 64, 3)
    assert np.abs(images["sdxl_style_mix"] - images["sdxl_style_reconstruction"]).mean() > 0.5
