"""Chroma end to end (issue 38 item 1): the tiny Chroma (harness/tiny_dit.py, served by the test-only
TinyChromaCheckpointLoader with ComfyUI's T5 text encoder and a 16-channel TAESD) through a real ComfyUI server, in
one prompt under real CFG (cfg 3, an empty negative): the transformer graph of test_e2e_transformers (two images
inverted by the H-Space Inversion Sampler, Inverted x_T, Direction from Examples, the Asyrp Sampler at strength 0 and
20 from the second image's x_T), the Content Injection Sampler, and H-Space FluxSpace Edit (λ 0 and 2) on the first
image's generation."""
import numpy as np
import pytest

from e2e_helpers import png, save_decoded
from harness.server import error_message
from test_e2e_transformers import SIZE, _graph, _with_defaults

pytestmark = pytest.mark.e2e


def _save(g: dict, name: str, samples: list) -> None:
    save_decoded(g, name, samples, f"h8/chroma_{name}")


def test_chroma_through_the_server(comfy):
    g = _graph("sd3")  # the CFG branch: CFGGuider with the empty prompt as negative
    g["ckpt"]["class_type"] = "TinyChromaCheckpointLoader"
    g["inject"] = _with_defaults(comfy, {"class_type": "HSpaceContentInjectionSampler", "inputs": {
        "content": ["x_T1", 1], "gamma": 1.0, "window": "percent", "start_percent": 0.0, "end_percent": 0.7}})
    g["run_inject"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["off", 0], "guider": ["guider", 0], "sampler": ["inject", 0], "sigmas": ["sigmas", 0],
        "latent_image": ["x_T2", 0]}}
    _save(g, "inject", ["run_inject", 0])
    _save(g, "image1", ["image1", 0])
    for lam in (0.0, 2.0):
        name = f"fluxspace{int(lam)}"
        g[name] = {"class_type": "HSpaceFluxSpaceEdit", "inputs": {
            "model": ["ckpt", 0], "edit": ["text", 0], "empty": ["empty", 0], "lam": lam, "lam_coarse": 0.0,
            "start_percent": 0.0, "end_percent": 0.6}}
        g[f"guider_{name}"] = {"class_type": "CFGGuider", "inputs": {
            "model": [name, 0], "positive": ["text", 0], "negative": ["empty", 0], "cfg": 3.0}}
        g[f"run_{name}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise1", 0], "guider": [f"guider_{name}", 0], "sampler": ["euler", 0],
            "sigmas": ["full", 0], "latent_image": ["latent", 0]}}
        _save(g, name, [f"run_{name}", 0])
    for name in [k[len("save_"):] for k in g if k.startswith("save_")]:
        g[f"save_{name}"]["inputs"]["filename_prefix"] = f"h8/chroma_{name}"
    status, body = comfy.post("/prompt", {"prompt": g, "client_id": comfy.client_id})
    assert status == 200 and not body.get("node_errors"), body
    entry = comfy.wait(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    images = {name: png(comfy.images(entry, f"save_{name}")[0]) for name in (
        "reconstruction", "asyrp0", "asyrp20", "inject", "image1", "fluxspace0", "fluxspace2")}
    assert images["reconstruction"].shape == (SIZE, SIZE, 3)
    assert np.array_equal(images["asyrp0"], images["reconstruction"])  # strength 0 is euler
    assert np.array_equal(images["fluxspace0"], images["image1"])  # λ 0 is the plain MODEL
    for edited, plain in (("asyrp20", "reconstruction"), ("inject", "reconstruction"), ("fluxspace2", "image1")):
        assert np.abs(images[edited] - images[plain]).mean() > 0.5, edited
