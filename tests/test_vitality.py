"""Block vitality (Stable Flow §3.1, issue 38): the pure measure and selection (hspace_core.vitality), the H-Space Block
Vitality node in-process on the tiny Flux and SD3 (harness/tiny_dit.py): a bypassed block never runs and changes the
result, the report lists every block, the MODEL given is never patched, Cancel lands within a step; and through a
real ComfyUI server."""
import json

import numpy as np
import pytest
import torch

from hspace_core.vitality import block_vitality, relative_change, select_vital, vitality_plot

SIZE = 16  # latent 16×16 → an 8×8 patch grid


# --- the pure functions -------------------------------------------------------------------------------------------

def test_relative_change_against_written_out_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    expected = sum(float((b[i] - a[i]).norm() / a[i].norm()) for i in range(2)) / 2
    assert relative_change(a, b) == pytest.approx(expected, rel=1e-6)
    assert relative_change(a, a.clone()) == 0.0
    assert relative_change(a.half(), b.half()) == pytest.approx(expected, rel=1e-2)


def test_select_vital_by_count_and_by_fraction():
    changes = {"double.0": 0.9, "double.1": 0.1, "single.0": 0.5, "single.1": 0.45, "single.2": 0.5}
    assert select_vital(changes, count=2) == ("double.0", "single.0")  # tie at 0.5: the earlier block
    assert select_vital(changes, count=3) == ("double.0", "single.0", "single.2")  # block order, not rank order
    assert select_vital(changes, fraction=0.5) == ("double.0", "single.0", "single.1", "single.2")  # ≥ 0.45
    assert select_vital(changes, fraction=0.51) == ("double.0", "single.0", "single.2")  # ≥ 0.459
    assert select_vital(changes, fraction=0.6) == ("double.0",)
    assert select_vital(changes, fraction=0.0) == tuple(changes)
    assert select_vital(changes, count=99) == tuple(changes)
    assert select_vital({"joint.0": 0.0, "joint.1": 0.0}) == ()
    with pytest.raises(ValueError, match="vital_count is -1"):
        select_vital(changes, count=-1)


def test_report_and_plot():
    changes = {"double.0": 0.9, "double.1": 0.1, "single.0": 0.3}
    report = block_vitality(changes, "relative latent distance", count=1)
    data = report.to_json()
    assert [b["site"] for b in data["blocks"]] == list(changes) and data["vital"] == ["double.0"]
    assert data["ranked"] == ["double.0", "single.0", "double.1"] and "1 largest" in data["rule"]
    plot = vitality_plot(report, bar=14, height=300)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= float(plot.min()) and float(plot.max()) <= 1
    pixels = (plot[0] * 255).round().byte().numpy().astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    grey = (pixels[..., 0] == 150) & (pixels[..., 1] == 150) & (pixels[..., 2] == 150)
    # one red bar, full height (the largest change); two grey bars, 0.1/0.9 and 0.3/0.9 of it
    assert red.any(axis=0).sum() == 14 and red.sum(axis=0).max() == 301
    heights = grey.sum(axis=0)
    expected = np.array([round(300 * 0.1 / 0.9) + 1] * 14 + [round(300 * 0.3 / 0.9) + 1] * 14)
    assert np.abs(np.sort(heights[heights > 20]) - expected).max() <= 1  # ±1: a label's grey antialiasing


# --- the node in-process -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(pack):
    from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux, tiny_sd3

    return {"flux": (tiny_flux(), flux_conditioning, 1.0, ["double.0", "double.1", "single.0", "single.1"]),
            "sd3": (tiny_sd3(), sd3_conditioning, 3.0, ["joint.0", "joint.1"])}


def _plain(model, cond, cfg, sigmas):
    import comfy.sample
    import comfy.samplers

    latent = torch.zeros(1, 16, SIZE, SIZE)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, cond(0),
                                      cond(1), latent, disable_pbar=True, seed=7)


