"""End to end on transformers (issue 38): tiny Flux and SD3 (harness/tiny_dit.py, served by the test-only
TinyFluxCheckpointLoader / TinySD3CheckpointLoader with ComfyUI's own text encoders and a 16-channel TAESD) through a
real ComfyUI server over HTTP.  One graph per family: two generated images are inverted with the H-Space Inversion
Sampler (SamplerCustomAdvanced on FlipSigmas, DisableNoise), H-Space Inverted x_T gives their x_T and h
trajectories at the transformer's default site, Direction from Examples takes Δh, and the H-Space Asyrp Sampler edits
the second image from its x_T: at strength 0 the image equals euler's reconstruction from that x_T, at strength 20 it
changes.  Refusals: DDIM Inversion's diffusers convention on a Flux MODEL.  The quality boost and style calibration
on Flux through the process nodes (issue 38 item 2).  H-Space DDIM Inversion → H-Space Interpolate on Flux and SD3
(cfg 3) in one prompt."""
import numpy as np
import pytest

from e2e_helpers import expect_node_error, png, save_decoded
from harness.server import error_message

pytestmark = pytest.mark.e2e
SIZE = 64  # pixels: an 8×8 latent, a 4×4 patch grid


def _graph(family: str) -> dict:
    loader = "TinyFluxCheckpointLoader" if family == "flux" else "TinySD3CheckpointLoader"
    g = {"ckpt": {"class_type": loader, "inputs": {"ckpt_name": "stand-in"}},
         "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["ckpt", 1]}},
         "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
         "full": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple", "steps": 4,
                                                             "denoise": 1.0}},
         # below σ = 1: a flow LATENT is handed on as x/(1 − σ) (docs/transformers.md)
         "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple",
                                                               "steps": 4, "denoise": 0.75}},
         "flipped": {"class_type": "FlipSigmas", "inputs": {"sigmas": ["sigmas", 0]}},
         "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
         "off": {"class_type": "DisableNoise", "inputs": {}}}
    if family == "flux":
        g["guided"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["text", 0], "guidance": 3.5}}
        g["guider"] = {"class_type": "BasicGuider", "inputs": {"model": ["ckpt", 0], "conditioning": ["guided", 0]}}
    else:
        g["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}
        g["guider"] = {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                                                             "negative": ["empty", 0], "cfg": 3.0}}
    for k in (1, 2):
        g[f"noise{k}"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": k}}
        g[f"image{k}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [f"noise{k}", 0], "guider": ["guider", 0], "sampler": ["euler", 0], "sigmas": ["full", 0],
            "latent_image": ["latent", 0]}}
        g[f"inverter{k}"] = {"class_type": "HSpaceInversionSampler", "inputs": {"refine_iters": 1}}
        g[f"inverted{k}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["off", 0], "guider": ["guider", 0], "sampler": [f"inverter{k}", 0], "sigmas": ["flipped", 0],
            "latent_image": [f"image{k}", 0]}}
        g[f"x_T{k}"] = {"class_type": "HSpaceInvertedXT", "inputs": {
            "model": ["ckpt", 0], "latent": [f"inverted{k}", 0], "inversion": [f"inverter{k}", 1]}}
    g["direction"] = {"class_type": "HSpaceDirectionFromExamples", "inputs": {
        "positive": ["x_T1", 1], "negative": ["x_T2", 1], "form": "per_timestep", "name": "one minus two"}}
    outputs = {"reconstruction": ["euler", 0]}
    for strength in (0.0, 20.0):
        name = f"asyrp{int(strength)}"
        g[name] = {"class_type": "HSpaceAsyrpSampler", "inputs": {
            "direction": ["direction", 0], "strength": strength, "window": "percent", "t_edit": 400,
            "start_percent": 0.0, "end_percent": 0.7, "seed": 0, "edit_branches": "cond", "allow_other_model": False}}
        outputs[name] = [name, 0]
    for name, sampler in outputs.items():
        g[f"run_{name}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["off", 0], "guider": ["guider", 0], "sampler": sampler, "sigmas": ["sigmas", 0],
            "latent_image": ["x_T2", 0]}}
        g[f"decode_{name}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"run_{name}", 0],
                                                                     "vae": ["ckpt", 2]}}
        g[f"save_{name}"] = {"class_type": "SaveImage", "inputs": {"images": [f"decode_{name}", 0],
                                                                   "filename_prefix": f"h6/{family}_{name}"}}
    return g


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_inversion_direction_and_asyrp_sampler_on_a_transformer(comfy, family):
    prompt = _graph(family)
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body  # ComfyUI runs the valid outputs of a partly bad graph
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    images = {name: png(comfy.images(entry, f"save_{name}")[0]) for name in ("reconstruction", "asyrp0", "asyrp20")}
    assert images["reconstruction"].shape == (SIZE, SIZE, 3)
    assert np.array_equal(images["asyrp0"], images["reconstruction"])  # strength 0 is euler
    assert np.abs(images["asyrp20"] - images["reconstruction"]).mean() > 0.5


