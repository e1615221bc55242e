"""Asyrp's automatic choice of t_edit and t_boost (Kwon et al. 2023, §4.1 and §4.2).

t_edit is the smallest t with LPIPS(x, P_t) ≥ 0.33 (the threshold scaled by the CLIP cosine between the
source and target texts when one is given, as the official code does); t_boost is the smallest t with
LPIPS(x, x_t) ≥ 1.2.  x_t is the forward-noised image and P_t the network's predicted x0 from it.

On a flow-matching model (rectified flow: Flux, SD3) t indexes the model's own σ table, x_t is the flow's point
x_σ = (1 − σ)·x0 + σ·ε (``NoiseLevels.signal``) and P_t its denoised prediction D(x_σ, σ); the thresholds are the
paper's, measured on DDPM U-Nets (not re-derived for flow).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .adapters.base import HSpaceModel, denoise_at, levels_of
from .ddim import predicted_x0
from .progress import StepLoop, check_batch

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (a, b) images → per-sample distance


@dataclass(frozen=True)
class AutoScheduleResult:
    """What ``find_t_edit_t_boost`` found: t_edit and t_boost, the probed timesteps and the LPIPS distances (and
    thresholds) they were chosen by."""

    t_edit: int
    t_boost: int
    timesteps: tuple[int, ...]
    distance_to_prediction: tuple[float, ...]  # LPIPS(x, P_t)
    distance_to_noisy: tuple[float, ...]  # LPIPS(x, x_t)
    edit_threshold: float
    boost_threshold: float


def lpips_distance(net: str = "alex", device: str | torch.device = "cpu") -> Distance:
    """LPIPS (Zhang et al. 2018) with the ``lpips`` package; images in [-1, 1].  Downloads AlexNet on first use."""
    import lpips

    model = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return model(a.float().to(device), b.float().to(device)).flatten()

    return distance


def find_t_edit_t_boost(model: HSpaceModel, x0: torch.Tensor, *, distance: Distance | None = None,
                        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        text_cosine: float | None = None, edit_threshold: float = 0.33,
                        boost_threshold: float = 1.2, num_probes: int = 50, seed: int = 0,
                        progress=None, should_stop=None) -> AutoScheduleResult:
    """Probe ``num_probes`` timesteps and return the thresholds' crossing points.

    ``decode`` maps model space to images (the VAE for latent models).  Distances are averaged over the batch.
    """

    check_batch(x0, "The image / latent")
    if num_probes < 2:
        raise ValueError(f"num_probes must be ≥ 2, got {num_probes}.")
    distance = distance or lpips_distance()
    decode = decode or (lambda x: x)
    threshold = edit_threshold * (text_cosine if text_cosine is not None else 1.0)
    levels = levels_of(model)
    T = levels.num_timesteps
    probes = levels.widget_timesteps(num_probes)  # entries a t widget names (Flux: every ≈ 10th of 10000)
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    image = decode(x0)
    loop = StepLoop(len(probes), progress, should_stop)
    d_pred, d_noisy = [], []
    for t in probes:
        loop.tick()
        x_t, p_t = _noisy_and_predicted(model, levels, x0, noise, t)
        loop.show(p_t)
        d_pred.append(float(distance(image, decode(p_t)).mean()))
        d_noisy.append(float(distance(image, decode(x_t)).mean()))
    t_edit = next((t for t, d in zip(probes, d_pred) if d >= threshold), T - 1)
    t_boost = next((t for t, d in zip(probes, d_noisy) if d >= boost_threshold), T - 1)
    return AutoScheduleResult(t_edit, min(t_boost, t_edit), tuple(probes), tuple(d_pred), tuple(d_noisy),
                        threshold, boost_threshold)


def _noisy_and_predicted(model: HSpaceModel, levels, x0: torch.Tensor, noise: torch.Tensor, t: int):
    """(x_t, P_t) at table entry t: DDPM's x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε and P_t from ε (DDIM eq. 12), or, on flow
    matching, P = D(x_σ, σ) (the denoiser's x0, ``denoise_at``) at x_σ = (1 − σ)·x0 + σ·ε, and as x_t the same point
    at unit variance, x_σ/√((1 − σ)² + σ²) (``NoiseLevels.unit_scale``): DDPM's x_t of the same signal-to-noise ratio,
    so LPIPS(x, x_t) is measured on the image the paper's boost threshold was set on, not on a darker flow point."""
    if levels.flow:
        sigma = levels.sigma(t)
        x_sigma = levels.signal(sigma) * x0 + sigma * noise
        return x_sigma / levels.unit_scale(sigma), denoise_at(model, x_sigma, sigma, t=t)[0]
    a = model.schedule.alpha_bar(t)
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * noise
    return x_t, predicted_x0(x_t, model.predict(x_t, t).eps, a)