def _sigmas(model, steps=3):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def _blocks(dm):
    return {"double": getattr(dm, "double_blocks", None), "single": getattr(dm, "single_blocks", None),
            "joint": getattr(dm, "joint_blocks", None)}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_vitality_node_bypasses_each_block_and_leaves_the_model_alone(pack, models, family):
    """The node's plain generation is ComfyUI's euler from RandomNoise's noise; each bypassed generation runs every
    block but the bypassed one (forward hooks count the calls) and changes the result by the relative latent
    distance the report gives; the MODEL given samples bit-identically before and after."""
    import hspace_pack.nodes.comfy.vitality as comfy_vitality
    import hspace_pack.nodes.vitality as vitality

    model, cond, cfg, sites = models[family]
    sigmas = _sigmas(model)
    before = _plain(model, cond, cfg, sigmas)
    plot, text, vital = vitality.BlockVitality.execute(
        model, cond(0), {"samples": torch.zeros(1, 16, SIZE, SIZE)}, sigmas, 7, negative=cond(1), cfg=cfg,
        vital_count=1).result
    report = json.loads(text)
    assert [b["site"] for b in report["blocks"]] == sites and "latent" in report["metric"]
    assert all(b["change"] > 1e-3 for b in report["blocks"]), report  # every bypass changes the result
    assert vital == report["ranked"][0] and plot.shape[0] == 1
    assert torch.equal(_plain(model, cond, cfg, sigmas), before)

    dm = model.get_model_object("diffusion_model")
    where = comfy_vitality.transformer_blocks(dm)[-1]
    calls = {}
    hooks = [block.register_forward_hook(lambda *_, key=(kind, i): calls.__setitem__(key, calls.get(key, 0) + 1))
             for kind, blocks in _blocks(dm).items() if blocks is not None for i, block in enumerate(blocks)]
    try:
        bypassed = _plain(comfy_vitality.bypassed(model, where), cond, cfg, sigmas)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls.get((where.kind, where.index), 0) == 0 and len(calls) == len(sites) - 1, calls
    change = next(b["change"] for b in report["blocks"] if b["site"] == where.name)
    assert relative_change(before, bypassed) == pytest.approx(change, rel=1e-6)


def test_vitality_with_a_vae_measures_lpips_and_cancel_lands_between_blocks(pack, models):
    import comfy.model_management

    import hspace_pack.nodes.vitality as vitality
    from harness.tiny_dit import tiny_vae16

    model, cond, cfg, sites = models["flux"]
    sigmas = _sigmas(model)
    latent = {"samples": torch.zeros(1, 16, SIZE, SIZE)}
    _, text, vital = vitality.BlockVitality.execute(model, cond(0), latent, sigmas, 7, vae=tiny_vae16(),
                                                    lpips_backbone="alex (random weights, testing only)",
                                                    vital_fraction=0.0).result
    report = json.loads(text)
    assert report["metric"].startswith("LPIPS") and vital == ", ".join(sites)
    assert all(b["change"] > 0 for b in report["blocks"]), report

    block = model.get_model_object("diffusion_model").single_blocks[1]
    runs = []

    def cancel(*_):  # one call per step (cfg 1): the plain generation's 3, then Cancel in the first bypassed one
        runs.append(1)
        if len(runs) == len(sigmas):
            comfy.model_management.interrupt_current_processing(True)

    hook = block.register_forward_hook(cancel)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            vitality.BlockVitality.execute(model, cond(0), latent, sigmas, 7)
    finally:
        hook.remove()
        comfy.model_management.interrupt_current_processing(False)
    assert len(runs) == len(sigmas)  # stopped at the first step of the first bypassed generation


def test_vitality_in_bfloat16(pack, models):
    """Flux's native dtype: the tiny Flux built in bfloat16 gives finite changes > 0 for every block, and its ranking's
    top block is among the float32 model's two largest (same seed; measured here: the same ranking of all four,
    changes within 0.014 of float32's)."""
    import hspace_pack.nodes.vitality as vitality
    from harness.tiny_dit import tiny_flux

    model, cond, _, sites = models["flux"]
    latent = {"samples": torch.zeros(1, 16, SIZE, SIZE)}
    reports = {}
    for name, m in (("bf16", tiny_flux(dtype=torch.bfloat16)), ("fp32", model)):
        reports[name] = json.loads(vitality.BlockVitality.execute(m, cond(0), latent, _sigmas(m), 7).result[1])
    changes = [b["change"] for b in reports["bf16"]["blocks"]]
    assert all(np.isfinite(c) and c > 1e-3 for c in changes), changes
    assert reports["bf16"]["ranked"][0] in reports["fp32"]["ranked"][:2], reports