def _with_defaults(comfy, node: dict) -> dict:
    """``node`` with every required widget it leaves out at its default (object_info), so a prompt is not cut to its
    valid outputs by validation."""
    spec = comfy.object_info[node["class_type"]]["input"]["required"]
    for name, (kind, *options) in spec.items():
        if name not in node["inputs"] and not (isinstance(kind, str) and kind.isupper() and kind not in
                                               ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")):
            node["inputs"][name] = options[0].get("default") if options and "default" in options[0] else (
                kind[0] if isinstance(kind, list) else options[0]["options"][0])
    return node


def test_refusals_on_a_transformer(comfy):
    prompt = _graph("flux")
    prompt["ddim"] = _with_defaults(comfy, {"class_type": "HSpaceDDIMInversion", "inputs": {
        "model": ["ckpt", 0], "latent": ["image1", 0], "positive": ["guided", 0], "convention": "diffusers"}})
    prompt["preview"] = {"class_type": "PreviewAny", "inputs": {"source": ["ddim", 0]}}
    expect_node_error(comfy, prompt, "H-Space DDIM Inversion", "convention 'diffusers'", "set convention to 'seed'")


def test_bfloat16_lane_on_flux(comfy):
    """Flux's native dtype through the server: the tiny Flux with its transformer in bfloat16
    (TinyFluxBF16CheckpointLoader) runs the Inversion Sampler, Inverted x_T, Direction from Examples, the Asyrp
    Sampler (strength 0 saves euler's reconstruction, strength 20 changes it) and the Content Injection Sampler
    (γ 1 of the first image's inverted h changes it); the reconstruction is not the float32 model's."""
    prompt = _graph("flux")
    prompt["ckpt"]["class_type"] = "TinyFluxBF16CheckpointLoader"
    prompt["inject"] = _with_defaults(comfy, {"class_type": "HSpaceContentInjectionSampler", "inputs": {
        "content": ["x_T1", 1], "gamma": 1.0, "window": "percent", "start_percent": 0.0, "end_percent": 0.7}})
    prompt["run_inject"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["off", 0], "guider": ["guider", 0], "sampler": ["inject", 0], "sigmas": ["sigmas", 0],
        "latent_image": ["x_T2", 0]}}
    prompt["decode_inject"] = {"class_type": "VAEDecode", "inputs": {"samples": ["run_inject", 0], "vae": ["ckpt", 2]}}
    prompt["save_inject"] = {"class_type": "SaveImage", "inputs": {"images": ["decode_inject", 0],
                                                                   "filename_prefix": "h6/flux_bf16_inject"}}
    # the same image from the float32 tiny Flux (same seeds), beside the bfloat16 one
    prompt["ckpt32"] = {"class_type": "TinyFluxCheckpointLoader", "inputs": {"ckpt_name": "stand-in"}}
    prompt["guider32"] = {"class_type": "BasicGuider", "inputs": {"model": ["ckpt32", 0], "conditioning": ["guided", 0]}}
    prompt["image32"] = {**prompt["image2"], "inputs": {**prompt["image2"]["inputs"], "guider": ["guider32", 0]}}
    for name, latent in (("bf16", "image2"), ("fp32", "image32")):
        prompt[f"decode_{name}"] = {"class_type": "VAEDecode", "inputs": {"samples": [latent, 0], "vae": ["ckpt", 2]}}
        prompt[f"save_{name}"] = {"class_type": "SaveImage", "inputs": {"images": [f"decode_{name}", 0],
                                                                        "filename_prefix": f"h6/flux_{name}"}}
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = node["inputs"]["filename_prefix"].replace("flux_", "flux_bf16_")
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    images = {name: png(comfy.images(entry, f"save_{name}")[0])
              for name in ("reconstruction", "asyrp0", "asyrp20", "inject", "bf16", "fp32")}
    assert np.array_equal(images["asyrp0"], images["reconstruction"])  # strength 0 is euler, in bfloat16 too
    assert np.abs(images["asyrp20"] - images["reconstruction"]).mean() > 0.5
    # measured here: the injection moves the PNG by 0.23 of 255 on average (Asyrp at strength 20: 3.2); the tiny
    # random Flux's attention output carries little of the image, so the bar is the measured change's half
    assert np.abs(images["inject"] - images["reconstruction"]).mean() > 0.1
    assert not np.array_equal(images["bf16"], images["fp32"])  # the lane's dtype took effect


