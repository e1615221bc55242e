"""The bundled demo model: loads from the pack, generates training-like data, and inverts."""
import json
import os

import torch

from hspace_core import invert
from hspace_core.demo.run import BUNDLED, load_model
from hspace_core.demo.shapes import make_batch
from hspace_core.demo.train import SCHEDULER_CONFIG, UNET_CONFIG


def test_bundled_model_matches_the_training_script():
    config = json.load(open(os.path.join(BUNDLED, "unet", "config.json")))
    for key, value in UNET_CONFIG.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    assert json.load(open(os.path.join(BUNDLED, "scheduler", "scheduler_config.json"))) == SCHEDULER_CONFIG


def test_bundled_model_inverts_shapes_images():
    model = load_model()
    images = torch.from_numpy(make_batch(4, seed=123)[0])
    with torch.no_grad():
        inv = invert(model, images, 20, refine_iters=1)
    assert inv.report.psnr > 20.0, inv.report
    assert inv.trajectory.h.shape == (20, 4, 128, 4, 4)  # h = 128×4×4 for 32×32 images
