"""Asyrp's asymmetric step and DDIM-style inversion for rectified flow / flow matching (Flux, SD3.x).

Notation (ComfyUI's CONST model sampling): x = (1 − σ)·x0 + σ·ε with σ ∈ [0, 1]; the denoiser returns D(x, σ) = x0
(ComfyUI computes it as x − σ·v from the velocity v = ε − x0).  Then

    ε = (x − (1 − σ)·D)/σ,        v = (x − D)/σ = ε − D,        dx/dσ = v,

so the Euler step of the flow ODE, x_next = x + (σ_next − σ)·(x − D)/σ, is the same formula as the probability-flow
Euler step of VE models (``sampling.asymmetric_step`` with no edit) and ComfyUI's ``euler`` sampler.

Asyrp's asymmetric step (Kwon et al. 2023, eq. 4) keeps the predicted x0 from the edited h and the noise direction
from the original one: x_next = (1 − σ_next)·D(x | h̃) + σ_next·ε(x | h).  With ε(x | h) from D(x | h) above,

    x_next = x + (σ_next − σ)·(x − D)/σ + (1 − σ_next)·(D(x | h̃) − D(x | h))

(``sampling.asymmetric_step`` with ``signal_next`` = 1 − σ_next, the signal coefficient ``NoiseLevels.signal``).

The VE step adds the edit's change of x0 with weight 1; flow matching weighs it by a(σ_next) = 1 − σ_next, the x0
coefficient of the next point, so the edit's weight falls to 0 at σ_next = 1 and is whole at the clean end.

The η step (``flow_ddim_step``) follows the same rule; the derivation for every parameterisation is in
``sampling``'s module docstring.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .sampling import asymmetric_step, inversion_loop


def flow_eps(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε = (x − (1 − σ)·D)/σ: the noise a flow-matching denoiser's x0 estimate D implies at x."""
    return (x - (1 - sigma) * denoised) / sigma


def flow_eta_sigma(sigma: float, sigma_next: float, eta: float) -> float:
    """s = η·(σ_next/σ)·√(σ² − (a/a_next)²·σ_next²), a = 1 − σ: the DDPM posterior std of the Gaussian path
    x = a·x0 + σ·ε (Kingma et al. 2021, eq. 9: σ²_{t|s}·σ_s²/σ_t², σ²_{t|s} = σ_t² − (α_t/α_s)²·σ_s²), DDIM's
    σ_t(η) (eq. 16) on that path; on VP it is ``ddim.ddim_sigma``.  Not ComfyUI's ``euler_ancestral`` RF rule."""
    if eta == 0 or sigma_next <= 0:
        return 0.0
    ratio = (1 - sigma) / (1 - sigma_next)
    return eta * (sigma_next / sigma) * math.sqrt(max(0.0, sigma**2 - (ratio * sigma_next) ** 2))


