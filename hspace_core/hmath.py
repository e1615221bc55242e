"""Math in h-space: normalised Slerp (DiffStyle / InjectFusion), masks at h resolution, interpolation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .devices import wide_dtype

_COLLINEAR = 1e-4  # below this sin θ, slerp is numerically a lerp


def slerp(a: torch.Tensor, b: torch.Tensor, gamma: float | torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Spherical interpolation Slerp(a, b, γ) = sin((1−γ)θ)/sin θ·a + sin(γθ)/sin θ·b, θ = ∠(a, b).

    Angles are taken per sample over the whole C×H×W tensor (or per channel over H×W).  NaN-safe: θ comes from
    atan2, never outside [0, π]; nearly parallel pairs (sin θ → 0, θ → 0) are a lerp, which is exact there; nearly
    antipodal pairs (θ → π, where the great circle is not unique) rotate from a toward b in the plane of a and b's
    component orthogonal to a (any fixed plane orthogonal to a when there is none), so the norm still goes
    smoothly from ‖a‖ to ‖b‖ (equal norms, as in ``normalized_slerp``, are kept).
    Computed in float64 on the CPU and float32 elsewhere (``devices.wide_dtype``; half-precision h too), cast back
    to a's dtype, with no host read (both branches are computed and selected on the device).
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    flat_dims = 2 if per_channel else 1
    wide = wide_dtype(a.device)
    af, bf = a.flatten(flat_dims).to(wide), b.flatten(flat_dims).to(wide)
    gamma = torch.as_tensor(gamma).to(a.device, wide)
    gamma = gamma.reshape(-1, *([1] * (af.dim() - 1))) if gamma.dim() else gamma
    norm_a, norm_b = af.norm(dim=-1, keepdim=True), bf.norm(dim=-1, keepdim=True)
    a_hat, b_hat = af / norm_a.clamp_min(1e-30), bf / norm_b.clamp_min(1e-30)
    # θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖) (Kahan): accurate to the working precision near 0 and π, where arccos is not
    theta = 2 * torch.atan2((a_hat - b_hat).norm(dim=-1, keepdim=True), (a_hat + b_hat).norm(dim=-1, keepdim=True))
    sin, cos = torch.sin(theta), torch.cos(theta)
    safe = sin.abs() > _COLLINEAR
    sin_safe = torch.where(safe, sin, torch.ones_like(sin))
    wa = torch.where(safe, torch.sin((1 - gamma) * theta) / sin_safe, 1 - gamma)
    wb = torch.where(safe, torch.sin(gamma * theta) / sin_safe, gamma)
    out = wa * af + wb * bf
    antipodal = ~safe & (cos < 0)
    out = torch.where(antipodal, _rotate_toward(af, bf, norm_a, norm_b, theta, gamma), out)
    return out.reshape(a.shape).to(a.dtype)


def _rotate_toward(af, bf, norm_a, norm_b, theta, gamma):
    """((1−γ)‖a‖ + γ‖b‖)·(cos(γθ)·â + sin(γθ)·û): Slerp written in the plane (â, û), û ⟂ â.

    û is the unit part of b orthogonal to a; when b is exactly −a it is the unit vector of a's smallest
    coordinate, made orthogonal to a (deterministic, so the same inputs give the same output)."""
    a_hat = af / norm_a.clamp_min(1e-30)
    u = bf - (bf * a_hat).sum(-1, keepdim=True) * a_hat
    fallback = torch.zeros_like(af).scatter_(-1, a_hat.abs().argmin(-1, keepdim=True), 1.0)
    fallback = fallback - (fallback * a_hat).sum(-1, keepdim=True) * a_hat
    u = torch.where(u.norm(dim=-1, keepdim=True) > 1e-12 * norm_b.clamp_min(1e-30), u, fallback)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    radius = (1 - gamma) * norm_a + gamma * norm_b
    return radius * (torch.cos(gamma * theta) * a_hat + torch.sin(gamma * theta) * u)


def normalized_slerp(h: torch.Tensor, h_content: torch.Tensor, gamma: float | torch.Tensor,
                     per_channel: bool = False) -> torch.Tensor:
    """h̃ = Slerp(h, h_c·‖h‖/‖h_c‖, γ)  (InjectFusion / DiffStyle, content injection).

    γ = 0 returns h, γ = 1 returns the content h rescaled to h's norm; the norm of the result stays ‖h‖.
    """
    if h.shape != h_content.shape:
        raise ValueError(
            f"Content h has shape {tuple(h_content.shape)} but the generation's h has {tuple(h.shape)}: "
            "invert the content and style images at the same size (and with the same model)."
        )
    check_gamma(gamma)
    flat_dims = 2 if per_channel else 1
    wide = wide_dtype(h.device)
    norm_h = h.flatten(flat_dims).to(wide).norm(dim=-1)
    norm_c = h_content.flatten(flat_dims).to(wide).norm(dim=-1).clamp_min(1e-12)
    ratio = (norm_h / norm_c).reshape(*norm_h.shape, *([1] * (h.dim() - norm_h.dim())))
    return slerp(h, h_content * ratio, gamma, per_channel=per_channel)


def masked_normalized_slerp(h: torch.Tensor, h_content: torch.Tensor, gamma: float | torch.Tensor,
                            mask_h: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """InjectFusion's local mixing: h̃ = NSlerp(m⊙h, m⊙h_c, γ) + (1 − m)⊙h.

    Both maps are masked *before* the Slerp, so its angle and the norm ratio ‖m⊙h‖/‖m⊙h_c‖ are those of the
    masked region, and the mixed region is inserted into the original map.  ``mask_h`` is (B or 1, 1, H, W) on
    h's grid (``mask_to_h_grid``); soft values weight both the region and the insertion.  (The official code
    leaves out the norm ratio in this branch; we keep the paper's normalised Slerp, so that a mask of ones
    gives exactly ``normalized_slerp``.)
    """
    m = mask_h.to(h.dtype)
    return normalized_slerp(m * h, m * h_content, gamma, per_channel) + (1 - m) * h


def check_gamma(gamma) -> None:
    """γ must be finite and in [0, 1]."""
    g = torch.as_tensor(gamma).detach().to("cpu", torch.float64)
    if not torch.isfinite(g).all() or (g < 0).any() or (g > 1).any():
        raise ValueError(f"γ must be in [0, 1] (0 keeps the style's h, 1 takes the content's), got {gamma}.")


def mask_to_h_grid(mask: torch.Tensor, h_shape: torch.Size | tuple) -> torch.Tensor:
    """Resize a mask of any size to h's H×W grid (area average, so soft edges stay soft).

    Accepts (H, W), (B, H, W) or (B, 1, H, W) with values in [0, 1]; returns (B or 1, 1, h_H, h_W).
    """
    mask = torch.as_tensor(mask)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"A mask needs one channel, got shape {tuple(mask.shape)}; pass (B, 1, H, W) or (B, H, W).")
    else:
        raise ValueError(f"A mask must be (H, W), (B, H, W) or (B, 1, H, W); got rank {mask.dim()}.")
    mask = mask.float()
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("Mask values must be finite and in [0, 1] (1 = mix here, 0 = keep the original).")
    batch = h_shape[0]
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"The mask has {mask.shape[0]} entries but the batch has {batch}; pass one mask or one per image.")
    target = tuple(h_shape[-2:])
    if tuple(mask.shape[-2:]) != target:
        mask = F.interpolate(mask, size=target, mode="area" if mask.shape[-1] >= target[-1] else "bilinear",
                             **({} if mask.shape[-1] >= target[-1] else {"align_corners": False}))
    return mask.clamp(0, 1)


def masked_blend(h: torch.Tensor, h_new: torch.Tensor, mask_h: torch.Tensor | None) -> torch.Tensor:
    """m·h̃ + (1 − m)·h: outside the mask h is untouched."""
    if mask_h is None:
        return h_new
    m = mask_h.to(h.dtype)
    return h + m * (h_new - h)


def lerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 − w)·a + w·b — Diffusion Autoencoders interpolate the semantic code linearly (exact at w = 0 and 1)."""
    return torch.lerp(a, b, weight)


def check_rows(x: torch.Tensor, what: str) -> torch.Tensor:
    """A (rows, features) matrix of h, checked finite, in ``devices.wide_dtype`` (PCA and probes fit in float64 on the
    CPU, float32 on other devices)."""
    if x.dim() != 2:
        raise ValueError(f"{what} must be (rows, features); got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf: capture the trajectories again (the model or its input diverged).")
    return x.to(wide_dtype(x.device))



def fix_signs(v: torch.Tensor) -> torch.Tensor:
    """+1/−1 per row so that each row's largest-magnitude entry is positive (singular vectors have no sign)."""
    idx = v.abs().argmax(dim=1, keepdim=True)
    return torch.where(v.gather(1, idx)[:, 0] >= 0, 1.0, -1.0).to(v.dtype)

