"""σ-parameterised U-Nets as denoisers D(x, σ) → x0: the preconditioning around the raw network F.

    D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))          (Karras et al. 2022, eq. 7)

- EDM (Table 1): c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ.
- Consistency models (Song et al. 2023, Appendix C): c_skip = σ_d²/((σ − σ_min)² + σ_d²),
  c_out = (σ − σ_min)·σ_d/√(σ² + σ_d²), so D(x, σ_min) = x; c_in as EDM.
- openai/consistency_models feeds its networks c_noise = 1000·¼ ln σ = 250 ln σ (``karras_diffusion.py``), for its
  EDM teachers and its consistency models alike, and its ``denoise`` clamps D to [−1, 1] when ``clip_denoised``
  (the default of its samplers): ``CheckpointSettings.clip_denoised``.
"""
from __future__ import annotations

import math

import torch

from .settings import C_NOISE, CheckpointSettings

__all__ = ["edm_scalings", "consistency_scalings", "noise_input", "network_output", "PreconditionedUNet",
           "sigma_table"]


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of EDM (Karras et al. 2022, Table 1)."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt()


def consistency_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of consistency models (Song et al. 2023, Appendix C: the boundary condition
    c_skip(σ_min) = 1, c_out(σ_min) = 0)."""
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    return c_skip, (sigma - sigma_min) * sigma_data / total.sqrt(), total.rsqrt()


def noise_input(sigma: torch.Tensor, convention: str) -> torch.Tensor:
    """c_noise(σ): ¼ ln σ ("edm", Karras et al. 2022) or 250 ln σ ("consistency", openai/consistency_models)."""
    return sigma.log() * (0.25 if convention == "edm" else 250.0)


def network_output(unet: torch.nn.Module, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
    """F(c_in·x, c_noise) of a ``UNet2DModel``; a learned-σ network (twice the input channels out) gives its first
    half."""
    out = unet(x_in, c_noise, return_dict=False)[0]
    return out[:, : x_in.shape[1]] if out.shape[1] == 2 * x_in.shape[1] else out


def sigma_table(settings: CheckpointSettings, steps: int = 1000) -> torch.Tensor:
    """σ_t for t = 0 … steps−1, log-uniform from σ_min to σ_max: the timestep grid of a continuous-σ model."""
    return torch.exp(torch.linspace(math.log(settings.sigma_min), math.log(settings.sigma_max), steps,
                                    dtype=torch.float64))


class PreconditionedUNet(torch.nn.Module):
    """D(x, σ) around a diffusers ``UNet2DModel`` F whose time input is c_noise(σ) (module docstring); h is
    ``unet.mid_block``'s output.  A learned-σ network (twice the input channels out) contributes its first half."""

    def __init__(self, unet: torch.nn.Module, settings: CheckpointSettings):
        super().__init__()
        if not settings.sigma_parameterised:
            raise ValueError(f"parameterization {settings.parameterization!r} is not σ-parameterised; "
                             "use DiffusersUNet with the scheduler config.")
        self.unet = unet
        self.parameterization = settings.parameterization
        self.sigma_data, self.sigma_min, self.c_noise = settings.sigma_data, settings.sigma_min, settings.noise_input
        self.clip_denoised = settings.clip_denoised

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.parameterization == "consistency":
            return consistency_scalings(sigma, self.sigma_data, self.sigma_min)
        return edm_scalings(sigma, self.sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.device, x.dtype)
        c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in self.scalings(sigma))
        denoised = c_skip * x + c_out * network_output(self.unet, c_in * x, noise_input(sigma, self.c_noise))
        return denoised.clamp(-1, 1) if self.clip_denoised else denoised

    def extra_repr(self) -> str:
        return (f"parameterization={self.parameterization!r}, sigma_data={self.sigma_data:g}, "
                f"sigma_min={self.sigma_min:g}, c_noise={C_NOISE[self.c_noise]!r}, clip_denoised={self.clip_denoised}")

