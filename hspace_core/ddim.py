"""DDIM steps as pure functions (Song et al. 2021, "Denoising Diffusion Implicit Models").

Notation, in the papers' symbols:
    ᾱ_t       alpha_bar_t        cumulative signal level at timestep t (ᾱ_{−1} = 1)
    ε         eps                 predicted noise
    P_t       predicted_x0        (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t          "predicted x0"   (DDIM eq. 12)
    D_t       direction           √(1 − ᾱ_{t−1} − σ_t²)·ε               "direction to x_t" (DDIM eq. 12)
    σ_t       ddim_sigma          η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1})  (DDIM eq. 16)

x0 is never clipped: clipping breaks invertibility and the h-space methods rely on it.
"""
from __future__ import annotations

import math

import torch


def eps_from_model_output(output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """Convert a network output to ε.

    epsilon: ε itself.  v_prediction (Salimans & Ho 2022, §4): v = √ᾱ·ε − √(1−ᾱ)·x0, so ε = √ᾱ·v + √(1−ᾱ)·x_t.
    sample: x0, so ε = (x_t − √ᾱ·x0)/√(1−ᾱ).
    """
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return a * output + s * x_t
    if prediction_type == "sample":
        if s == 0:
            raise ValueError("A 'sample' prediction at ᾱ = 1 carries no noise estimate; use a timestep ≥ 0.")
        return (x_t - a * output) / s
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; use epsilon, v_prediction or sample.")


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """P_t = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t  (DDIM eq. 12, "predicted x0")."""
    return (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def clipped_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float, limit: float) -> torch.Tensor:
    """ε re-derived from the clipped prediction clamp(P_t, −limit, limit): ε' = (x_t − √ᾱ_t·clip(P_t)) / √(1 − ᾱ_t).

    DDPM's clipped x̂0 (Ho et al. 2020, §3.3 / diffusers' ``clip_sample``): keeps a pixel model's P_t inside the
    data range, so an early error at large t (amplified by 1/√ᾱ_t) cannot saturate the sample.
    """
    if alpha_bar >= 1:
        return eps
    x0 = predicted_x0(x_t, eps, alpha_bar).clamp(-limit, limit)
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def ddim_sigma(alpha_bar: float, alpha_bar_prev: float, eta: float) -> float:
    """σ_t = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1})  (DDIM eq. 16); η = 1 is DDPM's variance."""
    if eta == 0 or alpha_bar >= 1:
        return 0.0
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * math.sqrt(max(0.0, 1 - alpha_bar / alpha_bar_prev))


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float, alpha_bar_prev: float,
              eta: float = 0.0, noise: torch.Tensor | None = None,
              eps_direction: torch.Tensor | None = None) -> torch.Tensor:
    """x_{t−1} = √ᾱ_{t−1}·P_t(ε) + D_t(ε_dir) + σ_t·z  (DDIM eq. 12).

    With ``eps_direction`` given this is Asyrp's asymmetric reverse process (Kwon et al. 2023, eq. 4):
    P_t comes from ε(x_t | h̃_t) and D_t from ε(x_t | h_t).  ``noise`` (z) is required when η > 0.
    """
    eps_dir = eps if eps_direction is None else eps_direction
    sigma = ddim_sigma(alpha_bar, alpha_bar_prev, eta)
    x0 = predicted_x0(x_t, eps, alpha_bar)
    direction = math.sqrt(max(0.0, 1 - alpha_bar_prev - sigma**2)) * eps_dir
    x_prev = math.sqrt(alpha_bar_prev) * x0 + direction
    if sigma > 0:
        if noise is None:
            raise ValueError("η > 0 needs a noise tensor z; pass one drawn from a seeded generator.")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_inverse_step(x_prev: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: float, alpha_bar: float) -> torch.Tensor:
    """Deterministic DDIM step run forwards in time (DDIM §4.3, inversion):
    x_t = √ᾱ_t·P + √(1 − ᾱ_t)·ε with P = (x_{t−1} − √(1 − ᾱ_{t−1})·ε)/√ᾱ_{t−1}."""
    return math.sqrt(alpha_bar) * predicted_x0(x_prev, eps, alpha_bar_prev) + math.sqrt(1 - alpha_bar) * eps


def calibrated_x_t(x_t: torch.Tensor, eps: torch.Tensor, eps_injected: torch.Tensor,
                   alpha_bar: float, omega: float) -> torch.Tensor:
    """Style calibration (InjectFusion / DiffStyle, Jeong et al., §3.3).

    P'_t (from the injected ε') is renormalised to the per-sample std of P_t, keeping its own mean; then
    dx = √ᾱ_t·(P'_t − P_t) + ω·√(1 − ᾱ_t)·(ε' − ε) and x'_t = x_t + dx.  The caller then takes a plain
    DDIM step from x'_t with the unmodified network.
    Limits: ω = 1 makes dx vanish up to the renormalisation, because x_t = √ᾱ·P + √(1−ᾱ)·ε holds for both
    predictions; ω = 0 moves x_t by √ᾱ·dP, so that the plain network predicts (to first order) P'_t from x'_t.
    """
    p = predicted_x0(x_t, eps, alpha_bar)
    p_inj = std_matched(predicted_x0(x_t, eps_injected, alpha_bar), p)
    dx = math.sqrt(alpha_bar) * (p_inj - p) + omega * math.sqrt(1 - alpha_bar) * (eps_injected - eps)
    return x_t + dx


def std_matched(p_injected: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """P'_t renormalised to the per-sample std of P_t, keeping its own mean (style calibration's first step)."""
    dims = tuple(range(1, p.dim()))
    p_centred = p - p.mean(dim=dims, keepdim=True)
    inj_mean = p_injected.mean(dim=dims, keepdim=True)
    inj_centred = p_injected - inj_mean
    scale = p_centred.std(dim=dims, keepdim=True) / inj_centred.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return inj_mean + inj_centred * scale
