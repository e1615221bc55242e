"""Guards on transformers (issue 38): Cancel lands within one block pass and leaves no hook or patch behind, and
trajectories from another site, grid or model are refused naming the setting.  In-process on the tiny Flux of
harness/tiny_dit.py (what happens inside one model pass), then through a real ComfyUI server (tiny Flux and SD3 served
by the test-only loaders, as in test_e2e_transformers.py)."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning
from test_transformers import direction, euler, sample, sigmas_of


# --- in-process: an interrupt inside a block pass ---------------------------------------------------------------

def _hooks(module: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks left on ``module`` and everything under it."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _fluxspace(cond):
    def patched(model):
        import hspace_pack.nodes.fluxspace as fluxspace

        return fluxspace.FluxSpaceEdit.execute(model, cond(5), cond(6), 1.0, 0.0, 0.0, 1.0, "all").result[0]

    return patched


def _asyrp(site):
    def sampler(model):
        import hspace_pack.nodes.samplers as nodes

        return nodes.AsyrpSampler.execute(direction(model, site), 1.0, "percent", 500, 0.0, 1.0, 0,
                                          allow_other_model=True).result[0]

    return sampler


FAMILIES = {  # family → (its joint stack, a module inside a block that runs after the attention, conditioning, cfg)
    "flux": (lambda dm: dm.double_blocks, lambda block: block.img_mlp, flux_conditioning, 1.0),
    "sd3": (lambda dm: dm.joint_blocks, lambda block: block.x_block.mlp, sd3_conditioning, 3.0),
}
RUNS = {  # name → (family, MODEL to sample given the tiny model, SAMPLER given it): each has a dit patch at block 1
    "flux asyrp double.1.attn": ("flux", lambda m: m, _asyrp("double.1.attn")),
    "flux asyrp double.1": ("flux", lambda m: m, _asyrp("double.1")),
    "flux fluxspace": ("flux", _fluxspace(flux_conditioning), lambda m: euler()),
    "sd3 asyrp joint.1.attn": ("sd3", lambda m: m, _asyrp("joint.1.attn")),
    "sd3 fluxspace": ("sd3", _fluxspace(sd3_conditioning), lambda m: euler()),
}


@pytest.mark.parametrize("run", RUNS)
def test_an_interrupt_in_a_block_pass_lands_at_the_next_patched_block_and_leaves_no_hook(pack, request, run):
    """/interrupt sets ComfyUI's flag; here the flag is set while block 0 of the joint stack runs, in the first model
    pass.  The dit patch at block 1 raises ComfyUI's InterruptProcessingException before its block runs, in that same
    pass (without the check the pass would run on to its end); nothing is left behind: no forward hook on any module
    (an attention site's hook on the output projection), no dit patch on the MODEL, and euler afterwards is the image
    before bit for bit.  Also an interrupt raised inside the patched block itself (under the live attention hook)."""
    import comfy.model_management as mm

    family, make_model, make_sampler = RUNS[run]
    stack, inner, cond, cfg = FAMILIES[family]
    model = request.getfixturevalue(family)
    dm = model.get_model_object("diffusion_model")
    sigmas = sigmas_of(model, 4)
    before = sample(model, euler(), sigmas, cond, cfg)
    hooks = _hooks(dm)
    ran = []

    def interrupt(module, args, out):
        mm.interrupt_current_processing(True)

    watched = [stack(dm)[0].register_forward_hook(interrupt),
               stack(dm)[1].register_forward_pre_hook(lambda m, a: ran.append("block 1"))]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(make_model(model), make_sampler(model), sigmas, cond, cfg)
    finally:
        for handle in watched:
            handle.remove()
        mm.interrupt_current_processing(False)
    assert ran == [], "the patched block ran after the interrupt"

    def inside(module, args):  # an interrupt checked inside the block, e.g. by a patch nested in ours
        raise mm.InterruptProcessingException()

    handle = inner(stack(dm)[1]).register_forward_pre_hook(inside)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(make_model(model), make_sampler(model), sigmas, cond, cfg)
    finally:
        handle.remove()
    assert _hooks(dm) == hooks
    assert "dit" not in model.model_options["transformer_options"].get("patches_replace", {})
    assert torch.equal(sample(model, euler(), sigmas, cond, cfg), before)


# --- through the server ------------------------------------------------------------------------------------------

def _upstream(graph: dict, *outputs: str) -> dict:
    """The nodes of ``graph`` that ``outputs`` need (a prompt runs every output node it holds)."""
    keep, todo = {}, list(outputs)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = graph[name]
            todo += [v[0] for v in graph[name]["inputs"].values() if isinstance(v, list) and len(v) == 2
                     and isinstance(v[0], str)]
    return {name: graph[name] for name in graph if name in keep}


def _prefixed(graph: dict, prefix: str) -> dict:
    """``graph`` with every node id (and link) prefixed, to put two models' graphs in one prompt."""
    def link(v):
        return [prefix + v[0], v[1]] if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) else v

    return {prefix + name: {**node, "inputs": {k: link(v) for k, v in node["inputs"].items()}}
            for name, node in graph.items()}