def _process_graph(family: str) -> dict:
    """The process nodes on a transformer MODEL (issue 37 item 5, issue 38 item 5): Capture of two latents (the
    generated images, taken as x_T: only the plumbing is tested), Direction from Examples, H-Space Asyrp Edit at
    strengths 0 and 20 (a sweep) and Slerp Content Inject, each over ComfyUI's sampling of its DDIM grid; percent
    windows (a t_edit counts the steps of the model's own table, 10000 on Flux)."""
    g = _graph(family)
    for name in ("reconstruction", "asyrp0", "asyrp20"):  # the SAMPLER test's outputs: not run here
        del g[f"save_{name}"]
    conditioning = {"positive": ["guided" if family == "flux" else "text", 0]}
    if family == "sd3":
        conditioning["negative"] = ["empty", 0]
    cfg = 1.0 if family == "flux" else 3.0
    common = dict(conditioning, model=["ckpt", 0], steps=4, cfg=cfg, edit_branches="cond")
    window = dict(window="percent", start_percent=0.0, end_percent=0.7, t_edit=400)
    for k in (1, 2):
        g[f"capture{k}"] = {"class_type": "HSpaceCapture", "inputs": dict(common, x_T=[f"image{k}", 0])}
    g["captured_direction"] = {"class_type": "HSpaceDirectionFromExamples", "inputs": {
        "positive": ["capture1", 0], "negative": ["capture2", 0], "form": "per_timestep", "name": "one minus two"}}
    g["edit"] = {"class_type": "HSpaceAsyrpEdit", "inputs": dict(
        common, **window, x_T=["image2", 0], direction=["captured_direction", 0], strength=0.0, strength_sweep="0, 20",
        seed=0, allow_other_model=False)}
    g["inject"] = {"class_type": "HSpaceSlerpContentInject", "inputs": dict(
        common, **window, style_x_T=["image2", 0], content=["capture1", 0], gamma=1.0, gamma_end=-1.0, stride=1,
        mode="slerp", per_channel=False, seed=0)}
    for name, source in (("captured", ["capture2", 1]), ("edit", ["edit", 0]), ("inject", ["inject", 0])):
        save_decoded(g, name, source, f"h2/{family}_{name}")
    return g


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_capture_asyrp_edit_and_content_injection_nodes_on_a_transformer(comfy, family):
    """At strength 0 the edit is the capture's reconstruction (one process, one KSAMPLER; bit for bit in-process, up to
    the VAE's batch rounding in the PNG); strength 20 and the injection change it."""
    prompt = _process_graph(family)
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    captured = png(comfy.images(entry, "save_captured")[0])
    zero, twenty = map(png, comfy.images(entry, "save_edit"))
    injected = png(comfy.images(entry, "save_inject")[0])
    assert captured.shape == (SIZE, SIZE, 3)
    # the same latent: the VAE decodes the sweep's two as one batch, whose kernels round one pixel by a level (measured)
    diff = np.abs(zero - captured)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert np.abs(twenty - captured).mean() > 0.5
    # the tiny random Flux's image moves little with its attention output (measured 0.097 levels mean at γ = 1; 0 is
    # no injection): the test is that it moves
    assert np.abs(injected - captured).mean() > 0.03, np.abs(injected - captured).mean()


