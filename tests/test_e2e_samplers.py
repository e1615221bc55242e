"""End to end through the real server on the tiny SD checkpoint: the pack's SAMPLERs in SamplerCustomAdvanced graphs
equal the pack's own nodes on the DDIM grid, and run under other schedulers and guiders."""
import os

import pytest
import torch
from safetensors.torch import load_file

from harness.server import error_message

pytestmark = pytest.mark.e2e
STEPS, SIZE, CFG = 10, 64, 7.5


def _latents(comfy, entry, node_id):
    files = entry["outputs"][node_id]["latents"]
    return torch.cat([load_file(os.path.join(comfy.base, "output", f["subfolder"], f["filename"]))["latent_tensor"]
                      for f in files])


def relative(a, b):
    """max |a − b| / max |b|: float32 agreement on latents of any scale (as tests/test_comfy_one_call.py)."""
    return float((a - b).abs().max() / b.abs().max())


def _save(prompt, node_id, samples):
    prompt[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": f"e2e/s{node_id}"}}


def _custom(noise, guider, sampler, sigmas, latent):
    return {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": noise, "guider": guider, "sampler": sampler,
                                                              "sigmas": sigmas, "latent_image": latent}}


def _asyrp_sampler(strength, window="t_edit"):
    return {"class_type": "HSpaceAsyrpSampler", "inputs": {
        "direction": ["30", 0], "strength": strength, "window": window, "t_edit": 400, "start_percent": 0.0,
        "end_percent": 0.6, "seed": 0, "edit_branches": "cond", "allow_other_model": False}}


def _injection_sampler(**window):
    inputs = {"content": ["21", 1], "gamma": 0.6, "gamma_end": -1.0, "stride": 1, "window": "t_edit", "t_edit": 400,
              "start_percent": 0.0, "end_percent": 0.6, "mode": "slerp", "per_channel": False, "seed": 0,
              "edit_branches": "cond"}
    return {"class_type": "HSpaceContentInjectionSampler", "inputs": {**inputs, **window}}


def _slerp_inject(**window):
    inputs = {"model": ["1", 0], "style_x_T": ["20", 0], "content": ["21", 1], "gamma": 0.6, "gamma_end": -1.0,
              "stride": 1, "steps": STEPS, "t_edit": 400, "mode": "slerp", "per_channel": False, "seed": 0, "cfg": CFG,
              "edit_branches": "cond", "gamma_sweep": "", "positive": ["2", 0], "negative": ["3", 0]}
    return {"class_type": "HSpaceSlerpContentInject", "inputs": {**inputs, **window}}


# a percent window that leaves out the first steps, with a γ ramp: the ramp ends at the window's lowest edited step
PERCENT_RAMP = {"window": "percent", "start_percent": 0.2, "end_percent": 0.7, "gamma": 0.2, "gamma_end": 0.9}


def _inversion(image):
    return {"class_type": "HSpaceDDIMInversion", "inputs": {
        "model": ["1", 0], "image": image, "vae": ["1", 2], "steps": STEPS, "refine_iters": 0, "cfg": 1.0,
        "edit_branches": "cond", "positive": ["2", 0], "convention": "seed", "h_source": "inversion",
        "site": "middle", "h_storage": "model's precision on CPU", "keep_h_from_t": 0}}


def _image(node_id, name):
    return {node_id: {"class_type": "LoadImage", "inputs": {"image": name}},
            f"{node_id}s": {"class_type": "ImageScale", "inputs": {"image": [node_id, 0], "upscale_method": "bicubic",
                                                                   "width": SIZE, "height": SIZE, "crop": "disabled"}}}