def _run(sampler, sigmas, latent, name: str, guider=("guider", 0), noise=("off", 0)) -> dict:
    """SamplerCustomAdvanced with ``sampler`` and its latent saved (SaveLatent: the tensor, not an 8-bit image)."""
    return {f"run_{name}": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": list(noise), "guider": list(guider), "sampler": list(sampler), "sigmas": list(sigmas),
                "latent_image": list(latent)}},
            f"save_{name}": {"class_type": "SaveLatent", "inputs": {"samples": [f"run_{name}", 0],
                                                                    "filename_prefix": f"h8/{name}"}}}


def _latent(comfy, entry, name: str) -> torch.Tensor:
    import os

    from safetensors.torch import load_file

    (f,) = entry["outputs"][f"save_{name}"]["latents"]
    return load_file(os.path.join(comfy.base, "output", f["subfolder"], f["filename"]))["latent_tensor"]


def _plain(graph: dict, split: int) -> dict:
    """Plain euler from seeded noise on the 4 full sigmas, through SplitSigmas at ``split`` ≥ 4 (the same 5 sigmas:
    a new node signature, so ComfyUI runs the sampler again on the MODEL it keeps cached)."""
    return {**_upstream(graph, "guider", "euler", "full", "latent", "noise1"),
            "split": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["full", 0], "step": split}},
            **_run(("euler", 0), ("split", 0), ("latent", 0), "plain", noise=("noise1", 0))}


LONG_STEPS = 1000  # a run that would take tens of seconds: /interrupt comes after 5 steps


