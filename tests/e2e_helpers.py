"""Shared by the end-to-end tests: one real ComfyUI server per test session, workflow loading with test sizes."""
from __future__ import annotations

import glob
import io
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))

# What the tests change in the shipped workflows: SD images at 64 px (the tiny checkpoint stands in for SD1.5)
# and fewer steps for SD; pixel workflows run as shipped on the bundled model.
# StyleID's layer presets name real SD1.5 / SDXL layers; the tiny checkpoints have two decoder attention layers.
SD_TEST_OVERRIDES = {"width": 64, "height": 64, "steps": 8, "attention_layers": "custom", "custom_layers": "all"}
# CLIP direction training runs on the tiny open_clip that harness/tiny_models.py writes into models/open_clip
# (no download here); the shipped file asks for ViT-B-16 / openai.
CLIP_TEST_OVERRIDES = {"clip_model": "hspace-tiny-clip", "clip_pretrained": "hspace-tiny-clip.safetensors"}


# ComfyUI's checkpoint detection needs a full-size SDXL (the smallest SDXL-family match has 780 M parameters), so the
# tests run the SDXL workflow on the tiny SDXL harness/tiny_sdxl.py builds with ComfyUI's own classes: its
# CheckpointLoaderSimple becomes the harness-only TinySDXLCheckpointLoader (harness/comfy_nodes; same MODEL / CLIP / VAE
# outputs, same widget), installed into the test server only.  Everything after the loader runs as shipped.
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
TINY_SDXL_LOADER = "TinySDXLCheckpointLoader"


def is_sd(path: str) -> bool:
    from harness.thumbnails import is_sd as is_sd_name

    return is_sd_name(os.path.basename(path))


def overrides_for(path: str) -> dict:
    sd = SD_TEST_OVERRIDES if is_sd(path) else {}
    return {**sd, **CLIP_TEST_OVERRIDES}


def with_tiny_sdxl_ui(ui: dict) -> dict:
    """A copy of a UI workflow whose SDXL CheckpointLoaderSimple is the tiny SDXL stand-in (see above)."""
    ui = json.loads(json.dumps(ui))
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple" and node.get("widgets_values") == [SDXL_CHECKPOINT]:
            node["type"] = TINY_SDXL_LOADER
            node.get("properties", {})["Node name for S&R"] = TINY_SDXL_LOADER
            for slot in node.get("inputs", []):
                if slot["name"] == "ckpt_name":
                    slot["type"] = "STRING"
    return ui


def runnable_copy(path: str, folder: str) -> str:
    """``path`` itself, or for a workflow that loads SDXL a copy in ``folder`` (same name) with the tiny stand-in."""
    ui = json.load(open(path))
    swapped = with_tiny_sdxl_ui(ui)
    if swapped == ui:
        return path
    copy = os.path.join(folder, os.path.basename(path))
    with open(copy, "w") as f:
        json.dump(swapped, f)
    return copy


def load_prompt(path: str, object_info: dict, overrides: dict | None = None, new_widget_defaults: bool = False) -> dict:
    from harness.ui_to_api import ui_to_api

    prompt = ui_to_api(with_tiny_sdxl_ui(json.load(open(path))), object_info, new_widget_defaults)
    if overrides is None:
        overrides = overrides_for(path)
    for node in prompt.values():
        for key, value in overrides.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return prompt


def fresh(comfy) -> None:
    """Empty ComfyUI's node cache so the next prompt really executes.

    The server applies POST /free only after it finishes a queue item (or after an idle timeout of up to 10 s), so
    a tiny prompt is run right after it: by the time the next prompt is taken from the queue the cache is empty.
    """
    comfy.post("/free", {"unload_models": True, "free_memory": True})
    comfy.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})


def find(prompt: dict, class_type: str, **inputs) -> str:
    for node_id, node in prompt.items():
        if node["class_type"] == class_type and all(node["inputs"].get(k) == v for k, v in inputs.items()):
            return node_id
    raise KeyError(f"no {class_type} with {inputs}")


def png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def expect_node_error(comfy, prompt: dict, *phrases: str) -> None:
    """The prompt fails, refused by validation or by a node, with a message holding every phrase; the server keeps
    serving."""
    from harness.server import PromptRejected, error_message

    try:
        entry = comfy.run(prompt)
    except PromptRejected as rejected:  # caught by validation, before running
        message = json.dumps(rejected.body)
    else:
        assert entry["status"]["status_str"] == "error"
        message = error_message(entry)
    for phrase in phrases:
        assert phrase in message, message
    assert comfy.get("/system_stats")["system"]