def _boost_calibration_graph() -> dict:
    """The process nodes on the tiny Flux with H-Space Quality Boost and H-Space Style Calibrate (issue 38 item 2):
    Capture of two latents at double.1 (its residual stream: the tiny random Flux's attention output carries too
    little of the image to measure a calibration in 8-bit levels), Direction from Examples; H-Space Asyrp Edit at
    strength 20 without a boost, with η = 0 and with η = 1 (6 steps, percent windows: edit 0–0.3, boost from 0.5:
    the grid steps at t = 3999 and 1999 are stochastic; a step to σ = 0 never is), and at
    strength 0 with η = 1; Slerp Content Inject (γ 1) without calibration and with ω = 0 / 0.3 / 1."""
    g = _graph("flux")
    for name in ("reconstruction", "asyrp0", "asyrp20"):  # the SAMPLER test's outputs: not run here
        del g[f"save_{name}"]
    common = dict(positive=["guided", 0], model=["ckpt", 0], steps=6, cfg=1.0, edit_branches="cond")
    window = dict(window="percent", start_percent=0.0, end_percent=0.3, t_edit=400)
    for k in (1, 2):
        g[f"capture{k}"] = {"class_type": "HSpaceCapture", "inputs": dict(common, x_T=[f"image{k}", 0], site="double.1")}
    g["direction"] = {"class_type": "HSpaceDirectionFromExamples", "inputs": {
        "positive": ["capture1", 0], "negative": ["capture2", 0], "form": "per_timestep", "name": "one minus two"}}
    for name, eta in (("eta1", 1.0), ("eta0", 0.0)):
        g[f"boost_{name}"] = {"class_type": "HSpaceQualityBoost", "inputs": {
            "t_boost": 200, "eta": eta, "seed": 5, "window": "percent", "boost_start_percent": 0.5}}
    outputs = {"captured": ["capture2", 1]}
    for name, strength, boost in (("edit", 20.0, None), ("edit_eta0", 20.0, "eta0"), ("edit_eta1", 20.0, "eta1"),
                                  ("edit0_eta1", 0.0, "eta1")):
        g[name] = {"class_type": "HSpaceAsyrpEdit", "inputs": dict(
            common, **window, x_T=["image2", 0], direction=["direction", 0], strength=strength, strength_sweep="",
            seed=0, allow_other_model=False)}
        if boost:
            g[name]["inputs"]["boost"] = [f"boost_{boost}", 0]
        outputs[name] = [name, 0]
    for name, omega in (("inject", None), ("inject_w0", 0.0), ("inject_w03", 0.3), ("inject_w1", 1.0)):
        g[name] = {"class_type": "HSpaceSlerpContentInject", "inputs": dict(
            common, **window, style_x_T=["image2", 0], content=["capture1", 0], gamma=1.0, gamma_end=-1.0, stride=1,
            mode="slerp", per_channel=False, seed=0)}
        if omega is not None:
            g[f"calibrate_{name}"] = {"class_type": "HSpaceStyleCalibrate", "inputs": {"omega": omega}}
            g[name]["inputs"]["calibration"] = [f"calibrate_{name}", 0]
        outputs[name] = [name, 0]
    for name, source in outputs.items():
        save_decoded(g, name, source, f"h4/flux_{name}")
    return g


