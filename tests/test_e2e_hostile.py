"""Hostile and careless input through a real ComfyUI server: every bad input is a node error that says what to
change (or a correct result), and a fixed good workflow stays bit-identical afterwards, cached and after /free."""
import copy
import json
import math
import os
import shutil
import struct

import numpy as np
import pytest
import torch

from e2e_helpers import fresh, png
from harness.server import error_message

pytestmark = pytest.mark.e2e

BUNDLED = "bundled/hspace-shapes-ddpm"
STEPS = 4
SD_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"


def _node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def _common(**extra):
    return {"cfg": 1.0, "edit_branches": "cond", **extra}


def good_graph() -> dict:
    """Pixel model: invert two images, a direction from them, an edit and an injection, both saved."""
    return {
        "unet": _node("HSpaceLoadPixelUNet", unet_folder=BUNDLED, repo_id=""),
        "vae": _node("VAELoader", vae_name="pixel_space"),
        "content": _node("LoadImage", image="hspace_content.png"),
        "style": _node("LoadImage", image="hspace_style.png"),
        "inv_c": _node("HSpaceDDIMInversion", model=["unet", 0], image=["content", 0], vae=["vae", 0], steps=STEPS,
                       refine_iters=0, **_common()),
        "inv_s": _node("HSpaceDDIMInversion", model=["unet", 0], image=["style", 0], vae=["vae", 0], steps=STEPS,
                       refine_iters=0, **_common()),
        "dir": _node("HSpaceDirectionFromExamples", positive=["inv_c", 1], negative=["inv_s", 1], form="per_timestep",
                     name="hostile"),
        "edit": _node("HSpaceAsyrpEdit", model=["unet", 0], x_T=["inv_c", 0], direction=["dir", 0], strength=1.0,
                      steps=STEPS, t_edit=400, strength_sweep="", seed=0, **_common()),
        "mix": _node("HSpaceSlerpContentInject", model=["unet", 0], style_x_T=["inv_s", 0], content=["inv_c", 1],
                     gamma=0.5, gamma_end=-1.0, stride=1, steps=STEPS, t_edit=400, mode="slerp", per_channel=False,
                     seed=0, **_common()),
        "dec_edit": _node("VAEDecode", samples=["edit", 0], vae=["vae", 0]),
        "dec_mix": _node("VAEDecode", samples=["mix", 0], vae=["vae", 0]),
        "save_edit": _node("SaveImage", images=["dec_edit", 0], filename_prefix="hostile/edit"),
        "save_mix": _node("SaveImage", images=["dec_mix", 0], filename_prefix="hostile/mix"),
    }


def only(graph: dict, *outputs: str) -> dict:
    """The part of ``graph`` the given output nodes need (so one bad node is the only thing that can fail)."""
    keep, todo = {}, list(outputs)
    while todo:
        node_id = todo.pop()
        if node_id not in keep:
            keep[node_id] = copy.deepcopy(graph[node_id])
            todo += [v[0] for v in graph[node_id]["inputs"].values() if isinstance(v, list)]
    return keep


def with_inputs(graph: dict, node_id: str, **inputs) -> dict:
    graph = copy.deepcopy(graph)
    graph[node_id]["inputs"].update(inputs)
    return graph


def plus(graph: dict, **nodes) -> dict:
    """A copy of ``graph`` with more nodes (never shares a node with ``graph``)."""
    return {**copy.deepcopy(graph), **nodes}


def preview(graph: dict, source: list) -> dict:
    return plus(graph, show=_node("PreviewAny", source=source))


def _saved_images(comfy, entry):
    return [png(b) for node in ("save_edit", "save_mix") for b in comfy.images(entry, node)]


def _run_ok(comfy, prompt):
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    return entry


def _shown(comfy, prompt) -> str:
    return _run_ok(comfy, prompt)["outputs"]["show"]["text"][0]


def expect_error(comfy, prompt, *phrases, absent=()):
    """Queue ``prompt``: it must be refused (validation) or fail in a node, with every phrase in the message."""
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    if status != 200:
        message = json.dumps(body, ensure_ascii=False)
    else:
        assert not body.get("node_errors"), body
        entry = comfy.wait(body["prompt_id"])
        assert entry["status"]["status_str"] == "error", f"no error for phrases {phrases}"
        message = error_message(entry)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    for phrase in absent:
        assert phrase not in message, message
    return message


@pytest.fixture(scope="module")
def reference(comfy):
    return _saved_images(comfy, _run_ok(comfy, good_graph()))


def good_is_unchanged(comfy, reference):
    """The fixed good workflow gives bit-identical images, from the cache and after /free."""
    for step in ("cached", "after /free"):
        if step == "after /free":
            fresh(comfy)
        again = _saved_images(comfy, _run_ok(comfy, good_graph()))
        assert len(again) == len(reference) and all(np.array_equal(a, b) for a, b in zip(again, reference)), step


# --- ComfyUI's own range checks hold for every node (no **kwargs validate_inputs) ---

def test_widget_ranges_are_checked_by_comfyui(comfy, reference):
    g = good_graph()
    cases = [("edit", "strength", 101.0, "bigger than max"), ("edit", "strength", 1e6, "bigger than max"),
             ("edit", "steps", 1, "smaller than min"), ("edit", "t_edit", 1000, "bigger than max"),
             ("mix", "gamma", 1.5, "bigger than max"), ("mix", "steps", 1, "smaller than min"),
             ("edit", "seed", 2**70, "bigger than max"), ("mix", "seed", 2**70, "bigger than max")]
    for node, name, value, phrase in cases:
        output = "save_edit" if node == "edit" else "save_mix"
        expect_error(comfy, only(with_inputs(g, node, **{name: value}), output), name, phrase)
    boosted = plus(g, boost=_node("HSpaceQualityBoost", t_boost=200, eta=1.0, seed=2**70))
    boosted["edit"]["inputs"]["boost"] = ["boost", 0]
    expect_error(comfy, only(boosted, "save_edit"), "seed", "bigger than max")
    good_is_unchanged(comfy, reference)


# --- every combo is checked by the node itself; NaN and inf are refused by name ---

