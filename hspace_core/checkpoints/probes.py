"""Probe images for the checks that compare a checkpoint's candidate settings by denoising loss (the head split,
the σ preconditioning), and the paired statistics those comparisons use.

Smooth random fields make a poor probe: every candidate denoises them about equally (on a trained consistency model
the 13 head splits came within 0.5 % of each other).  The default probes have what images have and noise lacks:
flat regions, sharp edges and colour.  A few images of the model's own domain are better still.
"""
from __future__ import annotations

import math

import torch

__all__ = ["structured_probes", "checked_probe_images", "paired_log_ratio"]


def structured_probes(count: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """``count`` images (count, channels, size, size) in [−1, 1]: a two-colour linear gradient with three
    flat-coloured ellipses or rectangles on it (sharp edges), from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return torch.rand(*shape, generator=g)

    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = axis.view(1, size, 1), axis.view(1, 1, size)
    angle = uniform(count, 1, 1) * 2 * math.pi
    ramp = (xx - 0.5) * angle.cos() + (yy - 0.5) * angle.sin() + 0.5  # (count, size, size), about 0 … 1
    low, high = uniform(count, channels, 1, 1) * 2 - 1, uniform(count, channels, 1, 1) * 2 - 1
    images = low + (high - low) * ramp.unsqueeze(1).clamp(0, 1)
    for _ in range(3):
        centre_y, centre_x = uniform(count, 1, 1), uniform(count, 1, 1)
        radius_y, radius_x = 0.1 + 0.25 * uniform(count, 1, 1), 0.1 + 0.25 * uniform(count, 1, 1)
        dy, dx = (yy - centre_y) / radius_y, (xx - centre_x) / radius_x
        ellipse = dy**2 + dx**2 <= 1
        rectangle = (dy.abs() <= 1) & (dx.abs() <= 1)
        mask = torch.where(uniform(count, 1, 1) < 0.5, ellipse, rectangle).unsqueeze(1)
        images = torch.where(mask, uniform(count, channels, 1, 1) * 2 - 1, images)
    return images.clamp(-1, 1)


def checked_probe_images(images, channels: int, what: str) -> torch.Tensor:
    """``images`` as a float tensor (B, channels, H, W) in [−1, 1], else a ValueError saying what ``what`` needs."""
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{what}: images must be a float tensor (B, {channels}, H, W) in [−1, 1], got {shape}.")
    if images.shape[1] != channels or images.shape[0] < 1 or min(images.shape[2:]) < 8:
        raise ValueError(f"{what}: images must be (B, {channels}, H, W) with H, W ≥ 8 (this model takes {channels} "
                         f"channels), got {tuple(images.shape)}.")
    if not bool(torch.isfinite(images).all()) or float(images.abs().max()) > 1.0 + 1e-3:
        raise ValueError(f"{what}: images must be finite and in [−1, 1] (x·2 − 1 for images in [0, 1]), got values "
                         f"from {float(images.min()):g} to {float(images.max()):g}.")
    return images.detach().float().cpu()


def paired_log_ratio(losses: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of log(losses / reference), both (levels, images) measured on the same images and
    noise: how much worse (> 0) or better (< 0) one candidate denoises than another, and how surely.  The images
    are the independent samples: the log ratio is averaged over the levels of each image, and the standard error is
    that of the mean over images (over the cells when there is one image, which understates it)."""
    ratio = _finite(losses).log() - _finite(reference).log()
    per_image = ratio.mean(dim=0) if ratio.shape[1] > 1 else ratio.flatten()
    stderr = float(per_image.std() / math.sqrt(per_image.numel())) if per_image.numel() > 1 else math.inf
    return float(ratio.mean()), stderr


def _finite(losses: torch.Tensor) -> torch.Tensor:
    """Losses in [1e-30, 1e30]: a candidate whose output overflows (NaN, inf) counts as very bad, not as NaN."""
    return torch.nan_to_num(losses.double(), nan=1e30, posinf=1e30).clamp(1e-30, 1e30)
