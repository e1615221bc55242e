"""End to end: x_T from DDIM Inversion drives ComfyUI's own samplers, and their LATENTs go back into the pack."""
import os

import numpy as np
import pytest

from e2e_helpers import ROOT, find, load_prompt, png
from harness.server import error_message

pytestmark = pytest.mark.e2e
STEPS = 20


def _run(comfy, prompt):
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    return entry


def _saved(comfy, entry, node_id):
    return [png(b).astype(float) for b in comfy.images(entry, node_id)]


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))


def _decode_and_save(prompt, node_id, samples, name):
    prompt[f"{node_id}d"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": ["2", 0]}}
    prompt[node_id] = {"class_type": "SaveImage", "inputs": {"images": [f"{node_id}d", 0], "filename_prefix": f"e2e/{name}"}}


def _base():
    return {
        "1": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm", "repo_id": ""}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "3": {"class_type": "HSpacePixelConditioning", "inputs": {}},
    }


def _ksampler_advanced(latent, add_noise, start_at_step=0):
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["1", 0], "add_noise": add_noise, "noise_seed": 0, "steps": STEPS, "cfg": 1.0, "sampler_name": "ddim",
        "scheduler": "simple", "positive": ["3", 0], "negative": ["3", 0], "latent_image": latent,
        "start_at_step": start_at_step, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}


def test_native_samplers_reconstruct_from_the_inverted_x_T(comfy):
    prompt = _base()
    prompt.update({
        "10": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "20": {"class_type": "HSpaceDDIMInversion", "inputs": {"model": ["1", 0], "image": ["10", 0], "vae": ["2", 0],
                                                               "steps": STEPS, "refine_iters": 1, "cfg": 1.0,
                                                               "edit_branches": "cond"}},
        "21": {"class_type": "HSpaceXTToNative", "inputs": {"model": ["1", 0], "x_T": ["20", 0], "steps": STEPS}},
        "22": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "23": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["3", 0]}},
        "24": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["21", 0], "guider": ["23", 0],
                                                                 "sampler": ["22", 0], "sigmas": ["21", 1],
                                                                 "latent_image": ["20", 0]}},
        "30": _ksampler_advanced(["21", 2], "disable"),
    })
    _decode_and_save(prompt, "40", ["20", 2], "pack_reconstruction")
    _decode_and_save(prompt, "41", ["24", 0], "custom_advanced_reconstruction")
    _decode_and_save(prompt, "42", ["30", 0], "ksampler_reconstruction")
    prompt["43"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "e2e/native_input"}}
    entry = _run(comfy, prompt)
    image = _saved(comfy, entry, "43")[0]
    outputs = {k: _saved(comfy, entry, k)[0] for k in ("40", "41", "42")}
    pack, custom, ksampler = (_psnr(outputs[k], image) for k in ("40", "41", "42"))
    assert pack > 20, pack
    assert abs(custom - pack) < 1.0, (custom, pack)
    assert np.abs(outputs["41"] - outputs["40"]).max() <= 1  # euler on the pack's sigmas is the pack's DDIM
    assert abs(ksampler - pack) < 1.0, (ksampler, pack)  # the 'simple' grid from σ_max is close to the pack's


def test_an_edit_is_finished_by_a_native_sampler(comfy):
    prompt = load_prompt(os.path.join(ROOT, "workflows", "pixel_asyrp_edit.json"), comfy.object_info)
    edit = find(prompt, "HSpaceAsyrpEdit")
    prompt.update({k: v for k, v in _base().items() if k == "3"})
    prompt["80"] = _ksampler_advanced([edit, 0], "enable", start_at_step=STEPS - 4)
    _decode_and_save(prompt, "81", [edit, 0], "edit")
    _decode_and_save(prompt, "82", ["80", 0], "edit_finished")
    entry = _run(comfy, prompt)
    edits, finished = _saved(comfy, entry, "81"), _saved(comfy, entry, "82")
    assert len(finished) == len(edits) > 1
    for e, f in zip(edits, finished):
        assert np.abs(f - e).mean() < 12, np.abs(f - e).mean()


def test_a_ksampler_latent_is_inverted(comfy):
    """A pixel-space LATENT of the model's 32×32 (a mid-grey image through the pixel VAE, ≈ 0: the same on every
    ComfyUI; EmptyLatentImage's side depends on whether ComfyUI reads the latent format's downscale ratio), sampled
    from noise by KSampler, then inverted and reconstructed by the pack."""
    prompt = _base()
    prompt.update({
        "9": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x808080}},
        "10": {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["2", 0]}},
        "11": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": STEPS, "cfg": 1.0,
                                                    "sampler_name": "ddim", "scheduler": "simple", "positive": ["3", 0],
                                                    "negative": ["3", 0], "latent_image": ["10", 0], "denoise": 1.0}},
        "20": {"class_type": "HSpaceDDIMInversion", "inputs": {"model": ["1", 0], "latent": ["11", 0], "steps": STEPS,
                                                               "refine_iters": 1, "cfg": 1.0, "edit_branches": "cond"}},
    })
    _decode_and_save(prompt, "40", ["11", 0], "ksampler_sample")
    _decode_and_save(prompt, "41", ["20", 2], "ksampler_sample_reconstruction")
    entry = _run(comfy, prompt)
    sample, reconstruction = _saved(comfy, entry, "40")[0], _saved(comfy, entry, "41")[0]
    assert sample.shape == (32, 32, 3)
    assert _psnr(reconstruction, sample) > 25, _psnr(reconstruction, sample)


def test_native_sampling_from_x_T_on_a_latent_model(comfy):
    """The same on the SD1-shaped test checkpoint: process_latent_in/out (×0.18215) and text conditioning."""
    prompt = load_prompt(os.path.join(ROOT, "workflows", "sd_style_mixing.json"), comfy.object_info)
    inversion = find(prompt, "HSpaceDDIMInversion", latent=[find(prompt, "KSampler"), 0])  # the painted style
    inputs = {**prompt[inversion]["inputs"], "vae": [find(prompt, "CheckpointLoaderSimple"), 2]}
    prompt.update({
        "80": {"class_type": "HSpaceXTToNative", "inputs": {"model": inputs["model"], "x_T": [inversion, 0],
                                                           "steps": inputs["steps"]}},
        "81": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "82": {"class_type": "BasicGuider", "inputs": {"model": inputs["model"], "conditioning": inputs["positive"]}},
        "83": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["80", 0], "guider": ["82", 0],
                                                                 "sampler": ["81", 0], "sigmas": ["80", 1],
                                                                 "latent_image": [inversion, 0]}},
        "84d": {"class_type": "VAEDecode", "inputs": {"samples": ["83", 0], "vae": inputs["vae"]}},
        "84": {"class_type": "SaveImage", "inputs": {"images": ["84d", 0], "filename_prefix": "e2e/sd_native"}},
    })
    entry = _run(comfy, prompt)
    pack = _saved(comfy, entry, find(prompt, "SaveImage", filename_prefix="hspace/sd_style_reconstruction"))[0]
    native = _saved(comfy, entry, "84")[0]
    assert np.abs(native - pack).max() <= 1  # the same DDIM, through ComfyUI's own sampler