def test_combo_options_are_checked_by_the_node(comfy, reference):
    g = good_graph()
    expect_error(comfy, only(with_inputs(g, "dir", form="garbage"), "save_edit"), "form", "per_timestep", "global")
    expect_error(comfy, only(with_inputs(g, "edit", edit_branches="garbage"), "save_edit"), "edit_branches", "'cond'")
    expect_error(comfy, only(with_inputs(g, "mix", mode="garbage"), "save_mix"), "mode", "'slerp'", "'replace'")
    expect_error(comfy, only(with_inputs(g, "inv_c", edit_branches="x"), "save_edit"), "edit_branches", "'both'")
    auto = {**only(g, "unet", "vae", "content"),
            "auto": _node("HSpaceAutoSchedule", model=["unet", 0], image=["content", 0], vae=["vae", 0],
                          edit_threshold=0.33, boost_threshold=1.2, text_cosine=1.0, probes=4,
                          lpips_backbone="squeezenet", seed=0, **_common())}
    expect_error(comfy, preview(auto, ["auto", 0]), "lpips_backbone", "'alex'")
    train = {**only(g, "unet", "vae", "content"),
             "train": _node("HSpaceTrainAsyrpDirection", model=["unet", 0], images=["content", 0], vae=["vae", 0],
                            source_text="a", target_text="b", form="bogus", epochs=1, lr=0.5, steps=STEPS, t_edit=400,
                            inversion_steps=STEPS, batch_size=1, clip_weight=1.0, recon_weight=3.0, lr_step_epochs=3,
                            lr_gamma=0.1, clip_reference="source_prediction", log_clip_loss=True, init_scale=0.2,
                            clip_model="hspace-tiny-clip", clip_pretrained="hspace-tiny-clip.safetensors", seed=0,
                            **_common())}
    expect_error(comfy, preview(train, ["train", 1]), "form", "'implicit'")
    expect_error(comfy, preview(with_inputs(train, "train", form="global", clip_reference="the moon"), ["train", 1]),
                 "clip_reference", "'source_prediction'")
    good_is_unchanged(comfy, reference)


def test_nan_and_inf_name_the_widget(comfy, reference):
    g = good_graph()
    nan, inf = float("nan"), float("inf")
    expect_error(comfy, only(with_inputs(g, "edit", strength=nan), "save_edit"), "strength is nan", "[-100.0, 100.0]")
    expect_error(comfy, only(with_inputs(g, "inv_c", cfg=nan), "save_edit"), "cfg is nan", "[0.0, 30.0]")
    expect_error(comfy, only(with_inputs(g, "edit", cfg=inf), "save_edit"), "H-Space Asyrp Edit: cfg is inf", "[0.0, 30.0]")
    expect_error(comfy, only(with_inputs(g, "mix", gamma=nan), "save_mix"), "gamma is nan", "[0.0, 1.0]")
    calibrated = plus(g, cal=_node("HSpaceStyleCalibrate", omega=nan))
    calibrated["mix"]["inputs"]["calibration"] = ["cal", 0]
    expect_error(comfy, only(calibrated, "save_mix"), "omega is nan")
    boosted = plus(g, boost=_node("HSpaceQualityBoost", t_boost=200, eta=nan, seed=0))
    boosted["mix"]["inputs"]["boost"] = ["boost", 0]
    expect_error(comfy, only(boosted, "save_mix"), "eta is nan")
    good_is_unchanged(comfy, reference)


def test_strength_sweep_is_held_to_the_strength_range(comfy, reference):
    g = good_graph()
    for sweep, phrase in (("1e6", "[-100.0, 100.0]"), ("0, nan", "nan"), ("1, inf", "inf"), ("-101", "-101"),
                          ("a, b", "comma-separated")):
        expect_error(comfy, only(with_inputs(g, "edit", strength_sweep=sweep), "save_edit"), "strength_sweep", phrase)
    good_is_unchanged(comfy, reference)


def test_t_edit_below_t_boost_and_gamma_end_say_what_to_change(comfy, reference):
    g = plus(good_graph(), boost=_node("HSpaceQualityBoost", t_boost=600, eta=1.0, seed=0))
    for node, output in (("edit", "save_edit"), ("mix", "save_mix")):
        expect_error(comfy, only(with_inputs(g, node, boost=["boost", 0]), output), "raise t_edit", "lower t_boost")
    for gamma_end in (-0.5, -0.01):
        expect_error(comfy, only(with_inputs(g, "mix", gamma_end=gamma_end), "save_mix"), "gamma_end", "−1", "[0, 1]")
    good_is_unchanged(comfy, reference)


# --- sizes, channels, ambiguous inputs ---

def _scaled(graph, width, height):
    g = copy.deepcopy(graph)
    g["small"] = _node("ImageScale", image=["content", 0], upscale_method="nearest-exact", width=width, height=height,
                       crop="disabled")
    g["inv_c"]["inputs"]["image"] = ["small", 0]
    return g


def sd_graph(width, height):
    return {
        "ckpt": _node("CheckpointLoaderSimple", ckpt_name=SD_CHECKPOINT),
        "text": _node("CLIPTextEncode", text="a shape", clip=["ckpt", 1]),
        "content": _node("LoadImage", image="hspace_content.png"),
        "small": _node("ImageScale", image=["content", 0], upscale_method="bilinear", width=width, height=height,
                       crop="disabled"),
        "inv": _node("HSpaceDDIMInversion", model=["ckpt", 0], image=["small", 0], vae=["ckpt", 2],
                     positive=["text", 0], steps=STEPS, refine_iters=0, **_common()),
        "show": _node("PreviewAny", source=["inv", 3]),
    }


def test_sizes_channels_and_ambiguous_inputs(comfy, reference):
    g = good_graph()
    for width, height in ((47, 33), (1, 1)):
        expect_error(comfy, only(_scaled(g, width, height), "save_edit"), f"{width}×{height}", "multiples of 8", "32×32")
    sd_latent = plus(g, empty=_node("EmptyLatentImage", width=32, height=32, batch_size=1))
    sd_latent["inv_c"]["inputs"] = {k: v for k, v in sd_latent["inv_c"]["inputs"].items() if k not in ("image", "vae")}
    sd_latent["inv_c"]["inputs"]["latent"] = ["empty", 0]
    expect_error(comfy, only(sd_latent, "save_edit"), "does not belong to this model", "3-channel")
    both = with_inputs(g, "inv_c", latent=["empty", 0])
    both["empty"] = _node("EmptyLatentImage", width=32, height=32, batch_size=1)
    expect_error(comfy, only(both, "save_edit"), "Both a latent and an image", "disconnect one")
    auto = {**only(both, "unet", "vae", "content", "empty"),
            "auto": _node("HSpaceAutoSchedule", model=["unet", 0], image=["content", 0], vae=["vae", 0],
                          latent=["empty", 0], edit_threshold=0.33, boost_threshold=1.2, text_cosine=1.0, probes=4,
                          lpips_backbone="alex (random weights, testing only)", seed=0, **_common())}
    expect_error(comfy, preview(auto, ["auto", 0]), "disconnect one")
    pixel_into_sd = sd_graph(64, 64)
    pixel_into_sd["pvae"] = _node("VAELoader", vae_name="pixel_space")
    pixel_into_sd["inv"]["inputs"]["vae"] = ["pvae", 0]
    expect_error(comfy, pixel_into_sd, "does not belong to this model", "4-channel")
    two = plus(g, pair=_node("ImageBatch", image1=["content", 0], image2=["style", 0]))
    two["inv_c"]["inputs"]["image"] = ["pair", 0]
    expect_error(comfy, only(two, "save_mix"), "content holds 2 images for 1 style", "connect one content image",
                 absent=("pass 1 or 1",))
    good_is_unchanged(comfy, reference)


