"""Shared fixtures: tiny seeded diffusers U-Nets and an analytic denoiser."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from hspace_core import NoiseSchedule, Prediction, schedule_from_betas, betas_linear  # noqa: E402

torch.set_num_threads(1)


def tiny_pixel_unet(seed: int = 0, size: int = 16):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def tiny_text_unet(seed: int = 0, prediction_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=prediction_dim,
                                attention_head_dim=8, norm_num_groups=8).eval()


class GaussianData:
    """The exact ε-predictor for data x0 ~ N(μ, s²·I): ε*(x_t, t) = √(1−ᾱ)·(x_t − √ᾱ·μ)/(ᾱ·s² + 1 − ᾱ).

    h is x_t average-pooled by 2; an edit adds its upsampled change to ε, so edits are visible.
    """

    branches = ("single",)
    fingerprint = "analytic/gaussian"

    def __init__(self, mu: torch.Tensor, s: float = 0.5, schedule: NoiseSchedule | None = None):
        self.mu, self.s = mu, s
        self.schedule = schedule or schedule_from_betas(betas_linear(1000))
        self.calls = 0

    def eps(self, x, t):
        a = self.schedule.alpha_bar(t)
        return math.sqrt(1 - a) * (x - math.sqrt(a) * self.mu) / (a * self.s**2 + 1 - a)

    def predict(self, x, t, edit=None):
        self.calls += 1
        e = self.eps(x, t)
        h = F.avg_pool2d(x, 2)
        if edit is None:
            return Prediction(e, h)
        h2 = edit(h, t, "single")
        return Prediction(e, h, e + F.interpolate(h2 - h, scale_factor=2))


@pytest.fixture
def pixel_unet():
    return tiny_pixel_unet()


@pytest.fixture
def text_unet():
    return tiny_text_unet()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI server (HSPACE_COMFYUI or the one scripts/setup.sh installed) with this pack and tiny models."""
    from harness.server import STATE, ComfyServer, prepare_base

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never download; a Hub id fails at once, not after retries
    base = str(tmp_path_factory.mktemp("comfy-base"))
    prepare_base(base, os.path.join(STATE, "e2e-models"))
    server = ComfyServer(base, os.path.join(base, "server.log")).start()
    server.object_info = server.get("/object_info")
    try:
        yield server
    finally:
        server.stop()