def test_quality_boost_and_style_calibration_nodes_on_flux(comfy):
    """η = 0 is the unboosted edit and ω = 0 the uncalibrated injection, PNG for PNG; the boost (η = 1) changes the
    edit and the reconstruction; the mix moves back toward the style image's reconstruction as ω grows."""
    entry = comfy.run(_boost_calibration_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    names = ("captured", "edit", "edit_eta0", "edit_eta1", "edit0_eta1", "inject", "inject_w0", "inject_w03",
             "inject_w1")
    images = {name: png(comfy.images(entry, f"save_{name}")[0]) for name in names}
    change = {name: float(np.abs(images[name] - images["captured"]).mean()) for name in names}
    print("mean change from the reconstruction (8-bit levels):", {k: round(v, 3) for k, v in change.items()})
    assert np.array_equal(images["edit_eta0"], images["edit"])
    assert np.array_equal(images["inject_w0"], images["inject"])
    assert np.abs(images["edit_eta1"] - images["edit"]).mean() > 0.5
    assert change["edit0_eta1"] > 0.5
    assert change["inject"] > change["inject_w03"] > change["inject_w1"], change


_IMAGES = ("ckpt", "text", "empty", "latent", "full", "euler", "guided", "guider", "noise1", "noise2", "image1", "image2")


def _prefixed(g: dict, prefix: str) -> dict:
    """``g``'s nodes under ``prefix`` (their links too), so two families' graphs share one prompt."""
    def link(v):
        return [prefix + v[0], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in g else v

    return {prefix + k: {**node, "inputs": {n: link(v) for n, v in node["inputs"].items()}} for k, node in g.items()}


def _inversion_interpolation_graph(comfy) -> dict:
    """H-Space DDIM Inversion of the two generated images (its own grid: it ends at σ = 1), then H-Space Interpolate
    between their x_T over a percent window: Flux at cfg 1 (plain, 1 refinement) and SD3 at cfg 3 (negative-prompt
    inversion, the empty prompt as the negative), in one prompt; each end's reconstruction is saved beside the 3
    frames."""
    prompt = {}
    for family in ("flux", "sd3"):
        g = {k: v for k, v in _graph(family).items() if k in _IMAGES}
        conditioning = {"positive": ["guided" if family == "flux" else "text", 0]}
        if family == "sd3":
            conditioning["negative"] = ["empty", 0]
        common = dict(conditioning, model=["ckpt", 0], steps=4, cfg=1.0 if family == "flux" else 3.0,
                      edit_branches="cond")
        for k in (1, 2):
            g[f"ddim{k}"] = _with_defaults(comfy, {"class_type": "HSpaceDDIMInversion", "inputs": dict(
                common, latent=[f"image{k}", 0], refine_iters=1,
                cfg_inversion="plain" if family == "flux" else "negative_prompt")})
        g["interpolate"] = _with_defaults(comfy, {"class_type": "HSpaceInterpolate", "inputs": dict(
            common, x_T_a=["ddim1", 0], x_T_b=["ddim2", 0], frames=3, window="percent", start_percent=0.0,
            end_percent=0.6)})
        for name, source in (("frames", ["interpolate", 0]), ("a", ["ddim1", 2]), ("b", ["ddim2", 2])):
            save_decoded(g, name, source, f"h1/{family}_{name}")
        prompt.update(_prefixed(g, f"{family}_"))
    return prompt


def test_ddim_inversion_and_interpolate_on_flux_and_sd3(comfy):
    """Frames 0 and 2 of Interpolate save each end's reconstruction (the DDIM Inversion node's), the middle frame
    neither, on Flux and on SD3 under real CFG."""
    entry = comfy.run(_inversion_interpolation_graph(comfy))
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    for family in ("flux", "sd3"):
        frames = [png(data) for data in comfy.images(entry, f"{family}_save_frames")]
        a, b = (png(comfy.images(entry, f"{family}_save_{end}")[0]) for end in ("a", "b"))
        assert len(frames) == 3 and a.shape == (SIZE, SIZE, 3)
        for frame, end in ((frames[0], a), (frames[2], b)):  # the same latent up to 3e-7 (in-process), decoded in a
            diff = np.abs(frame - end)                        # batch of 3: a level at most, on few pixels
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (family, diff.max(), (diff > 0).mean())
        middle = frames[1]
        assert np.abs(middle - a).mean() > 0.5 and np.abs(middle - b).mean() > 0.5, family