def test_sd_images_of_any_size_invert_with_a_psnr_against_what_the_vae_encoded(comfy):
    values = [float(_shown(comfy, sd_graph(w, h))) for w, h in ((60, 60), (61, 53), (64, 64))]
    assert all(math.isfinite(v) and v > 5 for v in values), values


# --- files: damaged, stale, unsafe, from another model ---

def _models(comfy, *parts):
    path = os.path.join(comfy.base, "models", *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def test_damaged_files_are_named_and_refused(comfy, reference):
    from hspace_core import HTrajectory
    from safetensors.torch import save_file

    good = _models(comfy, "hspace_trajectories", "hostile_good.safetensors")
    HTrajectory((999, 0), torch.randn(2, 1, 8, 2, 2)).save(good)
    data = open(good, "rb").read()
    damaged = {"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(2048),
               "huge_header": struct.pack("<Q", 2**40) + b"{}"}
    for kind, folder, node, label in (("trajectory", "hspace_trajectories", "HSpaceLoadTrajectory", "h trajectory"),
                                      ("direction", "hspace_directions", "HSpaceLoadDirection", "direction")):
        for what, content in damaged.items():
            name = f"hostile_{what}.safetensors"
            _write(_models(comfy, folder, name), content)
            prompt = {"load": _node(node, **{f"{kind}_file": name}), "show": _node("PreviewAny", source=["load", 0])}
            expect_error(comfy, prompt, name, f"not a valid h-space {label} file")
    for what, meta in (("not_json", "{oops"), ("no_fingerprint", json.dumps({"kind": "h_trajectory", "timesteps": [1],
                                                                              "branches": ["single"]}))):
        path = _models(comfy, "hspace_trajectories", f"hostile_{what}.safetensors")
        save_file({"h": torch.zeros(1, 1, 1, 1, 1)}, path, metadata={"hspace": meta})
        prompt = {"load": _node("HSpaceLoadTrajectory", trajectory_file=os.path.basename(path)),
                  "show": _node("PreviewAny", source=["load", 0])}
        expect_error(comfy, prompt, os.path.basename(path), "not JSON" if what == "not_json" else "missing fingerprint")
    good_is_unchanged(comfy, reference)


def test_loaders_notice_a_changed_file(comfy):
    from hspace_core import Direction, HTrajectory

    path = _models(comfy, "hspace_trajectories", "hostile_stale.safetensors")
    prompt = {"load": _node("HSpaceLoadTrajectory", trajectory_file="hostile_stale.safetensors"),
              "view": _node("HSpacePreviewH", trajectory=["load", 0], step=0, size=16),
              "show": _node("PreviewAny", source=["view", 1])}
    texts = []
    for scale in (1.0, 3.0):
        HTrajectory((999, 0), torch.ones(2, 1, 8, 2, 2) * scale).save(path)
        texts.append(_shown(comfy, prompt))
    assert texts[0] != texts[1], texts
    path = _models(comfy, "hspace_directions", "hostile_stale.safetensors")
    prompt = {"load": _node("HSpaceLoadDirection", direction_file="hostile_stale.safetensors"),
              "show": _node("PreviewAny", source=["load", 0])}
    texts = []
    for name in ("first", "second"):
        Direction("global", torch.zeros(8, 2, 2), name=name).save(path)
        texts.append(_shown(comfy, prompt))
    assert "first" in texts[0] and "second" in texts[1], texts
    path = _models(comfy, "asyrp", "hostile_stale.pth")
    prompt = {"unet": _node("HSpaceLoadPixelUNet", unet_folder=BUNDLED, repo_id=""),
              "load": _node("HSpaceLoadAsyrpDirection", model=["unet", 0], asyrp_file="hostile_stale.pth", train_steps=0),
              "show": _node("PreviewAny", source=["load", 0])}
    texts = []
    for value in (0.0, 1.0):
        torch.save({"999": torch.full((128, 4, 4), value)}, path)
        texts.append(_shown(comfy, prompt))
    assert texts[0] != texts[1], texts


def _perturbed_copy(comfy, name: str, seed: int) -> str:
    """A copy of the bundled model (same architecture) with other weights, in models/diffusers/<name>."""
    from safetensors.torch import load_file, save_file

    from harness.server import REPO

    folder = _models(comfy, "diffusers", name)
    if not os.path.isdir(folder):
        shutil.copytree(os.path.join(REPO, "models", "hspace-shapes-ddpm"), folder)
    weights = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    tensors = load_file(weights)
    save_file({k: v * (1 + 0.01 * torch.randn(v.shape, generator=g)) for k, v in tensors.items()}, weights)
    return folder


def test_pixel_unet_loader_notices_changed_weights_and_other_models_are_refused(comfy, reference):
    _perturbed_copy(comfy, "hostile-other-weights", 1)
    g = good_graph()
    other = plus(g, other=_node("HSpaceLoadPixelUNet", unet_folder="hostile-other-weights", repo_id=""))
    other["inv_o"] = _node("HSpaceDDIMInversion", model=["other", 0], image=["content", 0], vae=["vae", 0],
                           steps=STEPS, refine_iters=0, **_common())
    psnr_prompt = preview(only(other, "inv_o"), ["inv_o", 3])
    first = _shown(comfy, psnr_prompt)
    _perturbed_copy(comfy, "hostile-other-weights", 2)
    assert _shown(comfy, psnr_prompt) != first  # the changed weights were loaded, not the cached MODEL
    other["edit"]["inputs"]["model"] = ["other", 0]
    message = expect_error(comfy, only(other, "save_edit"), "different weights", "allow_other_model")
    assert message.count("fingerprint") >= 1 and message.count("/") >= 2, message
    _run_ok(comfy, only(with_inputs(other, "edit", allow_other_model=True), "save_edit"))
    good_is_unchanged(comfy, reference)


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unsafe_weights_hub_ids_and_paths_get_clear_loader_errors(comfy, reference):
    from harness.server import REPO

    unsafe = _models(comfy, "diffusers", "hostile-unsafe-bin", "config.json")
    shutil.copy(os.path.join(REPO, "models", "hspace-shapes-ddpm", "unet", "config.json"), unsafe)
    torch.save({"weight": _RunsCode()}, os.path.join(os.path.dirname(unsafe), "diffusion_pytorch_model.bin"))
    loader = lambda **inputs: {"unet": _node("HSpaceLoadPixelUNet", **inputs),
                               "show": _node("PreviewAny", source=["unet", 0])}
    expect_error(comfy, loader(unet_folder="hostile-unsafe-bin", repo_id=""), "refused as unsafe", "safetensors")
    expect_error(comfy, loader(unet_folder=BUNDLED, repo_id="hspace-test/no-such-model"),
                 "not in models/diffusers", "Hub was not reachable")
    for path in ("/etc", "../../etc", "~/x"):
        expect_error(comfy, loader(unet_folder=BUNDLED, repo_id=path), "repo_id", "models/diffusers")
    pth = _models(comfy, "asyrp", "hostile_unsafe.pth")
    torch.save({"0": _RunsCode()}, pth)
    prompt = {"unet": _node("HSpaceLoadPixelUNet", unet_folder=BUNDLED, repo_id=""),
              "load": _node("HSpaceLoadAsyrpDirection", model=["unet", 0], asyrp_file="hostile_unsafe.pth", train_steps=0),
              "show": _node("PreviewAny", source=["load", 0])}
    expect_error(comfy, prompt, "hostile_unsafe.pth", "refused as unsafe", absent=("weights_only=False",))
    good_is_unchanged(comfy, reference)


# --- second round: the node-execution layer (types, x_T origin, fingerprints, bounds, messages, Cancel) ---

def _jacobian(x_T, steps=STEPS, **extra):
    inputs = dict(model=["unet", 0], x_T=x_T, steps=steps, t=500, k=2, component=0, output="eps", relative_norm=0.1,
                  iterations=2, seed=0, **_common())
    return _node("HSpaceJacobianDirections", **{**inputs, **extra})


def _explorer(x_T, direction, steps=STEPS, **extra):
    inputs = dict(model=["unet", 0], x_T=x_T, vae=["vae", 0], direction=direction, strengths="-1, 1", steps=steps,
                  t_edit=400, scale=1, seed=0, **_common())
    return _node("HSpaceDirectionExplorer", **{**inputs, **extra})


def _with(graph, **nodes):
    """``graph`` plus ``nodes``, with a PreviewAny of the last one's first output."""
    last = list(nodes)[-1]
    return preview(plus(graph, **nodes), [last, 0])


def test_api_types_are_checked_not_coerced(comfy, reference):
    g = good_graph()
    for node, output, name, value, phrase in (
            ("edit", "save_edit", "allow_other_model", "false", "not a boolean"),
            ("edit", "save_edit", "allow_other_model", 0, "not a boolean"),
            ("edit", "save_edit", "steps", 4.5, "not a whole number"),
            ("edit", "save_edit", "seed", True, "not a whole number"),
            ("edit", "save_edit", "strength", "1", "not a number"),
            ("mix", "save_mix", "per_channel", "false", "not a boolean"),
            ("mix", "save_mix", "gamma", float("nan"), "gamma is nan")):
        expect_error(comfy, only(with_inputs(g, node, **{name: value}), output), name, phrase,
                     "H-Space Asyrp Edit" if node == "edit" else "H-Space Slerp Content Inject")
    base = only(g, "unet", "vae", "inv_c", "dir")
    jac = _with(base, jac=_jacobian(["inv_c", 0], relative_norm=float("nan")))
    expect_error(comfy, jac, "H-Space Jacobian Directions", "relative_norm is nan", absent=("direction contains",))
    probe = _with(base, probe=_node("HSpaceProbeDirection", positive=["inv_c", 1], negative=["inv_c", 1],
                                    method="logistic", form="global", l2=float("nan"), name="p"))
    expect_error(comfy, probe, "H-Space Probe Direction", "l2 is nan")
    good_is_unchanged(comfy, reference)


def test_every_x_T_is_checked_model_first_then_grid(comfy, reference):
    g = good_graph()
    base = only(g, "unet", "vae", "inv_c", "inv_s", "dir")
    for name, node in (("jac", _jacobian(["inv_c", 0], steps=STEPS + 2)),
                       ("explore", _explorer(["inv_c", 0], ["dir", 0], steps=STEPS + 2)),
                       ("native", _node("HSpaceXTToNative", model=["unet", 0], x_T=["inv_c", 0], steps=STEPS + 2))):
        expect_error(comfy, _with(base, **{name: node}), "x_T", f"inverted at {STEPS} steps", f"set steps to {STEPS}")
    interp = _node("HSpaceInterpolate", model=["unet", 0], x_T_a=["inv_c", 0], x_T_b=["inv_s", 0], frames=2,
                   steps=STEPS + 2, t_edit=200, clip_x0=False, **_common())
    expect_error(comfy, _with(base, interp=interp), "x_T_a", f"set steps to {STEPS}")
    # an SD x_T in the pixel model: the model is named, not the steps (which would not help)
    sd = sd_graph(64, 64)
    del sd["show"]
    sd_into_pixel = {**sd, **base}
    for name, node in (("edit", _node("HSpaceAsyrpEdit", model=["unet", 0], x_T=["inv", 0], direction=["dir", 0],
                                      strength=1.0, steps=STEPS + 2, t_edit=400, seed=0, **_common())),
                       ("native", _node("HSpaceXTToNative", model=["unet", 0], x_T=["inv", 0], steps=STEPS + 2)),
                       ("jac", _jacobian(["inv", 0], steps=STEPS + 2))):
        expect_error(comfy, _with(sd_into_pixel, **{name: node}), "does not belong to this model", "3-channel",
                     absent=("set steps", "Given groups"))
    good_is_unchanged(comfy, reference)


def test_an_x_T_of_other_weights_is_logged_and_a_direction_of_other_weights_refused(comfy, reference):
    _perturbed_copy(comfy, "hostile-other-weights-2", 3)
    g = plus(good_graph(), other=_node("HSpaceLoadPixelUNet", unet_folder="hostile-other-weights-2", repo_id=""))
    g["inv_o"] = _node("HSpaceDDIMInversion", model=["other", 0], image=["content", 0], vae=["vae", 0],
                       steps=STEPS, refine_iters=0, **_common())
    _run_ok(comfy, only(with_inputs(g, "edit", x_T=["inv_o", 0]), "save_edit"))  # a fine-tune's x_T: edited
    assert "inverted with other weights" in comfy.tail(200)
    g["dir_o"] = _node("HSpaceDirectionFromExamples", positive=["inv_o", 1], negative=["inv_s", 1], form="global",
                       name="two models")
    expect_error(comfy, preview(only(g, "dir_o"), ["dir_o", 0]), "H-Space Direction from Examples", "different models",
                 "positive", "negative", absent=("use the model it was made with",))
    explore = plus(only(g, "unet", "vae", "inv_c", "dir", "other", "inv_o"),
                   explore=_explorer(["inv_c", 0], ["dir", 0]))
    explore["explore"]["inputs"]["model"] = ["other", 0]
    explore = preview(explore, ["explore", 0])
    expect_error(comfy, explore, "H-Space Direction Explorer", "different weights", "allow_other_model")
    expect_error(comfy, with_inputs(explore, "explore", allow_other_model="false"), "not a boolean")
    _run_ok(comfy, with_inputs(explore, "explore", allow_other_model=True))
    good_is_unchanged(comfy, reference)


def test_every_list_input_is_bounded_and_strict(comfy, reference):
    g = good_graph()
    many = lambda n: ", ".join(["1"] * n)
    for node, output, name, text, phrase in (
            ("edit", "save_edit", "strength_sweep", many(33), "at most 32"),
            ("edit", "save_edit", "strength_sweep", "1,,2", "empty entry"),
            ("mix", "save_mix", "gamma_sweep", many(33), "at most 32"),
            ("mix", "save_mix", "gamma_sweep", "0.2, 0.4,", "empty entry")):
        expect_error(comfy, only(with_inputs(g, node, **{name: text}), output), name, phrase)
    base = only(g, "unet", "vae", "inv_c", "dir")
    for sweep, phrase in (("strengths", many(17)), ("t_edit_sweep", ", ".join(["400"] * 17))):
        expect_error(comfy, _with(base, explore=_explorer(["inv_c", 0], ["dir", 0], **{sweep: phrase})), sweep,
                     "at most 16")
    expect_error(comfy, _with(base, jac=_jacobian(["inv_c", 0], k=64, iterations=200)), "k × iterations", "512")
    grid = _node("HSpaceLabelSweepGrid", images=["content", 0], values=many(65), label="s", scale=1)
    expect_error(comfy, _with(only(g, "content"), grid=grid), "values", "at most 64")
    good_is_unchanged(comfy, reference)


def test_discovery_and_examples_say_the_real_cause(comfy, reference):
    g = good_graph()
    base = only(g, "unet", "vae", "content", "style", "inv_c", "inv_s", "dir")
    same = _with(base, orth=_node("HSpaceOrthogonaliseDirection", direction=["dir", 0], against=["dir", 0],
                                  keep_norm=True))
    expect_error(comfy, same, "H-Space Orthogonalise Direction", "Nothing is left", "keep_norm off", absent=("nan",))
    _run_ok(comfy, with_inputs(same, "orth", keep_norm=False))
    assert "nothing is left of it" in comfy.tail(200)
    twins = plus(base, twins=_node("ImageBatch", image1=["content", 0], image2=["content", 0]))
    twins["inv_t"] = _node("HSpaceDDIMInversion", model=["unet", 0], image=["twins", 0], vae=["vae", 0], steps=STEPS,
                           refine_iters=0, **_common())
    pca = _node("HSpacePCADirections", trajectory=["inv_t", 1], k=1, component=0, form="global",
                normalisation="position", name="pca")
    expect_error(comfy, _with(twins, pca=pca), "all the same", "different images", absent=("between 1 and 0",))
    probe = _node("HSpaceProbeDirection", positive=["inv_c", 1], negative=["inv_c", 1], method="logistic",
                  form="global", l2=0.001, name="p")
    expect_error(comfy, _with(base, probe=probe), "the same h", absent=("lower l2",))
    sited = plus(base, inv_up=_node("HSpaceDDIMInversion", model=["unet", 0], image=["style", 0], vae=["vae", 0],
                                    steps=STEPS, refine_iters=0, site="up1", **_common()))
    for node in ("HSpaceProbeDirection", "HSpaceDirectionFromExamples"):
        inputs = {"positive": ["inv_c", 1], "negative": ["inv_up", 1], "form": "global", "name": "p",
                  **({"method": "logistic", "l2": 0.001} if node == "HSpaceProbeDirection" else {})}
        expect_error(comfy, _with(sited, made=_node(node, **inputs)), "positive at site 'middle'",
                     "negative at site 'up1'", absent=("same-size images",))
    kept = plus(base, inv_k=_node("HSpaceDDIMInversion", model=["unet", 0], image=["style", 0], vae=["vae", 0],
                                  steps=STEPS, refine_iters=0, keep_h_from_t=999, **_common()))
    examples = _node("HSpaceDirectionFromExamples", positive=["inv_c", 1], negative=["inv_k", 1], form="global",
                     name="k")
    expect_error(comfy, _with(kept, ex=examples), "keep_h_from_t", absent=("different timestep grids",))
    inject = {**only(g, "mix"), **kept}
    inject["mix"]["inputs"]["content"] = ["inv_k", 1]
    expect_error(comfy, _with(inject, mix=inject.pop("mix")), "keep_h_from_t at most", absent=("set steps to 1",))
    good_is_unchanged(comfy, reference)


def test_files_with_an_unknown_site_are_named(comfy, reference):
    from hspace_core import Direction
    from safetensors.torch import load_file, save_file

    path = _models(comfy, "hspace_directions", "hostile_site.safetensors")
    Direction("global", torch.zeros(8, 2, 2), name="sited").save(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    hspace = json.loads(meta["hspace"])
    meta["hspace"] = json.dumps({**hspace, "site": "up9"})
    save_file(load_file(path), path, metadata=meta)
    prompt = {"load": _node("HSpaceLoadDirection", direction_file="hostile_site.safetensors"),
              "show": _node("PreviewAny", source=["load", 0])}
    expect_error(comfy, prompt, "hostile_site.safetensors", "'up9'", "Save node", absent=("where the model runs",))
    good_is_unchanged(comfy, reference)


def test_pixel_conditioning_into_an_sd_model_says_what_to_connect(comfy):
    graph = {
        "ckpt": _node("CheckpointLoaderSimple", ckpt_name=SD_CHECKPOINT),
        "empty": _node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "cond": _node("HSpacePixelConditioning"),
        "sample": _node("KSampler", model=["ckpt", 0], seed=0, steps=2, cfg=1.0, sampler_name="euler",
                        scheduler="normal", positive=["cond", 0], negative=["cond", 0], latent_image=["empty", 0],
                        denoise=1.0),
        "show": _node("PreviewAny", source=["sample", 0]),
    }
    expect_error(comfy, graph, "Pixel Conditioning", "CLIPTextEncode", absent=("mat1 and mat2",))


# Cancel: a run ends at most one unit of U-Net work (one pass; for a pass that is differentiated, with its backward)
# after /interrupt, plus this fixed overhead: the server's way from the interrupt flag to execution_interrupted
# (unwinding the node, the history entry, the message) and the websocket.  Measured on 2 shared CPU cores: 2-65 ms,
# but up to 0.97 s on ComfyUI 0.33 in the guided reconstruction after null-text's optimisation, with no progress
# step after the interrupt (so not U-Net work; not explained).
CANCEL_OVERHEAD_S = 1.5


def _cancel_in(comfy, prompt, node: str, bar: int, after: int):
    """Queue ``prompt``; POST /interrupt once ``node``'s progress bar number ``bar`` (each sub-run of a node starts a
    bar: 0 the first) reaches ``after`` steps.  (seconds from the POST to execution_interrupted, the seconds per step of
    each of the node's bars so far), followed on the websocket (0.33 throttles progress: a step's time is Δt / Δvalue)."""
    import asyncio
    import time

    import aiohttp

    async def follow():
        bars, sent = [], None
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{comfy.port}/ws?clientId={comfy.client_id}") as ws:
                prompt_id = comfy.queue(prompt)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        continue
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    m = json.loads(msg.data)
                    data, now = m.get("data", {}), time.perf_counter()
                    if m["type"] == "progress" and data.get("node") == node:
                        step = (data["value"], data["max"])
                        if bars and step == bars[-1][-1][1:]:
                            continue  # ComfyUI may send a step twice (its ProgressBar hook and its progress registry)
                        if not bars or step[0] < bars[-1][-1][1] or step[1] != bars[-1][-1][2]:
                            bars.append([])
                        bars[-1].append((now, *step))
                        if sent is None and len(bars) - 1 == bar and data["value"] >= after:
                            sent = time.perf_counter()
                            async with session.post(f"{comfy.url}/interrupt", json={}):
                                pass
                    if m["type"] in ("execution_success", "execution_error", "execution_interrupted") \
                            and data.get("prompt_id") == prompt_id:
                        return m["type"], None if sent is None else now - sent, bars

    kind, latency, bars = asyncio.run(asyncio.wait_for(follow(), 300))
    assert kind == "execution_interrupted" and latency is not None, (kind, [len(b) for b in bars])
    assert len(bars) == bar + 1, f"the run went on to sub-run {len(bars) - 1}: cancel earlier in bar {bar}"
    per_step = [(b[-1][0] - b[0][0]) / (b[-1][1] - b[0][1]) if len(b) > 1 else None for b in bars]
    return latency, per_step


def test_cancel_lands_within_a_pass_in_every_sub_run(comfy, reference):
    """/interrupt in every sub-run of DDIM Inversion (plain: the inversion and its regeneration; negative_prompt and
    null_text: the guidance-1 pivot, null-text's optimisation, the guided reconstruction), of Interpolate (a capture,
    a frame) and of two discovery nodes ends the run within one unit of U-Net work, timed in the same run, plus
    ``CANCEL_OVERHEAD_S``.  A unit is one step of that sub-run over the checked passes in it: 1, or null-text's 10
    Adam steps (forward and backward) and its step, or Jacobian's jvp and vjp.  The good workflows (an SD inversion,
    the pixel edit and injection) are bit-identical afterwards."""
    g = good_graph()
    x_T = lambda image: _node("HSpaceDDIMInversion", model=["unet", 0], image=[image, 0], vae=["vae", 0], steps=12,
                              refine_iters=0, **_common())
    base = plus(only(g, "unet", "vae", "content", "style"), a=x_T("content"), b=x_T("style"),
                dir=with_inputs(g, "dir", positive=["a", 1], negative=["b", 1])["dir"])
    interpolate = _with(base, interp=_node("HSpaceInterpolate", model=["unet", 0], x_T_a=["a", 0], x_T_b=["b", 0],
                                           frames=4, steps=12, t_edit=200, clip_x0=False, **_common()))
    jacobian = _with(base, jac=_jacobian(["a", 0], steps=12, t=100, k=4, iterations=40))
    explorer = _with(base, exp=_explorer(["a", 0], ["dir", 0], steps=12, strengths="-1, 0, 1"))
    sd_good = plus(sd_graph(64, 64), save=_node("SaveLatent", samples=["inv", 0], filename_prefix="hostile/cancel"))
    sd_reference = _saved_latent(comfy, _run_ok(comfy, sd_good))
    sd = with_inputs(sd_graph(64, 64), "inv", steps=40)
    negative = with_inputs(sd, "inv", cfg=3.0, negative=["text", 0], cfg_inversion="negative_prompt")
    null = with_inputs(negative, "inv", steps=6, cfg_inversion="null_text")
    runs = [  # (sub-run, prompt, node, its progress bar, the step to cancel at, checked passes per step)
        ("plain inversion", sd, "inv", 0, 4, 1), ("plain regeneration", sd, "inv", 0, 40 + 4, 1),
        ("negative_prompt pivot", negative, "inv", 0, 4, 1), ("negative_prompt guided", negative, "inv", 1, 4, 1),
        ("null_text pivot", null, "inv", 0, 2, 1), ("null_text optimisation", null, "inv", 1, 2, 10 + 1),
        ("null_text guided", null, "inv", 2, 2, 1),
        ("interpolate capture", interpolate, "interp", 0, 4, 1), ("interpolate frame", interpolate, "interp", 0, 40, 1),
        ("jacobian latent", jacobian, "jac", 0, 4, 1), ("jacobian iterations", jacobian, "jac", 1, 3, 2),
        ("explorer", explorer, "exp", 0, 4, 1)]
    seen = {}
    for name, prompt, node, bar, after, passes in runs:
        latency, per_step = _cancel_in(comfy, prompt, node, bar, after)
        unit = per_step[bar] / passes
        seen[name] = (round(latency, 3), round(unit, 3))
        assert latency < unit + CANCEL_OVERHEAD_S, (name, latency, unit, seen)
    fresh(comfy)  # the SD inversion runs again, not from the cache
    assert torch.equal(_saved_latent(comfy, _run_ok(comfy, sd_good)), sd_reference)
    good_is_unchanged(comfy, reference)


def _saved_latent(comfy, entry) -> torch.Tensor:
    from safetensors.torch import load_file

    (f,) = entry["outputs"]["save"]["latents"]
    return load_file(os.path.join(comfy.base, "output", f["subfolder"], f["filename"]))["latent_tensor"]


def test_a_prompt_with_one_refused_output_runs_its_good_output_and_the_queue_goes_on(comfy, reference):
    """Issue 36: ComfyUI drops the refused output, queues the good one and deep-copies the prompt when it takes it from
    the queue; the pack's refused values must survive that, or the prompt worker dies and nothing runs any more."""
    g = good_graph()
    shift = _node("HSpaceHShiftPatch", model=["unet", 0], direction=["dir", 0], strength=float("nan"),
                  start_percent=0.0, end_percent=0.6, edit_branches="cond", allow_other_model=False)
    for bad in (plus(only(with_inputs(g, "edit", allow_other_model="false"), "save_edit", "save_mix")),
                plus(only(g, "save_mix", "dir"), shift=shift, show=_node("PreviewAny", source=["shift", 0]))):
        status, body = comfy.post("/prompt", {"prompt": bad, "client_id": comfy.client_id})
        assert status == 200 and body.get("node_errors"), body  # the bad output refused, the good one queued
        refused = json.dumps(body["node_errors"])
        assert "not a boolean" in refused or "strength is nan" in refused, refused
        entry = comfy.wait(body["prompt_id"], timeout=120)
        assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
        assert [png(b) for b in comfy.images(entry, "save_mix")][0].shape == reference[1].shape
    trivial = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert comfy.run(trivial, timeout=60)["status"]["status_str"] == "success", comfy.tail()


# --- the SAMPLER nodes: odd sigmas, empty windows, trajectories and x_T from sigmas (issue 36, item 2) ---

def sampler_graph(sampler: dict, sigmas=("sched", 0), latent=("enc", 0)) -> dict:
    """The pixel model's native path: ``sampler`` in SamplerCustomAdvanced (no noise, cfg 1) on karras sigmas."""
    g = only(good_graph(), "dir")
    return plus(g, cond=_node("HSpacePixelConditioning"), enc=_node("VAEEncode", pixels=["content", 0], vae=["vae", 0]),
                sched=_node("BasicScheduler", model=["unet", 0], scheduler="karras", steps=STEPS, denoise=1.0),
                guider=_node("CFGGuider", model=["unet", 0], positive=["cond", 0], negative=["cond", 0], cfg=1.0),
                noise=_node("DisableNoise"), sampler=sampler,
                run=_node("SamplerCustomAdvanced", noise=["noise", 0], guider=["guider", 0], sampler=["sampler", 0],
                          sigmas=list(sigmas), latent_image=list(latent)),
                save=_node("SaveLatent", samples=["run", 0], filename_prefix="hostile/sampler"))


def _asyrp_sampler(**inputs):
    return _node("HSpaceAsyrpSampler", **{"direction": ["dir", 0], "strength": 1.0, "window": "percent", "t_edit": 400,
                                          "start_percent": 0.0, "end_percent": 0.6, "seed": 0,
                                          "edit_branches": "cond", "allow_other_model": False, **inputs})


def _inversion_sampler(refine_iters=0):
    return _node("HSpaceInversionSampler", refine_iters=refine_iters, site="middle", convention="seed")


def test_odd_sigmas_are_refused_naming_the_sampler_and_the_node_that_made_them(comfy, reference):
    nan = float("nan")
    asyrp = _asyrp_sampler()
    one = plus(sampler_graph(asyrp, ("split", 0)), split=_node("SplitSigmas", sigmas=["sched", 0], step=0))
    expect_error(comfy, one, "H-Space Asyrp Sampler", "SplitSigmas (node split)", "one noise level only")
    flipped = plus(sampler_graph(asyrp, ("flip", 0)), flip=_node("FlipSigmas", sigmas=["sched", 0]))
    expect_error(comfy, flipped, "H-Space Asyrp Sampler", "FlipSigmas (node flip)", "increase", "without FlipSigmas",
                 absent=("edit flags", "η values"))
    first_nan = plus(sampler_graph(asyrp, ("first", 0)), first=_node("SetFirstSigma", sigmas=["sched", 0], sigma=nan))
    expect_error(comfy, first_nan, "H-Space Asyrp Sampler", "SetFirstSigma (node first)", "hold nan at position 0",
                 "finite")
    inversion = sampler_graph(_inversion_sampler(), ("first", 0))
    inversion = plus(inversion, flip=_node("FlipSigmas", sigmas=["sched", 0]),
                     first=_node("SetFirstSigma", sigmas=["flip", 0], sigma=nan))
    expect_error(comfy, inversion, "H-Space Inversion Sampler", "SetFirstSigma (node first)", "hold nan",
                 absent=("timesteps for them",))
    unflipped = sampler_graph(_inversion_sampler())
    expect_error(comfy, unflipped, "H-Space Inversion Sampler", "BasicScheduler (node sched)", "do not increase",
                 "FlipSigmas")
    # empty sigmas: SamplerCustomAdvanced returns the latent without calling the sampler; Inverted x_T says so
    empty = sampler_graph(_inversion_sampler(refine_iters=3), ("split", 1))
    empty = plus(empty, split=_node("SplitSigmas", sigmas=["sched", 0], step=100),
                 xt=_node("HSpaceInvertedXT", model=["unet", 0], latent=["run", 0], inversion=["sampler", 1]),
                 save=_node("SaveLatent", samples=["xt", 0], filename_prefix="hostile/xt"))
    expect_error(comfy, empty, "H-Space Inverted x_T", "never ran", "sigmas", "are empty")
    good_is_unchanged(comfy, reference)


def _empty_window_phrase(steps=STEPS):
    return (f"No step of the {steps}-step schedule lies in the edit window percent 0.50–0.50, so nothing would be "
            "edited")


def test_an_empty_window_and_one_below_the_boost_get_the_nodes_rule_in_the_samplers_and_shift(comfy, reference):
    g = good_graph()
    phrase = _empty_window_phrase()
    empty = {"window": "percent", "start_percent": 0.5, "end_percent": 0.5}
    expect_error(comfy, only(with_inputs(g, "edit", **empty), "save_edit"), "H-Space Asyrp Edit", phrase)
    expect_error(comfy, sampler_graph(_asyrp_sampler(**empty)), "H-Space Asyrp Sampler", phrase)
    shift = plus(only(g, "dir", "content"), cond=_node("HSpacePixelConditioning"),
                 enc=_node("VAEEncode", pixels=["content", 0], vae=["vae", 0]),
                 shift=_node("HSpaceHShiftPatch", model=["unet", 0], direction=["dir", 0], strength=1.0,
                             start_percent=0.5, end_percent=0.5, edit_branches="cond", allow_other_model=False),
                 sample=_node("KSampler", model=["shift", 0], seed=0, steps=STEPS, cfg=1.0, sampler_name="euler",
                              scheduler="normal", positive=["cond", 0], negative=["cond", 0],
                              latent_image=["enc", 0], denoise=1.0),
                 save=_node("SaveLatent", samples=["sample", 0], filename_prefix="hostile/shift"))
    expect_error(comfy, shift, "H-Space Shift (model patch)", phrase)
    # a window that reaches below the quality boost's start: the same refusal from the node and the sampler
    below = "below the quality boost's start (t_boost 200)"
    boost = _node("HSpaceQualityBoost", t_boost=200, eta=1.0, seed=0)
    whole = {"window": "percent", "start_percent": 0.0, "end_percent": 1.0}
    edit = only(plus(with_inputs(g, "edit", boost=["boost", 0], **whole), boost=boost), "save_edit")
    expect_error(comfy, edit, "H-Space Asyrp Edit", below)
    expect_error(comfy, plus(sampler_graph(_asyrp_sampler(boost=["boost", 0], **whole)), boost=boost),
                 "H-Space Asyrp Sampler", below)
    good_is_unchanged(comfy, reference)


def _native_injection(keep_h_from_t: int) -> dict:
    """Slerp content injection as a SAMPLER on the DDIM sigmas the content was inverted on (x_T to Native)."""
    g = with_inputs(good_graph(), "inv_c", keep_h_from_t=keep_h_from_t)
    sampler = _node("HSpaceContentInjectionSampler", content=["inv_c", 1], gamma=0.5, gamma_end=-1.0, stride=1,
                    window="t_edit", t_edit=400, start_percent=0.0, end_percent=0.6, mode="slerp", per_channel=False,
                    seed=0, edit_branches="cond")
    graph = sampler_graph(sampler, ("native", 1), ("inv_s", 0))
    return plus(graph, native=_node("HSpaceXTToNative", model=["unet", 0], x_T=["inv_s", 0], steps=STEPS),
                inv_c=g["inv_c"], inv_s=g["inv_s"], content=g["content"], style=g["style"])


def test_a_trajectory_kept_from_t_edit_serves_the_injection_sampler_on_its_own_sigmas(comfy, reference):
    kept = _saved_latent(comfy, _run_ok(comfy, _native_injection(400)))
    full = _saved_latent(comfy, _run_ok(comfy, _native_injection(0)))
    assert torch.equal(kept, full)  # the injection reads h only inside the window, t ≥ 400
    # kept from above the window: refused by the rule Slerp Content Inject uses (require_timesteps)
    expect_error(comfy, _native_injection(800), "H-Space Content Injection Sampler", "keep_h_from_t at most")
    good_is_unchanged(comfy, reference)


def test_an_x_T_inverted_on_karras_sigmas_names_its_grid_in_asyrp_edit(comfy, reference):
    graph = sampler_graph(_inversion_sampler(), ("flip", 0))
    graph = plus(graph, flip=_node("FlipSigmas", sigmas=["sched", 0]),
                 xt=_node("HSpaceInvertedXT", model=["unet", 0], latent=["run", 0], inversion=["sampler", 1]),
                 edit=_node("HSpaceAsyrpEdit", model=["unet", 0], x_T=["xt", 0], direction=["dir", 0], strength=1.0,
                            steps=STEPS, t_edit=400, strength_sweep="", seed=0, **_common()),
                 save=_node("SaveLatent", samples=["edit", 0], filename_prefix="hostile/karras"))
    expect_error(comfy, graph, "H-Space Asyrp Edit", f"{STEPS}-step DDIM grid", f"{STEPS} steps, t = 999", "σ = ",
                 "no steps value reproduces", absent=(f"set steps to {STEPS} here",))
    good_is_unchanged(comfy, reference)


# --- tampered direction, trajectory and settings files (issue 36, item 3) ---

def _tampered(comfy, name: str, folder="hspace_directions", **fields) -> str:
    """A good direction file (a middle-block Δh of the bundled model) whose metadata says ``fields`` instead."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = _models(comfy, "hspace_directions", "hostile_source.safetensors")
    if not os.path.exists(source):
        entry = _run_ok(comfy, plus(only(good_graph(), "dir"), save=_node(
            "HSpaceSaveDirection", direction=["dir", 0], filename_prefix="hostile_source")))
        made = entry["outputs"]["save"]["text"][0]
        shutil.copy(_models(comfy, "hspace_directions", made), source)
    with safe_open(source, "pt") as f:
        meta = dict(f.metadata())
    meta["hspace"] = json.dumps({**json.loads(meta["hspace"]), **fields})
    save_file(load_file(source), _models(comfy, folder, name), metadata=meta)
    return name


def _load_and_show(name):
    return {"load": _node("HSpaceLoadDirection", direction_file=name), "show": _node("PreviewAny", source=["load", 0])}


def test_tampered_direction_fields_are_refused_naming_the_file_and_the_field(comfy, reference):
    for name, fields, phrases in (
            ("hostile_steps_neg.safetensors", {"extra": {"train_steps": -6}}, ("'extra'", "train_steps -6")),
            ("hostile_steps_abc.safetensors", {"extra": {"train_steps": "abc"}}, ("'extra'", "train_steps 'abc'")),
            ("hostile_scale.safetensors", {"scale": 1e30}, ("'scale'", "1e+30", "finite number in")),
            ("hostile_scale_nan.safetensors", {"scale": float("nan")}, ("'scale'", "NaN")),
            ("hostile_timesteps.safetensors", {"timesteps": "999"}, ("'timesteps'", "whole timesteps"))):
        _tampered(comfy, name, **fields)
        expect_error(comfy, _load_and_show(name), "H-Space Load Direction", name, *phrases,
                     absent=("could not convert", "strength or γ"))
    # made_with null: read as unknown (a log line); the Save node never shows or writes "None"
    _tampered(comfy, "hostile_made_with.safetensors", made_with=None)
    entry = _run_ok(comfy, {
        "load": _node("HSpaceLoadDirection", direction_file="hostile_made_with.safetensors"),
        "save": _node("HSpaceSaveDirection", direction=["load", 0], filename_prefix="hostile_null")})
    shown = entry["outputs"]["save"]["text"]
    assert not any("None" in line for line in shown), shown
    from safetensors import safe_open

    with safe_open(_models(comfy, "hspace_directions", shown[0]), "pt") as f:
        assert json.loads(f.metadata()["hspace"])["made_with"] == ""
    # a middle-block Δh whose file says up1: the refusal blames the file's site record
    _tampered(comfy, "hostile_up1.safetensors", site="up1")
    edit = plus(with_inputs(good_graph(), "edit", direction=["load", 0]),
                load=_node("HSpaceLoadDirection", direction_file="hostile_up1.safetensors"))
    edit = only(edit, "save_edit")
    expect_error(comfy, edit, "hostile_up1.safetensors", "records the h site 'up1'", "site record")
    good_is_unchanged(comfy, reference)


def test_deeply_nested_metadata_and_settings_are_refused_naming_the_file(comfy, reference):
    from safetensors.torch import save_file

    deep = "[" * 100_000 + "]" * 100_000
    path = _models(comfy, "hspace_trajectories", "hostile_deep.safetensors")
    save_file({"h": torch.zeros(1, 1, 1, 1, 1)}, path, metadata={"hspace": deep})
    prompt = {"load": _node("HSpaceLoadTrajectory", trajectory_file="hostile_deep.safetensors"),
              "show": _node("PreviewAny", source=["load", 0])}
    expect_error(comfy, prompt, "hostile_deep.safetensors", "nests too deeply", absent=("maximum recursion",))
    checkpoint = _models(comfy, "diffusion_models", "hostile_deep.safetensors")
    save_file({"w": torch.zeros(1)}, checkpoint)
    with open(os.path.splitext(checkpoint)[0] + ".json", "w") as f:
        f.write(deep)
    prompt = {"load": _node("HSpaceLoadPixelUNet", unet_folder=BUNDLED, repo_id="hostile_deep.safetensors"),
              "show": _node("PreviewAny", source=["load", 0])}
    expect_error(comfy, prompt, "hostile_deep.json", "nests too deeply", absent=("maximum recursion",))
    good_is_unchanged(comfy, reference)
