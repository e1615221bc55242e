"""End to end: the StyleID workflows through a real ComfyUI server on the tiny SD and tiny SDXL checkpoints.

The shipped graphs ask for the layers of real SD1.5 (output blocks 7–11) and SDXL (3–5); the tiny checkpoints have
two decoder attention layers, so the tests set attention_layers to custom 'all' (SD_TEST_OVERRIDES), as they set
the image size and steps."""
import json
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, SDXL_CHECKPOINT, TINY_SDXL_LOADER, expect_node_error, find, overrides_for, png
from harness.server import error_message

pytestmark = pytest.mark.e2e
WORKFLOWS = {name: os.path.join(ROOT, "workflows", "api", f"{name}.json")
             for name in ("sd_styleid", "sd_styleid_plus_hspace", "sdxl_styleid")}


def load_prompt(path, object_info=None):
    """The API graph at the test size and steps, SDXL's loader swapped for the tiny SDXL stand-in."""
    prompt = json.load(open(path))
    overrides = overrides_for(path.replace(os.sep + "api", ""))
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple" and node["inputs"]["ckpt_name"] == SDXL_CHECKPOINT:
            node["class_type"] = TINY_SDXL_LOADER
        for key, value in overrides.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return prompt


def _saved(comfy, entry, prompt, suffix):
    node = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage"
                and n["inputs"]["filename_prefix"].endswith(suffix))
    return [png(b) for b in comfy.images(entry, node)]


def _run(comfy, prompt):
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    return entry


def _with_reconstruction(prompt):
    """The graph plus the content photo's plain reconstruction (DDIM Inversion, same steps) saved beside it."""
    features = prompt[find(prompt, "HSpaceStyleIDFeatures", role="content (Q)")]["inputs"]
    prompt["90"] = {"class_type": "HSpaceDDIMInversion", "inputs": {
        "model": ["1", 0], "image": features["image"], "vae": features["vae"], "steps": features["steps"],
        "refine_iters": 0, "cfg": 1.0, "edit_branches": "cond", "positive": features["positive"]}}
    prompt["91"] = {"class_type": "VAEDecode", "inputs": {"samples": ["90", 2], "vae": ["1", 2]}}
    prompt["92"] = {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "hspace/recon"}}
    return prompt


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_styleid_workflows_differ_from_the_reconstruction_and_from_each_other(comfy, name):
    prompt = _with_reconstruction(load_prompt(WORKFLOWS[name], comfy.object_info))
    entry = _run(comfy, prompt)
    out = _saved(comfy, entry, prompt, f"/{name}")
    recon = _saved(comfy, entry, prompt, "/recon")[0]
    inject = prompt[find(prompt, "HSpaceStyleIDInject")]["inputs"]
    runs = len(inject["gamma_sweep"].split(",")) * max(1, len(inject["gamma_h_sweep"].split(",")))
    assert len(out) == runs and all(img.shape == (64, 64, 3) for img in out)
    for k, img in enumerate(out):
        assert np.abs(img - recon).mean() > 0.5, k
        assert all(np.abs(img - other).mean() > 0.1 for other in out[k + 1:]), k
    grid = _saved(comfy, entry, prompt, f"{name}_grid")[0]
    assert grid.shape[0] > 64 and grid.shape[1] > 64 * len(inject["gamma_sweep"].split(","))
    if name == "sd_styleid":  # the combined mode is another picture than StyleID alone
        combined = load_prompt(WORKFLOWS["sd_styleid_plus_hspace"], comfy.object_info)
        other = _saved(comfy, _run(comfy, combined), combined, "/sd_styleid_plus_hspace")
        assert all(np.abs(a - b).mean() > 0.5 for a in out for b in other)


def test_shipped_graphs_use_the_presets_of_their_model(comfy):
    for name, preset in (("sd_styleid", "StyleID SD1.x"), ("sdxl_styleid", "SDXL")):
        shipped = json.load(open(os.path.join(ROOT, "workflows", "api", f"{name}.json")))
        for class_type in ("HSpaceStyleIDFeatures", "HSpaceStyleIDInject"):
            for node in shipped.values():
                if node["class_type"] == class_type:
                    assert node["inputs"]["attention_layers"] == preset, (name, class_type)
    sdxl = load_prompt(WORKFLOWS["sdxl_styleid"], comfy.object_info)
    assert sdxl[find(sdxl, TINY_SDXL_LOADER)]["inputs"]["ckpt_name"] == SDXL_CHECKPOINT


def test_bad_inputs_are_clear_node_errors(comfy):
    base = load_prompt(WORKFLOWS["sd_styleid"], comfy.object_info)
    inject = find(base, "HSpaceStyleIDInject")
    preset = json.loads(json.dumps(base))  # the SD1.5 preset on a U-Net without those layers
    for node in preset.values():
        if node["class_type"].startswith("HSpaceStyleID"):
            node["inputs"]["attention_layers"] = "StyleID SD1.x"
    expect_node_error(comfy, preset, "no decoder self-attention layer 7.0")
    other_layers = json.loads(json.dumps(base))  # features recorded at one layer, injected at both
    for node_id in (find(other_layers, "HSpaceStyleIDFeatures", role="style (K, V)"),):
        other_layers[node_id]["inputs"]["custom_layers"] = "0.0"
    expect_node_error(comfy, other_layers, "hold layers 0.0, not 1.0")
    other_grid = json.loads(json.dumps(base))
    other_grid[inject]["inputs"]["steps"] = 6
    expect_node_error(comfy, other_grid, "set steps to 8")
    wrong_role = json.loads(json.dumps(base))
    wrong_role[inject]["inputs"]["style_features"] = wrong_role[inject]["inputs"]["content_features"]
    expect_node_error(comfy, wrong_role, "record them with the other role")
    assert comfy.get("/system_stats")["system"]
