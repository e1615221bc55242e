"""The one home of the VP ↔ VE conversions (noise level σ, signal level ᾱ, scaled inputs, ε ↔ denoised x0).

Two conventions describe the same diffusion (Karras et al. 2022, "Elucidating the Design Space", §2 and Table 1):

    VP (DDPM / DDIM):  x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε
    VE (k-diffusion, ComfyUI's samplers):  x = x0 + σ·ε

They are the same point up to scale: with ᾱ = 1/(1 + σ²), i.e. σ = √((1 − ᾱ)/ᾱ), x_VE = x_t/√ᾱ = x_t·√(1 + σ²).
A σ-space denoiser D(x, σ) ≈ x0 gives the ε the VP processes need as ε = (x − D)/σ (Karras eq. 3 rearranged),
whatever the network predicts (ε, v or x0: ComfyUI's ``model_sampling`` returns D for each).
"""
from __future__ import annotations

import math

import torch


def sigma_of_alpha_bar(alpha_bar: float) -> float:
    """σ = √((1 − ᾱ)/ᾱ)."""
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def alpha_bar_of_sigma(sigma: float) -> float:
    """ᾱ = 1/(1 + σ²)."""
    return 1.0 / (1.0 + sigma * sigma)


def sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for a whole table (float64)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - ac) / ac).sqrt()


def alphas_cumprod_of(sigmas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = 1/(1 + σ_t²) for a whole table (float64): the inverse of ``sigmas_of``."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return 1 / (1 + sigmas**2)


def ve_scale(sigma: float) -> float:
    """√(1 + σ²) = 1/√ᾱ: the factor from a VP sample to the VE sample at the same noise level."""
    return math.sqrt(1.0 + sigma * sigma)


def vp_to_ve(x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x = x_t/√ᾱ: the VP sample as the VE denoiser's input."""
    return x_t / math.sqrt(alpha_bar)


def ve_to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = x/√(1 + σ²): a VE sample (what ComfyUI's samplers hold) as the VP sample the processes use."""
    return x / ve_scale(sigma)


def eps_of_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε = (x − D(x, σ))/σ for a VE input x and the denoiser's x0 estimate D."""
    return (x - denoised) / sigma


def sigmas_problem(sigmas, increasing: bool = False) -> str | None:
    """What makes ``sigmas`` unusable as a sampler's noise levels, in words (None: nothing).  A sampler steps from
    each σ to the next (k-diffusion's ``sample_*(model, x, sigmas)``), so it needs at least two finite σ ≥ 0 that
    decrease (denoising: σ_i ≥ σ_{i+1}, a repeated σ is a zero step, only the last σ may be 0) or, for inversion
    (``increasing``), strictly increase (FlipSigmas of a schedule)."""
    sigmas = [float(s) for s in sigmas]
    if not sigmas:
        return "are empty (no noise levels at all)"
    if len(sigmas) == 1:
        return f"hold one noise level only (σ = {sigmas[0]:.4g}); a step needs two, from one σ to the next"
    for i, s in enumerate(sigmas):
        if not math.isfinite(s):
            return f"hold {s} at position {i} (of {len(sigmas)}); noise levels must be finite numbers"
        if s < 0:
            return f"hold a negative σ ({s:.4g}) at position {i} (of {len(sigmas)}); noise levels are ≥ 0"
    for i, (a, b) in enumerate(zip(sigmas, sigmas[1:])):
        if increasing and b <= a:
            return (f"do not increase (σ {a:.4g} then {b:.4g} at positions {i}, {i + 1}); inversion runs from the "
                    "image to the noise, on increasing sigmas")
        if not increasing and b > a:
            return (f"increase (σ {a:.4g} then {b:.4g} at positions {i}, {i + 1}); sampling runs from the noise to "
                    "the image, on decreasing sigmas")
    if not increasing and 0.0 in sigmas[:-1]:
        i = sigmas.index(0.0)
        return (f"hold σ = 0 at position {i}, before the last (of {len(sigmas)}); only the last σ may be 0 (a step "
                "from σ = 0 has no noise to remove)")
    return None