def flow_ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, eta: float,
                   noise: torch.Tensor | None, denoised_direction: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM eq. 12 with η on the flow-matching path (Asyrp's quality boost): x_next = (1 − σ_next)·P +
    √(σ_next² − s²)·ε + s·z, ε = ``flow_eps``(x, ``denoised_direction``) (default ``denoised``), P = ``denoised``,
    s = ``flow_eta_sigma``, z ~ N(0, I).  η = 0 is ``sampling.asymmetric_step`` with ``signal_next`` = 1 − σ_next
    (with no edit, ComfyUI's ``euler``).

    Derivation.  With a = 1 − σ and r = √(a² + σ²), x_vp = x/r = √ᾱ·x0 + √(1 − ᾱ)·ε is a VP sample of
    √ᾱ = a/r, √(1 − ᾱ) = σ/r (the same ε and x0).  DDIM eq. 12, x'_vp = √ᾱ'·P + √(1 − ᾱ' − σ_t²)·ε + σ_t·z with
    eq. 16's σ_t = η·√((1 − ᾱ')/(1 − ᾱ))·√(1 − ᾱ/ᾱ'), times r' = √(a'² + σ'²) gives
    x' = a'·P + √(σ'² − s²)·ε + s·z with s = r'·σ_t; s² = η²·(σ'/σ)²·(r² − a²·r'²/a'²) = η²·(σ'/σ)²·(σ² − (a/a')²·σ'²),
    which is ``flow_eta_sigma``."""
    direction = denoised if denoised_direction is None else denoised_direction
    s = flow_eta_sigma(sigma, sigma_next, eta)
    if s == 0:
        return asymmetric_step(x, denoised, direction, sigma, sigma_next, 1 - sigma_next)
    if noise is None:
        raise ValueError("η > 0 needs a noise tensor z; pass one drawn from a seeded generator.")
    eps = flow_eps(x, direction, sigma)
    return (1 - sigma_next) * denoised + math.sqrt(max(0.0, sigma_next**2 - s * s)) * eps + s * noise


def nudge_latent(x0: torch.Tensor, factor: float) -> torch.Tensor:
    """Stable Flow's latent nudging (Avrahami et al., CVPR 2025, §5 "Image editing with inversion"): the clean latent
    is multiplied by a scalar λ slightly above 1 (1.15 in the paper and in its code, ``image2latent``) before Euler
    inversion, moving it off the distribution the model maps to itself, so that the inversion's assumption (the
    velocity at x_{k+1} is the velocity at x_k) holds better.  Stable Flow's code never divides by λ again: the
    reverse pass from its x_T lands on λ·x0 and is decoded as it is; the pack does the same."""
    if not factor > 0:
        raise ValueError(f"The latent nudging factor must be > 0 (Stable Flow: 1.15; 1 is off), got {factor}.")
    return x0 if factor == 1 else x0 * factor


def invert_flow(denoise: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, sigmas: Sequence[float], *,
                refine_iters: int = 0, callback=None, steps=None) -> torch.Tensor:
    """Euler inversion of the flow ODE on increasing ``sigmas`` (FlipSigmas' output; a first σ below 1e-3 marks
    the clean input and is taken as 0): x_{k+1} = x_k + (σ_{k+1} − σ_k)·v, v = (x_ε − D(x_ε, σ_ε))/σ_ε
    (``sampling.inverse_euler_step``), the plain inversion of RF-Inversion / Stable Flow's starting point.  With
    x_ε = x_k it is DDIM's inverse step on the flow path, (1 − σ_{k+1})·D + σ_{k+1}·ε, ε = ``flow_eps``.

    v is taken at the current point (x_ε = x_k, σ_ε = σ_k), except from the clean input, where v(x0, 0) would be
    0/0 in D's form: there at (x0, σ_1), the first point's noise level.  ``steps`` ((k, k + 1, k_ε) triples,
    ``sampling.inversion_steps``) may choose otherwise (the diffusers convention: at the next σ, with the point
    unscaled, since a flow sample is the model's input).  ``refine_iters`` = k solves
    x_{k+1} = x_k + (σ_{k+1} − σ_k)·v(x_{k+1}, σ_{k+1}) by k fixed-point iterations: the exact inverse of the
    reverse Euler step from σ_{k+1} to σ_k.  ``callback(k, x_k − σ_k·v, x_next)`` after each step (the x0 D predicts
    at the current point, x_k at the clean input).  The loop is ``sampling.inversion_loop``'s, with x_ε unscaled."""
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be ≥ 0, got {refine_iters}.")
    host = sigmas.tolist() if torch.is_tensor(sigmas) else [float(s) for s in sigmas]  # one copy, before the loop
    if host[0] < 1e-3:
        host[0] = 0.0
    if steps is None:
        steps = [(k, k + 1, k + 1 if host[k] == 0 else k) for k in range(len(host) - 1)]
    return inversion_loop(denoise, x, host, steps, refine_iters, callback, rescale=False)
