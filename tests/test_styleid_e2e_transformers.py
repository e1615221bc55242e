"""StyleID on transformers end to end (issue 38 item 4): tiny Flux and SD3 (harness/tiny_dit.py, the test-only
checkpoint loaders) through a real ComfyUI server.  Two generated images; H-Space StyleID Features records the
style's K/V (first image) and the content's Q (second) by Euler inversion, H-Space StyleID Inject generates the
content with the style's K/V at every block (the tiny models' default) for γ = 1 and γ = 0 in one sweep: each
result differs from the content image (γ's effect is measured in-process, test_styleid_transformers.py: through the
tiny VAE the two differ by less than one grey level); the Stable Flow preset on a tiny Flux (2 + 2 blocks) and
a U-Net preset on a transformer are refused by name."""
import numpy as np
import pytest

from e2e_helpers import expect_node_error, png, save_decoded
from harness.server import error_message
from test_e2e_transformers import _with_defaults

pytestmark = pytest.mark.e2e
SIZE = 64  # pixels: an 8×8 latent, a 4×4 patch grid
STEPS = 4


def _graph(comfy, family: str, layers: str = "StyleID SD1.x") -> dict:
    loader = "TinyFluxCheckpointLoader" if family == "flux" else "TinySD3CheckpointLoader"
    g = {"ckpt": {"class_type": loader, "inputs": {"ckpt_name": "stand-in"}},
         "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["ckpt", 1]}},
         "empty": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
         "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
         "full": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": "simple", "steps": 4,
                                                             "denoise": 1.0}},
         "euler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
         "guider": {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                                                          "negative": ["empty", 0], "cfg": 3.0}}}
    positive = ["empty", 0]
    if family == "flux":
        g["guided"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["empty", 0], "guidance": 3.5}}
        positive = ["guided", 0]
    for k in (1, 2):
        g[f"noise{k}"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": k}}
        g[f"image{k}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [f"noise{k}", 0], "guider": ["guider", 0], "sampler": ["euler", 0], "sigmas": ["full", 0],
            "latent_image": ["latent", 0]}}
    common = {"model": ["ckpt", 0], "attention_layers": layers, "custom_layers": "all", "t_start": 999, "t_stop": 0,
              "steps": STEPS, "positive": positive}
    for name, k, role in (("style", 1, "style (K, V)"), ("content", 2, "content (Q)")):
        g[name] = {"class_type": "HSpaceStyleIDFeatures", "inputs": {**common, "latent": [f"image{k}", 0],
                                                                     "role": role}}
    g["inject"] = {"class_type": "HSpaceStyleIDInject", "inputs": {
        **common, "content_x_T": ["content", 0], "style_x_T": ["style", 0], "style_features": ["style", 1],
        "content_features": ["content", 1], "gamma": 0.75, "tau": 1.5, "start": "adain", "t_edit": 400,
        "gamma_sweep": "1, 0"}}
    for name, source in (("content", ["image2", 0]), ("styled", ["inject", 0])):
        save_decoded(g, name, source, f"h6s/{family}_{name}")
    for name in ("style", "content", "inject"):
        _with_defaults(comfy, g[name])
    return g


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_styleid_features_and_inject_on_a_transformer(comfy, family):
    status, body = comfy.post("/prompt", {"prompt": _graph(comfy, family), "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    content = png(comfy.images(entry, "save_content")[0])
    styled = [png(image) for image in comfy.images(entry, "save_styled")]
    assert len(styled) == 2 and styled[0].shape == content.shape == (SIZE, SIZE, 3)
    for image in styled:
        assert np.abs(image - content).mean() > 0.5


def test_transformer_layer_presets_are_checked(comfy):
    expect_node_error(comfy, _graph(comfy, "flux", "Stable Flow vital (Flux.1)"), "'double.17', which is not a block",
                      "double.0 … single.1")
    expect_node_error(comfy, _graph(comfy, "sd3", "SDXL"), "names U-Net decoder layers", "Stable Flow vital (Flux.1)")


def test_block_vitality_chooses_the_styleid_blocks(comfy):
    """H-Space Block Vitality's vital_sites (the user's own model's vital blocks, here the 2 largest changes) feed
    custom_layers of all three StyleID nodes (attention_layers = custom), and the graph runs."""
    g = _graph(comfy, "flux", "custom")
    g["vitality"] = {"class_type": "HSpaceBlockVitality", "inputs": {
        "model": ["ckpt", 0], "positive": ["guided", 0], "latent": ["latent", 0], "sigmas": ["full", 0], "seed": 0,
        "vital_count": 2}}
    for name in ("style", "content", "inject"):
        g[name]["inputs"]["custom_layers"] = ["vitality", 2]
    g["vital"] = {"class_type": "PreviewAny", "inputs": {"source": ["vitality", 2]}}
    status, body = comfy.post("/prompt", {"prompt": g, "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    vital = entry["outputs"]["vital"]["text"][0]
    assert len(vital.split(", ")) == 2 and all(s.split(".")[0] in ("double", "single") for s in vital.split(", "))
    assert len(comfy.images(entry, "save_styled")) == 2


def _combined_graph(comfy, family: str) -> dict:
    """``_graph`` with the combined mode: the content's h trajectory (H-Space StyleID Features' third output, h at the
    transformer's default site along its inversion) into Inject's content_h, γ 0, γ_h 0 and 1 (a γ_h sweep), the h
    injected from the first step to h_end_percent = 1 (window = percent over the whole process), beside the same
    Inject without content_h (plain transformer StyleID).  Node ids carry the family, so two families share a prompt."""
    g = _graph(comfy, family)
    window = {"window": "percent", "start_percent": 0.0, "end_percent": 1.0, "gamma": 0.0, "gamma_sweep": ""}
    g["inject"]["inputs"].update(window)
    g["plain"] = {"class_type": "HSpaceStyleIDInject", "inputs": dict(g["inject"]["inputs"])}
    g["inject"]["inputs"].update({"content_h": ["content", 2], "gamma_h_sweep": "0, 1", "h_end_percent": 1.0})
    save_decoded(g, "plain", ["plain", 0], f"h7/{family}_plain")
    g["save_styled"]["inputs"]["filename_prefix"] = f"h7/{family}_combined"
    g["save_content"]["inputs"]["filename_prefix"] = f"h7/{family}_content"
    named = {}
    for key, node in g.items():
        inputs = {k: [f"{family}_{v[0]}", v[1]] if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                  and v[0] in g else v for k, v in node["inputs"].items()}
        named[f"{family}_{key}"] = {**node, "inputs": inputs}
    return named


def test_styleid_combined_mode_on_flux_and_sd3(comfy):
    """One prompt, tiny Flux and SD3: StyleID Inject with the content's h (the combined mode) at γ_h 0 gives the
    image of the same Inject without content_h exactly (plain transformer StyleID), and γ_h 1 another image (through
    the tiny random VAE the change is about a third of a grey level on average)."""
    prompt = {**_combined_graph(comfy, "flux"), **_combined_graph(comfy, "sd3")}
    status, body = comfy.post("/prompt", {"prompt": prompt, "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    for family in ("flux", "sd3"):
        plain = png(comfy.images(entry, f"{family}_save_plain")[0])
        zero, one = (png(image) for image in comfy.images(entry, f"{family}_save_styled"))
        assert plain.shape == (SIZE, SIZE, 3)
        assert np.array_equal(zero, plain), family
        assert np.abs(one - plain).mean() > 0.1, family  # measured 0.33 (Flux), 0.32 (SD3) grey levels on 0.33.0