@pytest.mark.e2e
def test_cancel_on_flux_stops_within_a_step_and_leaves_the_model_unpatched(comfy):
    """/interrupt during a long tiny-Flux run of the H-Space Asyrp Sampler (h at the default site double.1.attn: the
    forward hook on img_attn.proj) and of FluxSpace Edit's patched MODEL under plain euler: each run ends
    interrupted within one step's time plus the server's fixed overhead (test_e2e_hostile.CANCEL_OVERHEAD_S), and
    plain euler on the MODEL the server keeps cached is the latent it gave before, bit for bit."""
    from harness.server import error_message
    from test_e2e_hostile import CANCEL_OVERHEAD_S, _cancel_in
    from test_e2e_transformers import _graph

    g = _graph("flux")
    before = comfy.run(_plain(g, 4))
    assert before["status"]["status_str"] == "success", error_message(before) + "\n" + comfy.tail()
    g["direction"]["inputs"]["form"] = "global"  # one Δh for any number of steps
    long = {"long": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple",
                                                                "steps": LONG_STEPS, "denoise": 1.0}}}
    asyrp = {**_upstream(g, "direction", "guider", "latent", "noise1"), **long,
             "asyrp": {"class_type": "HSpaceAsyrpSampler", "inputs": {
                 "direction": ["direction", 0], "strength": 1.0, "window": "percent", "t_edit": 400,
                 "start_percent": 0.0, "end_percent": 1.0, "seed": 0, "edit_branches": "cond",
                 "allow_other_model": False}},
             **_run(("asyrp", 0), ("long", 0), ("latent", 0), "asyrp", noise=("noise1", 0))}
    fluxspace = {**_upstream(g, "guided", "euler", "latent", "noise1"), **long,
                 "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
                 "edit": {"class_type": "CLIPTextEncode", "inputs": {"text": "in snow", "clip": ["ckpt", 1]}},
                 "fluxspace": {"class_type": "HSpaceFluxSpaceEdit", "inputs": {
                     "model": ["ckpt", 0], "edit": ["edit", 0], "empty": ["empty", 0], "lam": 1.0,
                     "lam_coarse": 0.0, "start_percent": 0.0, "end_percent": 1.0, "blocks": "all"}},
                 "edited": {"class_type": "BasicGuider", "inputs": {"model": ["fluxspace", 0],
                                                                    "conditioning": ["guided", 0]}},
                 **_run(("euler", 0), ("long", 0), ("latent", 0), "fluxspace", guider=("edited", 0),
                        noise=("noise1", 0))}
    seen = {}
    for name, prompt in (("asyrp", asyrp), ("fluxspace", fluxspace)):
        latency, per_step = _cancel_in(comfy, prompt, f"run_{name}", 0, 5)
        seen[name] = (round(latency, 3), round(per_step[0], 4))
        assert latency < per_step[0] + CANCEL_OVERHEAD_S, seen
    after = comfy.run(_plain(g, 5))
    assert after["status"]["status_str"] == "success", error_message(after) + "\n" + comfy.tail()
    cached = {n for kind, data in after["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    assert "ckpt" in cached and "run_plain" not in cached, cached  # the same MODEL object, sampled again
    assert torch.equal(_latent(comfy, after, "plain"), _latent(comfy, before, "plain")), seen
    print("cancel latency, s/step:", seen)


def _injection(content, sigmas, latent, name: str, guider=("guider", 0)) -> dict:
    """The Content Injection Sampler with ``content`` (γ 0.5 over the first 70 %) run from ``latent``."""
    return {f"inject_{name}": {"class_type": "HSpaceContentInjectionSampler", "inputs": {
                "content": list(content), "gamma": 0.5, "gamma_end": -1.0, "stride": 1, "window": "percent",
                "t_edit": 400, "start_percent": 0.0, "end_percent": 0.7, "mode": "slerp", "per_channel": False,
                "seed": 0, "edit_branches": "cond"}},
            **_run((f"inject_{name}", 0), sigmas, latent, name, guider=guider)}


@pytest.mark.e2e
def test_a_trajectory_from_another_grid_model_or_site_is_refused_naming_the_setting(comfy):
    """Through the server: Flux's content trajectory of an inverted image, captured on 4 sigmas (BasicScheduler
    simple, denoise 0.75), runs in the Content Injection Sampler on those sigmas; on 6 steps it is refused naming
    the scheduler and steps to give.  SD3's trajectory given to Flux, and Flux's direction given to SD3, are refused
    as another model's (the site's family and the model to connect); a U-Net site ('up1') on Flux's Inversion
    Sampler is refused naming the value to set."""
    from e2e_helpers import expect_node_error
    from harness.server import error_message
    from test_e2e_transformers import _graph

    flux, sd3 = _graph("flux"), _prefixed(_graph("sd3"), "s_")
    base = _upstream(flux, "x_T1", "x_T2", "sigmas", "guider")
    good = {**base, **_injection(("x_T1", 1), ("sigmas", 0), ("x_T2", 0), "good")}
    entry = comfy.run(good)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    other_grid = {**base, "six": {"class_type": "BasicScheduler", "inputs": {
                      "model": ["ckpt", 0], "scheduler": "simple", "steps": 6, "denoise": 0.75}},
                  **_injection(("x_T1", 1), ("six", 0), ("x_T2", 0), "grid")}
    expect_node_error(comfy, other_grid, "H-Space Content Injection Sampler", "the same scheduler and steps")
    other_model = {**base, **_upstream(sd3, "s_x_T1"),
                   **_injection(("s_x_T1", 1), ("sigmas", 0), ("x_T2", 0), "model")}
    another = ("made with another model", "connect the model it was made with, or make it again with this one")
    expect_node_error(comfy, other_model, "'joint.1.attn' is a site of SD3 / SD3.5 (MMDiT)", *another)
    sd3_base = _upstream(sd3, "s_x_T2", "s_sigmas", "s_guider")
    flux_direction = {**sd3_base, **_upstream(flux, "direction"), "s_asyrp": {
        "class_type": "HSpaceAsyrpSampler", "inputs": {
            "direction": ["direction", 0], "strength": 1.0, "window": "percent", "t_edit": 400, "start_percent": 0.0,
            "end_percent": 0.7, "seed": 0, "edit_branches": "cond", "allow_other_model": False}},
        **_run(("s_asyrp", 0), ("s_sigmas", 0), ("s_x_T2", 0), "direction", guider=("s_guider", 0))}
    expect_node_error(comfy, flux_direction, "'double.1.attn' is a site of Flux", *another)
    unet_site = {**_upstream(flux, "x_T1"), "save": {"class_type": "SaveLatent", "inputs": {
        "samples": ["x_T1", 0], "filename_prefix": "h8/site"}}}
    unet_site["inverter1"]["inputs"]["site"] = "up1"
    expect_node_error(comfy, unet_site, "'up1' is a site of a U-Net", "set site to 'middle'")


@pytest.mark.e2e
def test_a_trajectory_captured_at_another_site_travels_with_its_site_and_is_not_mixed(comfy):
    """Flux's content trajectory saved (H-Space Save Trajectory, at the default site double.1.attn) and the same h
    written with site double.0 (what a capture at that block writes).  Loaded, the double.0 one runs in the Content
    Injection Sampler, which reads h at the site the trajectory carries (its image differs from the double.1.attn
    one's); Direction from Examples refuses it beside a double.1.attn trajectory, naming both sites and the setting
    (the Inversion Sampler's site)."""
    import dataclasses
    import glob
    import os

    from e2e_helpers import expect_node_error
    from harness.server import error_message
    from hspace_core import HTrajectory
    from test_e2e_transformers import _graph

    flux = _graph("flux")
    save = {**_upstream(flux, "x_T1"), "save": {"class_type": "HSpaceSaveTrajectory", "inputs": {
        "trajectory": ["x_T1", 1], "filename_prefix": "h8_site"}}}
    entry = comfy.run(save)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    folder = os.path.join(comfy.base, "models", "hspace_trajectories")
    saved = HTrajectory.load(sorted(glob.glob(os.path.join(folder, "h8_site_*.safetensors")))[-1])
    assert saved.site == "double.1.attn"
    dataclasses.replace(saved, site="double.0").save(os.path.join(folder, "h8_double0.safetensors"))
    base = {**_upstream(flux, "x_T2", "sigmas", "guider"),
            "load": {"class_type": "HSpaceLoadTrajectory", "inputs": {"trajectory_file": "h8_double0.safetensors"}}}
    runs = {**base, "load_attn": {"class_type": "HSpaceLoadTrajectory", "inputs": {
                "trajectory_file": os.path.basename(saved.file)}},
            **_injection(("load", 0), ("sigmas", 0), ("x_T2", 0), "double0"),
            **_injection(("load_attn", 0), ("sigmas", 0), ("x_T2", 0), "attn")}
    entry = comfy.run(runs)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    at_block, at_attention = _latent(comfy, entry, "double0"), _latent(comfy, entry, "attn")
    assert torch.isfinite(at_block).all() and not torch.equal(at_block, at_attention)
    mixed = {**base, "direction": {"class_type": "HSpaceDirectionFromExamples", "inputs": {
                 "positive": ["load", 0], "negative": ["x_T2", 1], "form": "per_timestep", "name": "mixed"}},
             "show": {"class_type": "PreviewAny", "inputs": {"source": ["direction", 0]}}}
    expect_node_error(comfy, mixed, "different sites", "positive at site 'double.0'",
                      "negative at site 'double.1.attn'", "the site setting of", "the H-Space Inversion Sampler")


@pytest.mark.e2e
def test_the_site_widget_offers_the_blocks_of_a_transformer(comfy):
    """The site combo offers every block name (``sites.site_choices``): an API prompt that sets the Inversion
    Sampler's site to 'single.1' on the tiny Flux (2 double + 2 single blocks) saves a trajectory read there; a block
    this Flux lacks ('double.5', offered for Flux.1's 19) is refused naming the block count."""
    import glob
    import os

    from e2e_helpers import expect_node_error
    from harness.server import error_message
    from hspace_core import HTrajectory
    from test_e2e_transformers import _graph

    save = {**_upstream(_graph("flux"), "x_T1"), "save": {"class_type": "HSpaceSaveTrajectory", "inputs": {
        "trajectory": ["x_T1", 1], "filename_prefix": "site_single1"}}}
    save["inverter1"]["inputs"]["site"] = "single.1"
    entry = comfy.run(save)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    folder = os.path.join(comfy.base, "models", "hspace_trajectories")
    assert HTrajectory.load(sorted(glob.glob(os.path.join(folder, "site_single1_*.safetensors")))[-1]).site == "single.1"
    save["inverter1"]["inputs"]["site"] = "double.5"
    expect_node_error(comfy, save, "double.5", "double.0 … double.1")
