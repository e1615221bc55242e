"""Asyrp's implicit f_t on a tiny SD3 (real CFG) through a real ComfyUI server, in one prompt: H-Space Train Asyrp
Direction (form implicit, the test server's tiny open_clip) learns f_t(h_t, t) over the MMDiT's own t_embedder on a
generated image, the direction is saved, and the H-Space Asyrp Sampler edits the second image's inverted x_T with it
beside euler's reconstruction of the same x_T."""
import os

import numpy as np
import pytest

from e2e_helpers import CLIP_TEST_OVERRIDES, png
from harness.server import error_message
from test_e2e_transformers import SIZE, _graph

pytestmark = pytest.mark.e2e
STRENGTH = 10.0


def _implicit_graph() -> dict:
    g = _graph("sd3")
    del g["save_asyrp20"]
    g["asyrp0"]["inputs"]["direction"] = g["asyrp20"]["inputs"]["direction"] = ["train", 0]
    g["asyrp20"]["inputs"]["strength"] = STRENGTH
    g["picture"] = {"class_type": "VAEDecode", "inputs": {"samples": ["image1", 0], "vae": ["ckpt", 2]}}
    g["train"] = {"class_type": "HSpaceTrainAsyrpDirection", "inputs": dict(
        CLIP_TEST_OVERRIDES, model=["ckpt", 0], positive=["text", 0], negative=["empty", 0], cfg=3.0,
        edit_branches="cond", seed=0, window="percent", start_percent=0.0, end_percent=0.7, t_edit=400,
        images=["picture", 0], vae=["ckpt", 2], source_text="a lighthouse", target_text="a red lighthouse",
        form="implicit", epochs=2, lr=0.5, steps=4, inversion_steps=4, batch_size=1, clip_weight=1.0,
        recon_weight=3.0, lr_step_epochs=3, lr_gamma=0.1, clip_reference="source_prediction", log_clip_loss=True,
        init_scale=0.2)}
    g["save_direction"] = {"class_type": "HSpaceSaveDirection", "inputs": {
        "direction": ["train", 0], "filename_prefix": "e2e/sd3_implicit"}}
    g["save_edited"] = {**g["save_asyrp0"], "inputs": {**g["save_asyrp0"]["inputs"], "images": ["decode_asyrp20", 0],
                                                       "filename_prefix": "h10/sd3_implicit_edited"}}
    return g


def test_implicit_f_t_trains_and_edits_an_sd3_image(comfy):
    """The saved f_t carries SD3's default site (joint.1.attn on the tiny SD3), the MODEL's fingerprint and the time
    input of its 1000-entry σ table (σ·1000); the Asyrp Sampler with it at strength 0 saves euler's reconstruction
    exactly and at strength 10 changes it."""
    from hspace_core import Direction

    entry = comfy.run(_implicit_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    d = Direction.load(os.path.join(comfy.base, "models", "hspace_directions",
                                    entry["outputs"]["save_direction"]["text"][0]))
    assert d.form == "implicit" and d.site == "joint.1.attn" and d.fingerprint
    table = d.fn.time_embedding.time_input
    assert table.numel() == 1000 and 0 < float(table[0]) < float(table[-1]) <= 1000.0 + 1e-3
    assert d.made_with == "percent 0.00–0.70, trained on 4 steps"
    images = {name: png(comfy.images(entry, f"save_{name}")[0]) for name in ("reconstruction", "asyrp0", "edited")}
    assert images["reconstruction"].shape == (SIZE, SIZE, 3)
    assert np.array_equal(images["asyrp0"], images["reconstruction"])  # strength 0 is euler
    assert np.abs(images["edited"] - images["reconstruction"]).mean() > 0.5, \
        np.abs(images["edited"] - images["reconstruction"]).mean()
