"""Directions nobody had to label: principal components of h_t over many images (Haas et al. 2023, "Discovering
interpretable directions in h-space of diffusion models", §3: PCA of the bottleneck activations, per timestep or
pooled)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .devices import wide
from .direction import Direction
from .hmath import check_rows, fix_signs
from .trajectory import HTrajectory, stack_trajectories

__all__ = ["NORMALISATIONS", "PCAResult", "principal_components", "pca_directions"]

NORMALISATIONS = ("position", "standardise", "none")


@dataclass(frozen=True)
class PCAResult:
    """Unit principal axes in h units (k, D), the variance of the data along each (k,) and its share of the total."""

    axes: torch.Tensor
    variance: torch.Tensor
    explained: torch.Tensor



def _position_scale(x: torch.Tensor, h_shape: tuple[int, ...], normalisation: str) -> torch.Tensor:
    """The per-feature scale s that the data is divided by before PCA (1 for "none").

    "position": s is the RMS norm over the data of the centred channel vector at each spatial position, shared by
    that position's channels — every position then carries the same variance, so a few high-norm outlier positions
    cannot take the leading components.  "standardise": s is each coordinate's own standard deviation (z-scores)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} is unknown; use one of {NORMALISATIONS}.")
    if normalisation == "none":
        return torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
    if normalisation == "standardise":
        return x.std(0).clamp_min(1e-12)
    c, hh, ww = h_shape
    per_position = x.reshape(x.shape[0], c, hh * ww).pow(2).sum(1).mean(0).sqrt()  # (H·W,)
    return per_position.clamp_min(1e-12)[None].expand(c, -1).reshape(-1)


def principal_axes(singular: torch.Tensor, vh: torch.Tensor, scale: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """The top ``k`` unit axes in h units (k, D) from the singular values (descending) and right singular vectors
    (rows of ``vh``) of ``rows`` scaled rows: the rank check, s⊙ṽ renormalised, the sign fixed
    (``principal_components``; ``jobs.moments`` gives them from the scatter's eigenvectors)."""
    rank = int((singular > singular.max() * max(rows, vh.shape[-1]) * torch.finfo(vh.dtype).eps * 16).sum())
    if rank == 0:
        raise ValueError(f"The h of these {rows} rows are all the same (nothing varies between the images), so "
                         "there is no principal direction: invert or capture different images.")
    if not 1 <= k <= rank:
        raise ValueError(f"k = {k} principal directions were asked for, but the centred h of these {rows} rows "
                         f"has rank {rank}: set k between 1 and {rank}, or add images.")
    axes = vh[:k] * scale
    axes = axes / axes.norm(dim=1, keepdim=True)
    return axes * fix_signs(axes)[:, None]


def principal_components(x: torch.Tensor, k: int, h_shape: tuple[int, ...], normalisation: str = "position") -> PCAResult:
    """PCA of already centred rows ``x`` (N, D) after dividing each feature by ``_position_scale``; the axes are
    mapped back to h units (a unit axis ṽ of the scaled data is h-direction s⊙ṽ, renormalised) and the variance
    reported is the raw data's along that h-direction.  Exact SVD (``torch.linalg.svd``) in float64 on the CPU
    (float32 on other devices)."""
    x = check_rows(x, "h")
    scale = _position_scale(x, h_shape, normalisation)
    _, singular, vh = torch.linalg.svd(x / scale, full_matrices=False)
    axes = principal_axes(singular, vh, scale, k, x.shape[0])
    variance = (x @ axes.T).pow(2).sum(0) / max(x.shape[0] - 1, 1)
    total = x.pow(2).sum() / max(x.shape[0] - 1, 1)
    return PCAResult(axes, variance, variance / total)



def pca_directions(trajectories: HTrajectory | Sequence[HTrajectory], k: int, *, form: str = "global",
                   normalisation: str = "position", name: str = "pca") -> list[Direction]:
    """The top ``k`` principal directions of h over the images of ``trajectories`` (Haas et al. 2023).

    ``form="global"`` pools every (image, timestep) row after removing each timestep's mean h (so the components
    describe how images differ, not how h changes with t) and gives one Δh per component.  ``form="per_timestep"``
    runs a PCA at each timestep and gives Δh_t; component i's sign at each t is chosen to agree with t's neighbour
    (its order is the PCA's own at each t).  ``normalisation`` (see ``_position_scale``, default per-position
    normalisation) tames high-norm outlier positions.  Each Δh (Δh_t) has the length of one standard deviation of h
    along it, so strength 1 moves h by one typical between-image difference.  Metadata: method, component index,
    explained variance (share; per timestep: the mean over t) and the normalisation.
    """
    if form not in ("global", "per_timestep"):
        raise ValueError(f"form must be 'global' or 'per_timestep', got {form!r}.")
    h, first = stack_trajectories(trajectories)
    if h.shape[1] < 2:
        raise ValueError(f"PCA needs at least 2 images, got {h.shape[1]}: invert or capture more images.")
    shape = first.h_shape
    centred = wide(h) - wide(h).mean(1, keepdim=True)
    meta = lambda i, explained: {"method": "pca", "component": i, "explained_variance": float(explained),
                                 "normalisation": normalisation, "images": int(h.shape[1])}
    if form == "global":
        pca = principal_components(centred.reshape(-1, centred.shape[-1]), k, shape, normalisation)
        return [Direction("global", (pca.axes[i] * pca.variance[i].sqrt()).float().reshape(shape),
                          fingerprint=first.fingerprint, name=f"{name} {i}", metadata=meta(i, pca.explained[i]),
                          site=first.site, made_with=first.made_with)
                for i in range(k)]
    per_t = [principal_components(centred[s], k, shape, normalisation) for s in range(centred.shape[0])]
    deltas, signs = [], torch.ones(k, dtype=centred.dtype, device=centred.device)
    for s, pca in enumerate(per_t):
        axes = pca.axes
        if s:
            signs = torch.where((axes * deltas[-1]).sum(1) >= 0, 1.0, -1.0).to(axes.dtype)
        deltas.append(axes * signs[:, None] * pca.variance.sqrt()[:, None])
    stacked = torch.stack(deltas, 1)  # (k, steps, D)
    explained = torch.stack([p.explained for p in per_t]).mean(0)
    return [Direction("per_timestep", stacked[i].float().reshape(-1, *shape), first.timesteps,
                      fingerprint=first.fingerprint, name=f"{name} {i}", metadata=meta(i, explained[i]),
                      site=first.site, made_with=first.made_with)
            for i in range(k)]
