"""x_T → ComfyUI's own samplers: NOISE + SIGMAS for SamplerCustomAdvanced, or a LATENT for KSamplerAdvanced.

DDIM is Euler on the VE probability-flow ODE (x_VE = x_t/√ᾱ = x0 + σ·ε), so ``euler`` (or ``ddim``) over the
SIGMAS of the pack's grid retraces the pack's own DDIM; x_T in VP space is x_VE/√(1+σ_max²).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..hspace_core.sigmas import ve_scale
from .comfy.run import latent_out
from .comfy.noise_levels import noise_levels
from .comfy.pixel_model import pixel_only_conditioning
from .layer import CATEGORY, HSpaceNode, latent_x, model_input, origin_of, steps_input, x_T_input


class _InvertedNoise:
    """A NOISE whose sampling starts exactly at x_T, whatever latent_image is connected (sigmas from σ_max)."""

    seed = 0

    def __init__(self, model, x_T: torch.Tensor, sigma_max: float):
        self.model, self.x_T, self.scale = model, x_T, ve_scale(sigma_max)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if samples.shape != self.x_T.shape:
            raise ValueError(f"latent_image is {tuple(samples.shape)} but x_T is {tuple(self.x_T.shape)}: "
                             f"connect x_T (or a latent of its size) as the sampler's latent_image.")
        # the sampler computes noise·√(1+σ_max²) + process_latent_in(latent_image); make that x_T·√(1+σ_max²)
        return (self.x_T - latent_x(self.model, input_latent) / self.scale).cpu()


class XTToNative(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceXTToNative", display_name="H-Space x_T to Native Sampler", category=CATEGORY,
            description="Turn an inverted x_T into what ComfyUI's own samplers take. SamplerCustomAdvanced: NOISE + "
                        "SIGMAS with the 'euler' or 'ddim' sampler retrace the pack's DDIM exactly. KSamplerAdvanced: "
                        "LATENT with add_noise disabled and a scheduler that starts at σ_max (normal, simple, karras; "
                        "not ddim_uniform).",
            inputs=[model_input(), x_T_input(tooltip="x_T from DDIM Inversion (or fresh unit noise)."),
                    steps_input(20)],
            outputs=[io.Noise.Output("noise", tooltip="For SamplerCustomAdvanced: sampling starts at x_T."),
                     io.Sigmas.Output("sigmas", tooltip="The pack's DDIM grid as ComfyUI sigmas (σ_max … 0)."),
                     io.Latent.Output("latent", tooltip="x_T scaled to σ_max: KSamplerAdvanced with add_noise disabled.")],
        )

    @classmethod
    def execute(cls, model, x_T, steps) -> io.NodeOutput:
        origin = origin_of(x_T)
        if origin is not None and origin.guidance != "plain":
            logging.info("h-space: x_T comes from a %s inversion; under cfg ≠ 1 a native sampler needs the positive "
                         "prompt as its negative too (null-text embeddings do not reach native samplers).",
                         origin.guidance)
        sigmas = noise_levels(model).grid_sigmas(steps).float()
        x = latent_x(model, x_T)
        noise = _InvertedNoise(model, x, float(sigmas[0]))
        return io.NodeOutput(noise, sigmas, latent_out(model, x * noise.scale))


class PixelConditioning(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpacePixelConditioning", display_name="H-Space Pixel Conditioning", category=CATEGORY,
            description="An empty CONDITIONING for native samplers (KSampler, guiders) on unconditional pixel U-Nets "
                        "loaded with 'H-Space Load Pixel U-Net', which take no text.",
            inputs=[],
            outputs=[io.Conditioning.Output("conditioning", tooltip="Connect to positive and negative (cfg 1).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(pixel_only_conditioning())