def _prompt():
    p = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
         "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a simple flat illustration of a shape", "clip": ["1", 1]}},
         "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
         **_image("10", "hspace_content.png"), **_image("11", "hspace_circle_1.png"), **_image("12", "hspace_square_1.png"),
         "13": {"class_type": "VAEEncode", "inputs": {"pixels": ["10s", 0], "vae": ["1", 2]}},
         "20": _inversion(["10s", 0]), "21": _inversion(["11s", 0]), "22": _inversion(["12s", 0]),
         "30": {"class_type": "HSpaceDirectionFromExamples", "inputs": {"positive": ["21", 1], "negative": ["22", 1],
                                                                         "form": "global", "name": "circle"}},
         # the pack's own edit
         "31": {"class_type": "HSpaceAsyrpEdit", "inputs": {
             "model": ["1", 0], "x_T": ["20", 0], "direction": ["30", 0], "strength": 1.0, "steps": STEPS, "t_edit": 400,
             "strength_sweep": "", "seed": 0, "cfg": CFG, "edit_branches": "cond", "positive": ["2", 0],
             "negative": ["3", 0], "allow_other_model": False}},
         # the native path: x_T → NOISE + DDIM SIGMAS, CFGGuider, the H-Space Asyrp Sampler
         "40": {"class_type": "HSpaceXTToNative", "inputs": {"model": ["1", 0], "x_T": ["20", 0], "steps": STEPS}},
         "41": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                      "cfg": CFG}},
         "42": _asyrp_sampler(1.0),
         "43": _custom(["40", 0], ["41", 0], ["42", 0], ["40", 1], ["20", 0]),
         # karras: strength 0 is euler; strength 1 (percent window) edits
         "50": {"class_type": "KarrasScheduler", "inputs": {"steps": STEPS, "sigma_max": 14.6, "sigma_min": 0.03,
                                                            "rho": 7.0}},
         "51": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
         "52": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
         "53": _asyrp_sampler(0.0, "percent"), "54": _asyrp_sampler(1.0, "percent"),
         "55": _custom(["51", 0], ["41", 0], ["52", 0], ["50", 0], ["13", 0]),
         "56": _custom(["51", 0], ["41", 0], ["53", 0], ["50", 0], ["13", 0]),
         "57": _custom(["51", 0], ["41", 0], ["54", 0], ["50", 0], ["13", 0]),
         # another guider
         "60": {"class_type": "DualCFGGuider", "inputs": {"model": ["1", 0], "cond1": ["2", 0], "cond2": ["3", 0],
                                                          "negative": ["3", 0], "cfg_conds": 5.0,
                                                          "cfg_cond2_negative": 2.0, "style": "regular"}},
         "61": _custom(["40", 0], ["60", 0], ["42", 0], ["40", 1], ["20", 0]),
         # PerpNegGuider: three conds in one batch (positive, negative, empty), its own combination
         "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
         "62": {"class_type": "PerpNegGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                          "empty_conditioning": ["4", 0], "cfg": CFG, "neg_scale": 1.0}},
         "63": _custom(["40", 0], ["62", 0], ["42", 0], ["40", 1], ["20", 0]),
         "64": _custom(["51", 0], ["62", 0], ["52", 0], ["50", 0], ["13", 0]),
         "65": _custom(["51", 0], ["62", 0], ["53", 0], ["50", 0], ["13", 0]),
         # inversion as a SAMPLER on the flipped DDIM sigmas
         "70": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["40", 1]}},
         "71": {"class_type": "DisableNoise", "inputs": {}},
         "72": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}},
         "73": {"class_type": "HSpaceInversionSampler", "inputs": {"refine_iters": 0, "site": "middle"}},
         "74": _custom(["71", 0], ["72", 0], ["73", 0], ["70", 0], ["13", 0]),
         "75": {"class_type": "HSpaceInvertedXT", "inputs": {"model": ["1", 0], "latent": ["74", 0],
                                                             "inversion": ["73", 1]}},
         # content injection: the pack's node and the sampler, on the DDIM grid
         "90": _slerp_inject(), "91": _injection_sampler(),
         "92": _custom(["40", 0], ["41", 0], ["91", 0], ["40", 1], ["20", 0]),
         "100": _slerp_inject(**PERCENT_RAMP), "101": _injection_sampler(**PERCENT_RAMP),
         "102": _custom(["40", 0], ["41", 0], ["101", 0], ["40", 1], ["20", 0]),
         "95": _asyrp_sampler(0.0), "96": _custom(["40", 0], ["41", 0], ["95", 0], ["40", 1], ["20", 0]),
         }
    for node_id, samples in {"88": ["90", 0], "89": ["92", 0], "97": ["96", 0], "80": ["31", 0], "81": ["43", 0], "82": ["55", 0], "83": ["56", 0], "84": ["57", 0],
                             "85": ["61", 0], "86": ["20", 0], "87": ["75", 0], "66": ["63", 0], "67": ["64", 0],
                             "68": ["65", 0], "103": ["100", 0], "104": ["102", 0]}.items():
        _save(p, node_id, samples)
    return p


