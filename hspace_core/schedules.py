"""Noise schedules and timestep grids, passed around as plain data.

Notation (DDPM / DDIM): ᾱ_t ("alpha bar") is the cumulative product of (1 − β_s) for s ≤ t,
x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε.  k-diffusion / ComfyUI sigmas are σ_t = √((1 − ᾱ_t)/ᾱ_t) (``sigmas``).

Everything is computed in float64; a timestep of −1 stands for "the clean image" (ᾱ = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .sigmas import alphas_cumprod_of, sigma_of_alpha_bar, sigmas_of  # noqa: F401  (sigmas_of: the old home)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
GRID_KINDS = ("asyrp", "leading", "trailing", "uniform")


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0 … T−1 (float64) and what the network predicts."""

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"

    def __post_init__(self):
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten().clone()
        if ac.numel() < 2:
            raise ValueError(f"A noise schedule needs at least 2 timesteps, got {ac.numel()}.")
        if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac > 1).any():
            raise ValueError("alphas_cumprod must be finite and in (0, 1]; check the betas or sigmas you passed.")
        if (ac[1:] > ac[:-1] + 1e-12).any():
            raise ValueError("alphas_cumprod must be non-increasing in t (noise grows with the timestep).")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported; use one of {PREDICTION_TYPES}."
            )
        object.__setattr__(self, "alphas_cumprod", ac)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t, with ᾱ_{−1} = 1 (the clean image)."""
        if t < 0:
            return 1.0
        if t >= self.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_train_timesteps - 1}].")
        return float(self.alphas_cumprod[t])

    def sigma(self, t: int) -> float:
        """σ_t = √((1 − ᾱ_t)/ᾱ_t), the k-diffusion / ComfyUI noise level of timestep t."""
        return sigma_of_alpha_bar(self.alpha_bar(t))

    def timestep_of_sigma(self, sigma: float) -> int:
        """The timestep t whose σ_t is nearest σ in log σ (what ComfyUI's ModelSamplingDiscrete.timestep does);
        −1 (the clean image) for σ ≤ 0.  Use it to give t_edit / t_boost as a noise level, e.g.
        ``schedule.timestep_of_sigma(1.0)``, so they mean the same on any schedule."""
        from .noise_levels import NoiseLevels  # it reads this module: imported here to keep the import one-way

        return NoiseLevels.of_schedule(self).timestep(sigma)

    def to_dict(self) -> dict:
        return {"prediction_type": self.prediction_type, "num_train_timesteps": self.num_train_timesteps}


def timestep_at_fraction(schedule: NoiseSchedule, fraction: float) -> int:
    """t = round(f·(T − 1)): a timestep given as a fraction f ∈ [0, 1] of the schedule (t_edit = 400 of 1000 is
    f = 0.4)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"A fraction of the schedule must be in [0, 1], got {fraction}.")
    return int(round(fraction * (schedule.num_train_timesteps - 1)))


def timestep_at_sigma(schedule: NoiseSchedule, sigma: float) -> int:
    """The timestep of noise level σ (nearest in log σ, ``NoiseSchedule.timestep_of_sigma``), clamped to t ≥ 0 so
    it can be a t_edit / t_boost.  On the DDPM linear schedule t_edit = 400 is σ ≈ 2.04 and t_boost = 200 σ ≈ 0.72."""
    if not sigma >= 0:
        raise ValueError(f"σ must be ≥ 0, got {sigma}.")
    return max(schedule.timestep_of_sigma(sigma), 0)


