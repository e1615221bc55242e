"""Tiny in-process models shared by the tests and the benchmarks: seeded diffusers U-Nets, a tiny open_clip and an
analytic denoiser.  (``harness.tiny_models`` writes the files ComfyUI's own loaders read; this module builds models
in memory.)"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hspace_core import NoiseSchedule, Prediction, betas_linear, schedule_from_betas


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


def tiny_clip():
    """A 32-px open_clip CLIP with random weights (seed 0) and open_clip's own ViT-B-16 tokenizer."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from hspace_core.clip_directions import CLIPDirectional

    torch.manual_seed(0)
    model = CLIP(32, CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
                 CLIPTextCfg(width=64, heads=2, layers=2))
    return CLIPDirectional(model, open_clip.get_tokenizer("ViT-B-16"))


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
