"""Guided inversion and grids as data through a real ComfyUI server (tiny SD1-shaped checkpoint: its prompts are
random, so only exactness and plumbing are measured here; tests/test_guided_inversion.py measures quality)."""
import copy

import numpy as np
import pytest

from e2e_helpers import png
from harness.server import error_message

pytestmark = pytest.mark.e2e

STEPS = 6


def _node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def graph(cfg: float, cfg_inversion: str, **edit) -> dict:
    """Invert one 64-px image on the tiny SD model at ``cfg``; show the PSNR, save the reconstruction and an edit at
    strength 0 (same cfg) from the x_T, along a direction from it and a second image (identical examples are refused)."""
    g = {
        "ckpt": _node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors"),
        "pos": _node("CLIPTextEncode", text="a red circle", clip=["ckpt", 1]),
        "neg": _node("CLIPTextEncode", text="blurry", clip=["ckpt", 1]),
        "img": _node("LoadImage", image="hspace_content.png"),
        "small": _node("ImageScale", image=["img", 0], upscale_method="bicubic", width=64, height=64, crop="disabled"),
        "inv": _node("HSpaceDDIMInversion", model=["ckpt", 0], image=["small", 0], vae=["ckpt", 2], steps=STEPS,
                     refine_iters=0, cfg=cfg, edit_branches="cond", cfg_inversion=cfg_inversion, convention="seed",
                     h_source="inversion", positive=["pos", 0], negative=["neg", 0]),
        "img2": _node("LoadImage", image="hspace_style.png"),
        "small2": _node("ImageScale", image=["img2", 0], upscale_method="bicubic", width=64, height=64, crop="disabled"),
        "dir": _node("HSpaceDirectionFromExamples", positive=["inv", 1], negative=["inv2", 1], form="global", name="z"),
        "edit": _node("HSpaceAsyrpEdit", model=["ckpt", 0], x_T=["inv", 0], direction=["dir", 0], strength=0.0,
                      steps=STEPS, t_edit=400, strength_sweep="", seed=0, cfg=cfg, edit_branches="cond",
                      allow_other_model=False, positive=["pos", 0], negative=["neg", 0]),
        "show": _node("PreviewAny", source=["inv", 3]),
        "dec_r": _node("VAEDecode", samples=["inv", 2], vae=["ckpt", 2]),
        "dec_e": _node("VAEDecode", samples=["edit", 0], vae=["ckpt", 2]),
        "save_r": _node("SaveImage", images=["dec_r", 0], filename_prefix="guided/recon"),
        "save_e": _node("SaveImage", images=["dec_e", 0], filename_prefix="guided/edit"),
    }
    g["inv2"] = _node("HSpaceDDIMInversion", **{**g["inv"]["inputs"], "image": ["small2", 0]})  # the negative example
    g["edit"]["inputs"].update(edit)
    return g


def run(comfy, prompt):
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    psnr = float(entry["outputs"]["show"]["text"][0])
    return psnr, png(comfy.images(entry, "save_r")[0]), png(comfy.images(entry, "save_e")[0])


def test_negative_prompt_inversion_is_exact_at_any_cfg_and_null_text_flows_to_the_edit(comfy):
    at_one, recon_one, _ = run(comfy, graph(1.0, "plain"))
    npi, recon_npi, edit_npi = run(comfy, graph(7.5, "negative_prompt"))
    plain, _, _ = run(comfy, graph(7.5, "plain"))
    assert abs(npi - at_one) < 0.05, (npi, at_one)
    assert np.abs(recon_npi - recon_one).max() <= 1
    assert np.abs(edit_npi - recon_npi).max() <= 1  # the edit took the positive as its negative from x_T
    null, recon_null, edit_null = run(comfy, graph(7.5, "null_text"))
    assert np.abs(edit_null - recon_null).max() <= 1, "the null-text embeddings did not reach the edit"
    print(f"tiny SD, {STEPS} steps: cfg 1 {at_one:.2f} dB; cfg 7.5 plain {plain:.2f}, negative-prompt {npi:.2f}, "
          f"null-text {null:.2f} dB")


def test_a_grid_mismatch_is_refused_with_the_steps_to_set(comfy):
    prompt = graph(1.0, "plain", steps=STEPS + 2)
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    entry = comfy.wait(body["prompt_id"])
    message = error_message(entry)
    assert entry["status"]["status_str"] == "error"
    assert f"inverted at {STEPS} steps" in message and f"set steps to {STEPS}" in message, message
    inject = copy.deepcopy(graph(1.0, "plain"))
    inject["mix"] = _node("HSpaceSlerpContentInject", model=["ckpt", 0], style_x_T=["inv", 0], content=["inv", 1],
                          gamma=0.5, gamma_end=-1.0, stride=1, steps=STEPS + 4, t_edit=400, mode="slerp",
                          per_channel=False, seed=0, cfg=1.0, edit_branches="cond", positive=["pos", 0])
    inject["dec_m"] = _node("VAEDecode", samples=["mix", 0], vae=["ckpt", 2])
    inject["save_m"] = _node("SaveImage", images=["dec_m", 0], filename_prefix="guided/mix")
    status, body = comfy.post("/prompt", {"prompt": inject, "client_id": comfy.client_id})
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert f"set steps to {STEPS}" in error_message(entry), error_message(entry)
