"""Does a σ-parameterised checkpoint denoise best with the settings it was declared with?

The weights record neither the preconditioning ("edm" or "consistency") nor σ_data, and a wrong one loads silently:
the network still runs, only worse.  ``check_sigma_settings`` measures the denoising loss ‖D(x0 + σ·ε, σ) − x0‖²
(Karras et al. 2022, eq. 2, without the loss weighting: every comparison is at one σ) of the declared settings and of
the alternatives on the same probe images and noise, at noise levels from 2.5·σ_min to 1:

- ``parameterization`` "edm" against "consistency": the scalings differ only through σ − σ_min, so the small
  levels separate them (c_out differs by a factor 0.6 at σ = 0.005 when σ_min = 0.002);
- ``sigma_data`` against 0.5, 1 and 0.25: c_in = 1/√(σ² + σ_d²) sets the scale the network sees;
- ``sigma_min`` (consistency only) against 0.002; ``c_noise`` against the other convention.

A consistency model's D is a one-step sampler, not the posterior mean, so at large σ a blurrier (wrong) candidate
can have the lower squared error: the levels stop at σ = 1, where D is still close to x0.  Inversion PSNR is no
check: a wrong σ_data can invert better than the right one (issue 36).

The comparison is paired (same images, same noise) on log losses; a candidate counts as better only when it beats
the declared settings by ``MARGIN`` and by ``BAND_Z`` standard errors (``probes.paired_log_ratio``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import torch

from .preconditioning import consistency_scalings, edm_scalings, network_output, noise_input
from .probes import checked_probe_images, paired_log_ratio, structured_probes
from .settings import C_NOISE, SIGMA_PARAMETERIZATIONS, CheckpointSettings

log = logging.getLogger("hspace")
PROBE_SIGMAS = (0.005, 0.01, 0.03, 0.1, 0.3, 1.0)
SIGMA_DATA_CANDIDATES = (0.5, 1.0, 0.25)
SIGMA_MIN_CANDIDATES = (0.002,)
MARGIN = math.log(1.1)  # 10 % lower loss: see the module docstring and docs/adapters.md for how it was chosen
BAND_Z = 3.0
DEFAULT_PROBES = 6
__all__ = ["SettingsCheck", "check_sigma_settings", "PROBE_SIGMAS", "SIGMA_DATA_CANDIDATES"]


@dataclass(frozen=True)
class SettingsCheck:
    """What ``check_sigma_settings`` found.  ``candidates``: (settings, log loss ratio to the declared ones, its
    standard error), best first, the declared ones among them at 0; ``better``: the settings that denoise clearly
    better than the declared ones, or None; ``separated``: whether any candidate differed from the declared ones
    by the margin at all (False: the probes could not tell the settings apart); ``message``: one line to show."""

    declared: dict
    candidates: tuple[tuple[dict, float, float], ...]
    better: dict | None
    separated: bool
    probes: str
    message: str


def _describe(settings: dict) -> str:
    return ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in settings.items())


def candidate_settings(settings: CheckpointSettings) -> list[dict]:
    """The declared σ settings first, then every alternative (module docstring), distinct by what they compute
    (σ_min does not enter EDM's scalings)."""
    declared = {"parameterization": settings.parameterization, "sigma_data": settings.sigma_data,
                "sigma_min": settings.sigma_min, "c_noise": settings.noise_input}
    found = [declared]
    for parameterization in SIGMA_PARAMETERIZATIONS:
        for sigma_data in dict.fromkeys((settings.sigma_data, *SIGMA_DATA_CANDIDATES)):
            for c_noise in dict.fromkeys((settings.noise_input, *C_NOISE)):
                minima = (dict.fromkeys((settings.sigma_min, *SIGMA_MIN_CANDIDATES))
                          if parameterization == "consistency" else (settings.sigma_min,))
                for sigma_min in minima:
                    candidate = {"parameterization": parameterization, "sigma_data": sigma_data,
                                 "sigma_min": sigma_min, "c_noise": c_noise}
                    if candidate not in found:
                        found.append(candidate)
    return found


def denoised(network_out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, candidate: dict,
             clip: bool) -> torch.Tensor:
    """D = c_skip·x + c_out·F for ``candidate``'s scalings (``preconditioning``), clamped to [−1, 1] if ``clip``."""
    if candidate["parameterization"] == "consistency":
        c_skip, c_out, _ = consistency_scalings(sigma, candidate["sigma_data"], candidate["sigma_min"])
    else:
        c_skip, c_out, _ = edm_scalings(sigma, candidate["sigma_data"])
    out = c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * network_out
    return out.clamp(-1, 1) if clip else out


@torch.no_grad()
def check_sigma_settings(unet: torch.nn.Module, settings: CheckpointSettings, images: torch.Tensor | None = None, *,
                         name: str = "the checkpoint", sigmas: tuple[float, ...] = PROBE_SIGMAS, seed: int = 0,
                         size: int | None = None) -> SettingsCheck:
    """Compare the declared σ settings of ``unet`` (the converted ``UNet2DModel`` F, as ``read_checkpoint`` gives
    it) with the alternatives by denoising loss (module docstring).

    ``images``: (B, C, H, W) in [−1, 1], a few images of the model's domain; else ``DEFAULT_PROBES`` structured
    probes of ``size`` px (``probes.structured_probes``; default 2^levels, at least 16: 2 px at the bottleneck),
    which separate less surely: the message says which were used.  Runs on the U-Net's device and dtype; the same seeded noise for every candidate."""
    if not settings.sigma_parameterised:
        raise ValueError(f"{name}: parameterization {settings.parameterization!r} has no σ preconditioning to check.")
    parameter = next(unet.parameters())
    channels = unet.config.in_channels
    if images is None:
        size = size or max(16, 2 ** len(unet.config.block_out_channels))
        images, probes = structured_probes(DEFAULT_PROBES, size, channels, seed), (
            f"{DEFAULT_PROBES} synthetic probes (give images of the model's domain for a surer check)")
    else:
        images = checked_probe_images(images, channels, f"{name}: the settings check")
        probes = f"your {images.shape[0]} image(s)"
    levels = [s for s in sigmas if 2.5 * settings.sigma_min <= s <= settings.sigma_max]
    if not levels:
        raise ValueError(f"{name}: none of the probe noise levels {sigmas} lies in [2.5·sigma_min, sigma_max] = "
                         f"[{2.5 * settings.sigma_min:g}, {settings.sigma_max:g}]; pass sigmas= inside the model's range.")
    count = images.shape[0]
    # The noise at σ = 0.005 is below half precision's resolution near 1: images, noise and scalings stay in at
    # least float32, and only the network runs in its own dtype.
    work = torch.promote_types(parameter.dtype, torch.float32)
    x0 = images.repeat(len(levels), 1, 1, 1).to(parameter.device, work)
    sigma = torch.tensor(levels, dtype=torch.float64).repeat_interleave(count).to(parameter.device, work)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1)).to(x0)
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    outputs = {}  # F depends on σ_data (through c_in) and c_noise only

    def losses(candidate: dict) -> torch.Tensor:
        key = (candidate["sigma_data"], candidate["c_noise"])
        if key not in outputs:
            _, _, c_in = edm_scalings(sigma, candidate["sigma_data"])
            x_in, c_noise = c_in.view(-1, 1, 1, 1) * x, noise_input(sigma, candidate["c_noise"])
            outputs[key] = network_output(unet, x_in.to(parameter.dtype), c_noise.to(parameter.dtype)).to(work)
        d = denoised(outputs[key], x, sigma, candidate, settings.clip_denoised)
        return ((d - x0) ** 2).mean(dim=(1, 2, 3)).view(len(levels), count)

    candidates = candidate_settings(settings)
    measured = [losses(candidate) for candidate in candidates]
    scored = sorted(((candidate, *paired_log_ratio(loss, measured[0]), loss)
                     for candidate, loss in zip(candidates, measured)), key=lambda item: item[1])
    best, ratio, stderr, best_losses = scored[0]
    # A denoiser beats doing nothing (loss σ² per pixel) on images of its domain; one that cannot, even with the
    # best settings, is being shown foreign images, whose ranking says nothing about the settings.
    foreign = float(best_losses[0].mean()) > levels[0] ** 2
    clearly = not foreign and ratio < -MARGIN and ratio + BAND_Z * stderr < 0
    separated = not foreign and any(abs(r) >= MARGIN for _, r, _, _ in scored)
    declared = candidates[0]
    if clearly:
        changes = {k: v for k, v in best.items() if v != declared[k]}
        message = (f"{name}: the declared settings ({_describe(declared)}) denoise {probes} "
                   f"{100 * (math.exp(-ratio) - 1):.0f} % worse than {_describe(changes)} (loss ×{math.exp(-ratio):.2f} "
                   f"over σ {', '.join(f'{s:g}' for s in levels)}): the model was probably trained with "
                   f"{_describe(changes)}. Set that if its training code or model card agrees.")
    elif foreign:
        message = (f"{name}: the settings check cannot judge the declared settings ({_describe(declared)}) on "
                   f"{probes}: with the best candidate the model denoises them worse than leaving the noise in at "
                   f"σ = {levels[0]:g}, so they are foreign to it. Nothing was confirmed or refuted; give images of "
                   "the model's domain.")
    elif not separated:
        message = (f"{name}: the settings check could not separate the candidates on {probes}: every alternative "
                   f"denoises within {100 * (math.exp(MARGIN) - 1):.0f} % of the declared settings "
                   f"({_describe(declared)}). Nothing was confirmed or refuted.")
    else:
        message = (f"{name}: the declared settings ({_describe(declared)}) denoise {probes} best or within the "
                   "margin of the best alternative.")
    scored = tuple((candidate, r, e) for candidate, r, e, _ in scored)
    return SettingsCheck(declared, scored, best if clearly else None, separated, probes, message)