@pytest.fixture(scope="module")
def run(comfy):
    entry = comfy.run(_prompt())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    return lambda node_id: _latents(comfy, entry, node_id)


def test_the_asyrp_sampler_under_cfg_guider_equals_asyrp_edit(run):
    pack, native = run("80"), run("81")
    assert pack.shape == native.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert relative(native, pack) < 1e-5, relative(native, pack)


def test_on_karras_sigmas_strength_zero_is_euler_and_strength_one_edits(run):
    euler, zero, one = run("82"), run("83"), run("84")
    assert torch.equal(zero, euler)  # operation for operation k-diffusion's Euler step
    assert relative(one, euler) > 1e-3


def test_a_dual_cfg_guider_runs_the_pack_sampler(run):
    dual, single = run("85"), run("81")
    assert torch.isfinite(dual).all() and (dual - single).abs().max() > 1e-3


def test_a_perp_neg_guider_runs_the_pack_sampler(run):
    """PerpNegGuider batches positive, negative and empty conds and combines them itself: the pack's sampler edits
    under it (not CFGGuider's result), and at strength 0 it is ComfyUI's euler under the same guider."""
    perp, cfg = run("66"), run("81")
    assert torch.isfinite(perp).all() and relative(perp, cfg) > 1e-3, relative(perp, cfg)
    euler, zero = run("67"), run("68")
    assert relative(zero, euler) < 1e-5, relative(zero, euler)
    assert relative(euler, run("82")) > 1e-3  # PerpNeg's euler is not CFGGuider's: the guider's combination ran


def test_the_inversion_sampler_equals_ddim_inversion(run):
    pack, native = run("86"), run("87")
    assert relative(native, pack) < 1e-5, relative(native, pack)


def test_the_injection_sampler_equals_slerp_content_inject(run):
    pack, native, plain = run("88"), run("89"), run("97")
    assert relative(native, pack) < 1e-5, relative(native, pack)
    assert relative(pack, plain) > 1e-3  # the injection changed the style image's reconstruction


def test_in_a_percent_window_with_a_gamma_ramp_the_injection_sampler_equals_slerp_content_inject(run):
    pack, native = run("103"), run("104")
    assert relative(native, pack) < 1e-5, relative(native, pack)
    assert relative(pack, run("88")) > 1e-3  # the window and the ramp changed the mix


def test_a_trajectory_from_other_sigmas_is_refused_naming_the_sigmas(comfy):
    prompt = {k: v for k, v in _prompt().items() if k in ("1", "2", "3", "10", "10s", "11", "11s", "13", "20", "21",
                                                          "41", "50", "51", "91")}
    prompt["93"] = _custom(["51", 0], ["41", 0], ["91", 0], ["50", 0], ["13", 0])  # karras sigmas, DDIM-grid content
    _save(prompt, "94", ["93", 0])
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "H-Space Content Injection Sampler" in message and "sigmas the content was captured on" in message, message