def betas_linear(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM (Ho et al. 2020, §4): β linear in t."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def betas_scaled_linear(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent Diffusion / Stable Diffusion: √β linear in t."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def betas_cosine(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): ᾱ_t = cos²(((t/T)+s)/(1+s)·π/2)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def schedule_from_betas(betas: torch.Tensor, prediction_type: str = "epsilon") -> NoiseSchedule:
    """ᾱ_t = Π_{s≤t} (1 − β_s)."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    return NoiseSchedule(torch.cumprod(1 - betas, dim=0), prediction_type)


def schedule_from_sigmas(sigmas: torch.Tensor, prediction_type: str = "epsilon") -> NoiseSchedule:
    """ᾱ_t = 1/(1 + σ_t²): recovers ᾱ from a k-diffusion / ComfyUI sigma table."""
    return NoiseSchedule(alphas_cumprod_of(sigmas), prediction_type)


def schedule_from_diffusers_config(config: dict) -> NoiseSchedule:
    """Build the schedule a diffusers scheduler config describes (DDPM/DDIM-style keys)."""
    n = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 2e-2))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    elif kind == "linear":
        betas = betas_linear(n, start, end)
    elif kind == "scaled_linear":
        betas = betas_scaled_linear(n, start, end)
    elif kind in ("squaredcos_cap_v2", "cosine"):
        betas = betas_cosine(n)
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2.")
    return schedule_from_betas(betas, config.get("prediction_type", "epsilon"))


def timestep_grid(num_steps: int, num_train_timesteps: int = 1000, kind: str = "asyrp",
                  t_max: int | None = None) -> tuple[int, ...]:
    """Timesteps visited by an N-step sampler, in decreasing order.

    - ``asyrp``: the inclusive grid of Asyrp / DiffStyle's official code, int(linspace(0, 1, N)·t_max + 1e-6)
      (truncated, not rounded; t_max = T−1 by default);
    - ``leading`` / ``trailing``: the DDIM spacings of diffusers (Lin et al. 2024, Table 2);
    - ``uniform``: ComfyUI's ``ddim_uniform`` (1, 1+k, 1+2k, …, k = T // N).
    """
    T = int(num_train_timesteps)
    if num_steps < 1 or num_steps > T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}.")
    if kind == "asyrp":
        top = T - 1 if t_max is None else int(t_max)
        if not 0 <= top < T:
            raise ValueError(f"t_max must be in [0, {T - 1}], got {top}.")
        grid = np.array([int(s + 1e-6) for s in np.linspace(0, 1, num_steps) * top], dtype=np.int64)
    elif kind == "leading":
        grid = np.arange(num_steps, dtype=np.int64) * (T // num_steps)
    elif kind == "trailing":
        grid = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64)[::-1] - 1
    elif kind == "uniform":
        grid = 1 + np.arange(num_steps, dtype=np.int64) * (T // num_steps)
    else:
        raise ValueError(f"grid kind {kind!r} is unknown; use one of {GRID_KINDS}.")
    grid = np.unique(grid.clip(0, T - 1))
    if len(grid) != num_steps:
        raise ValueError(f"{num_steps} steps do not fit on a {kind!r} grid of {T} timesteps without repeats.")
    return tuple(int(t) for t in grid[::-1])


def gamma_ramp(gamma_start: float, gamma_end: float, t_edit: int, t_max: int = 999):
    """Content strength γ_t of DiffStyle's injection, linear in t from ``gamma_start`` at t = t_max to ``gamma_end``
    at t = t_edit (held outside that range); a constant when the two are equal.

    γ rising toward t_edit injects most where h carries the content's layout: on the bundled demo model, γ from 0
    to 1 moves more of the content's shape and less of its background than a constant γ = 0.8.
    """
    for name, g in (("gamma_start", gamma_start), ("gamma_end", gamma_end)):
        if not (isinstance(g, (int, float)) and 0.0 <= g <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {g!r}.")
    if gamma_start == gamma_end or t_max <= t_edit:
        return float(gamma_end)
    span = float(t_max - t_edit)
    return lambda t: gamma_end + (gamma_start - gamma_end) * min(1.0, max(0.0, (t - t_edit) / span))


def step_pairs(grid: tuple[int, ...]) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of the reverse process; the last one lands on −1, the clean image."""
    return list(zip(grid, (*grid[1:], -1)))
