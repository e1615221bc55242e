"""H-Space Jacobian Directions and H-Space Train Asyrp Direction on a tiny Flux through a real ComfyUI server (issue 38
item 3), in one prompt: a generated image (taken as x_T and, decoded, as the training image: only the plumbing is
tested), its Jacobian directions and a CLIP-trained Δh (the test server's tiny open_clip), both saved, and H-Space
Asyrp Edit with each beside H-Space Capture's reconstruction of the same x_T."""
import os

import numpy as np
import pytest

from e2e_helpers import CLIP_TEST_OVERRIDES, png, save_decoded
from harness.server import error_message
from test_e2e_transformers import SIZE, _graph

pytestmark = pytest.mark.e2e
STRENGTH = 10.0


def _directions_graph() -> dict:
    g = _graph("flux")
    for name in ("reconstruction", "asyrp0", "asyrp20"):  # the SAMPLER test's outputs: not run here
        del g[f"save_{name}"]
    common = dict(model=["ckpt", 0], positive=["guided", 0], cfg=1.0, edit_branches="cond", seed=0)
    window = dict(window="percent", start_percent=0.0, end_percent=0.7, t_edit=400)
    g["picture"] = {"class_type": "VAEDecode", "inputs": {"samples": ["image1", 0], "vae": ["ckpt", 2]}}
    g["jacobian"] = {"class_type": "HSpaceJacobianDirections", "inputs": dict(
        common, x_T=["image1", 0], steps=4, t=500, k=2, component=0, output="x0", relative_norm=0.1, iterations=3,
        site="middle")}
    g["train"] = {"class_type": "HSpaceTrainAsyrpDirection", "inputs": dict(
        common, **window, **CLIP_TEST_OVERRIDES, images=["picture", 0], vae=["ckpt", 2], source_text="a lighthouse",
        target_text="a red lighthouse", form="global", epochs=2, lr=0.5, steps=4, inversion_steps=4, batch_size=1,
        clip_weight=1.0, recon_weight=3.0, lr_step_epochs=3, lr_gamma=0.1, clip_reference="source_prediction",
        log_clip_loss=True, init_scale=0.2)}
    g["capture"] = {"class_type": "HSpaceCapture", "inputs": dict(common, x_T=["image1", 0], steps=4)}
    images = {"captured": ["capture", 1]}
    for name, direction in (("jacobian", ["jacobian", 1]), ("trained", ["train", 0])):
        g[f"save_{name}_direction"] = {"class_type": "HSpaceSaveDirection", "inputs": {
            "direction": direction, "filename_prefix": f"e2e/flux_{name}"}}
        g[f"edit_{name}"] = {"class_type": "HSpaceAsyrpEdit", "inputs": dict(
            common, **window, x_T=["image1", 0], direction=direction, strength=0.0, strength_sweep=f"0, {STRENGTH}",
            steps=4, allow_other_model=False)}
        images[name] = [f"edit_{name}", 0]
    for name, source in images.items():
        save_decoded(g, name, source, f"h2dirs/flux_{name}")
    return g


def test_jacobian_and_clip_trained_directions_edit_a_flux_image(comfy):
    """Both directions are saved with Flux's default site (double.1.attn on the tiny Flux) and the h shape of its 4×4
    patch grid; the Jacobian's t = 500 reads as the middle of Flux's 10000-entry schedule (its nearest grid step);
    the edits at strength 0 are the capture's reconstruction (up to the VAE's batch rounding of one level, as the
    process nodes' test measures) and at strength 10 change it."""
    from hspace_core import Direction

    entry = comfy.run(_directions_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    saved = {name: Direction.load(os.path.join(comfy.base, "models", "hspace_directions",
                                               entry["outputs"][f"save_{name}_direction"]["text"][0]))
             for name in ("jacobian", "trained")}
    for d in saved.values():
        assert d.site == "double.1.attn" and tuple(d.delta.shape[-2:]) == (SIZE // 16, SIZE // 16), d
    # t = 500 is table entry ~5000 of Flux's 10000: the nearest step of the 4-step grid (9999, 6666, 3333, 0)
    assert saved["jacobian"].metadata["t"] in (3333, 6666) and 0.2 < saved["jacobian"].metadata["sigma"] < 0.9
    assert saved["trained"].made_with == "percent 0.00–0.70, trained on 4 steps"
    captured = png(comfy.images(entry, "save_captured")[0])
    assert captured.shape == (SIZE, SIZE, 3)
    for name in ("jacobian", "trained"):
        zero, edited = map(png, comfy.images(entry, f"save_{name}"))
        diff = np.abs(zero - captured)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (name, diff.max(), (diff > 0).mean())
        assert np.abs(edited - captured).mean() > 0.5, (name, np.abs(edited - captured).mean())