def test_vitality_refusals(pack, models):
    import hspace_pack.nodes.vitality as vitality
    from test_comfy_one_call import conditioning, tiny_sd

    positive, _ = conditioning()
    model, cond, _, _ = models["sd3"]
    latent = {"samples": torch.zeros(1, 16, SIZE, SIZE)}
    with pytest.raises(ValueError, match="not one of Flux.1 .* connect a Flux or SD3.x MODEL"):
        vitality.BlockVitality.execute(tiny_sd(), positive, {"samples": torch.zeros(1, 4, 8, 8)}, _sigmas(model), 0)
    with pytest.raises(ValueError, match="cfg is 3 but no negative is connected"):
        vitality.BlockVitality.execute(model, cond(0), latent, _sigmas(model), 0, cfg=3.0)


# --- through a real ComfyUI server -----------------------------------------------------------------------------

def _server_graph(family: str, with_vae: bool) -> dict:
    loader = "TinyFluxCheckpointLoader" if family == "flux" else "TinySD3CheckpointLoader"
    g = {"ckpt": {"class_type": loader, "inputs": {"ckpt_name": "stand-in"}},
         "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["ckpt", 1]}},
         "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple", "steps": 3,
                                                               "denoise": 1.0}}}
    inputs = {"model": ["ckpt", 0], "positive": ["text", 0], "latent": ["latent", 0], "sigmas": ["sigmas", 0],
              "seed": 3, "vital_count": 1}
    if family == "sd3":
        g["empty"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}
        inputs.update(negative=["empty", 0], cfg=3.0)
    if with_vae:
        inputs.update(vae=["ckpt", 2], lpips_backbone="alex (random weights, testing only)")
    g["vitality"] = {"class_type": "HSpaceBlockVitality", "inputs": inputs}
    g["save_plot"] = {"class_type": "SaveImage", "inputs": {"images": ["vitality", 0],
                                                            "filename_prefix": f"vitality/{family}"}}
    g["report"] = {"class_type": "PreviewAny", "inputs": {"source": ["vitality", 1]}}
    g["vital"] = {"class_type": "PreviewAny", "inputs": {"source": ["vitality", 2]}}
    return g


def _plain_graph(family: str) -> dict:
    g = {k: v for k, v in _server_graph(family, False).items() if k in ("ckpt", "text", "latent", "sigmas", "empty")}
    if family == "flux":
        g["guider"] = {"class_type": "BasicGuider", "inputs": {"model": ["ckpt", 0], "conditioning": ["text", 0]}}
    else:
        g["guider"] = {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                                                             "negative": ["empty", 0], "cfg": 3.0}}
    g.update(noise={"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
             euler={"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
             run={"class_type": "SamplerCustomAdvanced", "inputs": {
                 "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["euler", 0], "sigmas": ["sigmas", 0],
                 "latent_image": ["latent", 0]}},
             decode={"class_type": "VAEDecode", "inputs": {"samples": ["run", 0], "vae": ["ckpt", 2]}},
             save={"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"plain/{family}"}})
    return g


@pytest.mark.e2e
@pytest.mark.parametrize("family,with_vae", [("flux", True), ("sd3", False)])
def test_block_vitality_through_the_server(comfy, family, with_vae):
    """Plain SamplerCustomAdvanced, then the vitality node, then the plain sampler again on the same loaded MODEL
    (the loader stays cached; the sampler re-runs): the plain image is bit-identical, the report lists every
    block with a change > 0, the vital site is the largest change, the plot is an image with its red bar."""
    from harness.server import error_message

    from e2e_helpers import png

    def run(prompt):
        entry = comfy.run(prompt)
        assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
        return entry

    before = png(comfy.images(run(_plain_graph(family)), "save")[0])
    entry = run(_server_graph(family, with_vae))
    report = json.loads(entry["outputs"]["report"]["text"][0])
    sites = ["double.0", "double.1", "single.0", "single.1"] if family == "flux" else ["joint.0", "joint.1"]
    assert [b["site"] for b in report["blocks"]] == sites
    assert all(b["change"] > 0 for b in report["blocks"]), report
    assert report["metric"].startswith("LPIPS" if with_vae else "relative latent")
    assert entry["outputs"]["vital"]["text"][0] == report["ranked"][0]
    plot = png(comfy.images(entry, "save_plot")[0])
    assert ((plot[..., 0] > 200) & (plot[..., 1] < 80)).any()
    again = run(_plain_graph(family))
    cached = {node for kind, data in again["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]}
    assert "ckpt" in cached and "run" not in cached, cached  # the same MODEL object, sampled again
    assert np.array_equal(png(comfy.images(again, "save")[0]), before)
