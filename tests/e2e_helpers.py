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
# outputs, same widget), installed into the test server only.  The Flux and SD3.5 workflows' loaders become the tiny
# Flux / SD3 stand-ins (harness/tiny_dit.py) the same way, one for one.  Everything after the loaders runs as shipped.
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
TINY_SDXL_LOADER = "TinySDXLCheckpointLoader"
STAND_INS = {("CheckpointLoaderSimple", SDXL_CHECKPOINT): TINY_SDXL_LOADER,
             ("CheckpointLoaderSimple", "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"): "TinySD3CheckpointLoader",
             ("UNETLoader", "flux1-dev.safetensors"): "TinyFluxUNETLoader",
             ("DualCLIPLoader", "clip_l.safetensors"): "TinyFluxDualCLIPLoader",
             ("VAELoader", "ae.safetensors"): "TinyVAE16Loader"}


def is_sd(path: str) -> bool:
    from harness.thumbnails import is_sd as is_sd_name

    return is_sd_name(os.path.basename(path))


def overrides_for(path: str) -> dict:
    sd = SD_TEST_OVERRIDES if is_sd(path) else {}
    return {**sd, **CLIP_TEST_OVERRIDES}


def with_tiny_stand_ins(ui: dict) -> dict:
    """A copy of a UI workflow whose SDXL, SD3.5 and Flux loaders are the tiny stand-ins (``STAND_INS``, above),
    matched by node type and first widget value."""
    ui = json.loads(json.dumps(ui))
    for node in ui["nodes"]:
        stand_in = STAND_INS.get((node["type"], (node.get("widgets_values") or [None])[0]))
        if stand_in:
            node["type"] = stand_in
            node.get("properties", {})["Node name for S&R"] = stand_in
            for slot in node.get("inputs", []):
                if "widget" in slot:
                    slot["type"] = "STRING"
    return ui


def runnable_copy(path: str, folder: str) -> str:
    """``path`` itself, or for a workflow that loads SDXL, SD3.5 or Flux a copy in ``folder`` (same name) with the tiny
    stand-ins."""
    ui = json.load(open(path))
    swapped = with_tiny_stand_ins(ui)
    if swapped == ui:
        return path
    copy = os.path.join(folder, os.path.basename(path))
    with open(copy, "w") as f:
        json.dump(swapped, f)
    return copy


def load_prompt(path: str, object_info: dict, overrides: dict | None = None, new_widget_defaults: bool = False) -> dict:
    from harness.ui_to_api import ui_to_api

    prompt = ui_to_api(with_tiny_stand_ins(json.load(open(path))), object_info, new_widget_defaults)
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


def run_ok(comfy, prompt: dict) -> dict:
    """Run ``prompt``; its history entry, which must say success (else the error and the server log's tail)."""
    from harness.server import error_message

    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    return entry


def saved_images(comfy, entry: dict, prompt: dict, prefix_end: str) -> list:
    """The images of the SaveImage whose filename_prefix ends with ``prefix_end``, as arrays (``png``)."""
    node = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage"
                and n["inputs"]["filename_prefix"].endswith(prefix_end))
    return [png(b) for b in comfy.images(entry, node)]


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


def node(class_type: str, **inputs) -> dict:
    """One node of an API prompt."""
    return {"class_type": class_type, "inputs": inputs}


def save_decoded(prompt: dict, name: str, samples: list, prefix: str, vae: tuple = ("ckpt", 2)) -> None:
    """Add to ``prompt`` a VAEDecode of ``samples`` ('decode_<name>') and a SaveImage of it ('save_<name>') under
    the filename ``prefix``."""
    prompt[f"decode_{name}"] = node("VAEDecode", samples=samples, vae=list(vae))
    prompt[f"save_{name}"] = node("SaveImage", images=[f"decode_{name}", 0], filename_prefix=prefix)


def tiny_flux_images(size: int, batch: int) -> dict:
    """The head of an API prompt on the tiny Flux (TinyFluxCheckpointLoader): its text conditioning under FluxGuidance
    ('guided'), and ``batch`` latents of ``size`` pixels generated by euler in 4 steps ('images')."""
    return {
        "ckpt": node("TinyFluxCheckpointLoader", ckpt_name="stand-in"),
        "text": node("CLIPTextEncode", text="a lighthouse at dusk", clip=["ckpt", 1]),
        "guided": node("FluxGuidance", conditioning=["text", 0], guidance=3.5),
        "guider": node("BasicGuider", model=["ckpt", 0], conditioning=["guided", 0]),
        "latent": node("EmptySD3LatentImage", width=size, height=size, batch_size=batch),
        "sigmas": node("BasicScheduler", model=["ckpt", 0], scheduler="simple", steps=4, denoise=1.0),
        "euler": node("KSamplerSelect", sampler_name="euler"),
        "noise": node("RandomNoise", noise_seed=1),
        "images": node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["euler", 0],
                       sigmas=["sigmas", 0], latent_image=["latent", 0]),
    }
