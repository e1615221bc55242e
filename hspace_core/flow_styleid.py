"""StyleID (Chung, Hyun & Heo, CVPR 2024) on a diffusion transformer under flow matching (Flux, SD3.x), with the
layers Stable Flow (Avrahami et al., CVPR 2025) finds vital in Flux.

A transformer block's attention is joint: its keys and values are [text; image] (Flux double blocks, SD3 joint
blocks: two streams concatenated; Flux single blocks: one sequence).  StyleID's self-attention K/V injection
(§4.1) becomes Stable Flow's attention injection: the **image tokens'** K and V are the style image's at the same σ,
taken as the block's qkv projection gives them, before its own QK-norm (Stable Flow's processors replace
``attn.to_k`` / ``attn.to_v``'s output the same way, ``key[1:] = key[:1]``); the text tokens' K/V stay the
generation's own.  Query preservation (§4.2, ``styleid.preserve_query``) blends the image tokens' query after the
QK-norm (the query the attention uses), and the temperature (§4.3) scales that query by τ, which scales every
logit by τ (``styleid.temperature_attention``'s rule; RoPE is linear, so scaling before it is the same).

The process (``record_flow_features``, ``flow_styleid``): Euler inversion of the flow ODE (``flow.invert_flow``)
records the style's K/V (or the content's Q) at the chosen blocks at each σ of the grid, as the official code records
along DDIM inversion, and h at the run's site along it (the content h of the combined mode); the generation runs Euler
on the same σ grid (``sampling.sample_h_edit`` with no edit: ComfyUI's ``euler`` step for step) from
AdaIN(x_T^c, x_T^s) (§4.4, ``styleid.adain``) with the features injected.  The combined mode (the U-Net path's,
``styleid.styleid_inject``) adds InjectFusion's content injection in the same run: in the steps of an h window,
h̃ = Slerp(h, h_c·‖h‖/‖h_c‖, γ_h) at the site (``styleid.combined_h_edit``), both predictions of the asymmetric
step carrying the K/V injection (the flow-matching asymmetric step of ``sampling.sample_h_edit``).

A patch is ``patch(layer, kind, value) -> value``: the access (ComfyUI's: ``nodes/comfy/dit_attention``) calls it at
each chosen block with the image tokens' ``kind`` ("k", "v": the qkv projection's parts; "q": after the QK-norm) as
(rows, tokens, heads·head_dim) and uses what it returns.  The denoiser ``denoise(x, i, patch, edit=None)`` returns
(D(x | h), D(x | h̃) or None, h at the site), ``hspace_core.denoise_at``'s shape, with ``edit(h, t, branch)`` the h
edit.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from .attention_store import STYLE_KINDS, AttentionFeatures, features_from_steps, keeps_window
from .flow import invert_flow
from .sampling import SigmaWindow, check_window_steps, sample_h_edit
from .styleid import StyleIDSettings, _rows, combined_h_edit, injection_start, preserve_query
from .trajectory import HStorage, HTrajectory

# Stable Flow's vital layers of FLUX.1-dev (run_stable_flow.py: MULTIMODAL_VITAL_LAYERS = [0, 1, 17, 18],
# SINGLE_MODAL_VITAL_LAYERS = [28, 53, 54, 56, 25] − 19 in the 57-layer count): the blocks whose bypass changes the
# generated image most (DINOv2 similarity, §3.1), where their injection edits and keeps the rest stable.
STABLE_FLOW_VITAL = ("double.0", "double.1", "double.17", "double.18",
                     "single.6", "single.9", "single.34", "single.35", "single.37")
TRANSFORMER_PRESETS = {"Stable Flow vital (Flux.1)": STABLE_FLOW_VITAL, "every block (transformer)": ("all",)}
log = logging.getLogger("hspace")
Patch = Callable[[str, str, torch.Tensor], torch.Tensor]
Denoise = Callable[..., tuple]  # denoise(x, i, patch, edit=None) -> (D(x | h), D(x | h̃) or None, h)
__all__ = ["STABLE_FLOW_VITAL", "TRANSFORMER_PRESETS", "recording_patch", "injection_patch", "record_flow_features",
           "flow_reverse", "flow_styleid"]


def recording_patch(step: dict, kinds, storage: HStorage) -> Patch:
    """Keeps ``kinds`` of every layer it sees in ``step[f"{layer}.{kind}"]`` (``storage.put``: a copy) and changes
    nothing; the last call at a layer wins (an inversion's refinements evaluate a σ again)."""

    def patch(layer, kind, value):
        if kind in kinds:
            step[f"{layer}.{kind}"] = storage.put(value)
        return value
    return patch


def injection_patch(style: AttentionFeatures, content_q: AttentionFeatures | None, settings: StyleIDSettings,
                    t: int) -> Patch:
    """At timestep ``t``: K, V ← the style's (every row: one style set for the batch, as the official code), and
    Q ← τ·(γ·Q_c + (1 − γ)·Q) (query preservation, then the temperature; γ needs ``content_q``)."""

    def patch(layer, kind, value):
        if kind in STYLE_KINDS:
            return _rows(style.at(t, layer, kind), value)
        q = value
        if content_q is not None and settings.gamma > 0:
            q = preserve_query(_rows(content_q.at(t, layer, "q"), q), q, settings.gamma)
        return q * settings.tau if settings.tau != 1 else q
    return patch


def _check_grid(sigmas: Sequence[float], timesteps: Sequence[int]) -> None:
    if len(sigmas) != len(timesteps) + 1 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"{len(sigmas)} sigmas (decreasing, ending at 0) need {len(sigmas) - 1} timesteps, got "
                         f"{len(timesteps)}.")
    if len(set(int(t) for t in timesteps)) != len(timesteps):
        raise ValueError("Two steps of this σ grid fall on the same model timestep: use fewer steps.")


def flow_reverse(denoise: Denoise, x_T: torch.Tensor, sigmas, patch_at: Callable[[int], "Patch | None"], *,
                 edit=None, edits: Sequence[bool] | None = None, omega: float | None = None, levels=None,
                 callback=None) -> torch.Tensor:
    """Euler from ``x_T`` at sigmas[0] to sigmas[-1] (``sampling.sample_h_edit`` with no edit: ComfyUI's ``euler``
    operation for operation), each step's denoiser calls made with ``patch_at(i)`` (None: the plain call); the
    steps flagged in ``edits`` also edit h by ``edit`` (the asymmetric step, or calibration with ``omega`` > 0)."""
    n = len(sigmas) - 1
    edits = [False] * n if edit is None or edits is None else list(edits)

    def step(x, i, edit_now):
        plain, edited, _ = denoise(x, i, patch_at(i), edit if edit_now else None)
        return plain, edited
    return sample_h_edit(step, x_T, sigmas, edits, omega=omega, levels=levels, callback=callback)


def record_flow_features(denoise: Denoise, x0: torch.Tensor, sigmas, timesteps: Sequence[int], layers, kinds, *,
                         window: tuple[int, int], source: str = "inversion", refine_iters: int = 0,
                         storage: HStorage = HStorage(), h_storage: HStorage | None = None, site: str = "",
                         branches=("single",), fingerprint: str = "", levels=None,
                         callback=None) -> tuple[torch.Tensor, torch.Tensor, AttentionFeatures, HTrajectory | None]:
    """Invert ``x0`` on the grid ``sigmas`` (decreasing, last 0; ``timesteps`` the model's timestep of each σ > 0)
    and record ``kinds`` of ``layers`` at the timesteps inside ``window`` (t_start ≥ t ≥ t_stop).

    ``denoise(x, i, patch)`` gives D(x, sigmas[i]) with ``patch`` on the layers (module docstring).  ``source``
    "inversion" (the official code's): every evaluation of the Euler inversion (``flow.invert_flow``), the last one
    at each σ; the top σ, which the inversion never evaluates without refinement, takes the last evaluation's
    features (as for U-Nets).
    "reconstruction": along the Euler pass back from x_T.  With ``h_storage``, h at ``site`` along the inversion
    (every grid timestep, the last evaluation at each; the top σ takes the last evaluation's h, as U-Net inversions
    do) is kept too: the content h of the combined mode (``flow_styleid``).  Returns (x_T, the reconstruction, the
    store, the h trajectory or None)."""
    from .styleid import FEATURE_SOURCES

    if source not in FEATURE_SOURCES:
        raise ValueError(f"features source {source!r} is unknown; use one of {FEATURE_SOURCES}.")
    _check_grid(sigmas, timesteps)
    grid = tuple(int(t) for t in timesteps)
    kept = {t for t in grid if keeps_window(t, window)}
    if not kept:
        raise ValueError(f"The window t = {window[0]} … {window[1]} holds no step of this {len(grid)}-step grid; "
                         "widen it.")
    n, per_step, h_at, last_h = len(grid), {}, {}, [None]

    def patch_at(t):
        return recording_patch(per_step.setdefault(t, {}), kinds, storage) if t in kept else None

    up = torch.flip(torch.as_tensor(sigmas), (0,))  # FlipSigmas: 0, σ_{n−1}, …, σ_0
    t_up = [None] + list(reversed(grid))

    def inverting(x, k):
        plain, _, h = denoise(x, n - k, patch_at(t_up[k]) if source == "inversion" else None)
        last_h[0] = h
        if h_storage is not None and h_storage.keeps(t_up[k]):
            h_at[t_up[k]] = h_storage.put(h)
        return plain

    x_T = invert_flow(inverting, x0, up, refine_iters=refine_iters)
    if source == "inversion" and grid[0] in kept and not per_step.get(grid[0]):
        last = next(t for t in reversed(t_up[1:-1]) if per_step.get(t)) if len(grid) > 1 else None
        if last is not None:
            per_step[grid[0]] = per_step[last]  # the top σ: the last evaluation's (see above)
    along = (lambda i: patch_at(grid[i])) if source == "reconstruction" else (lambda i: None)
    recon = flow_reverse(denoise, x_T, sigmas, along, levels=levels, callback=callback)
    features = features_from_steps({t: s for t, s in per_step.items() if s}, grid, layers, kinds, storage,
                                   fingerprint, source)
    trajectory = None
    if h_storage is not None:
        if grid[0] not in h_at and h_storage.keeps(grid[0]):
            h_at[grid[0]] = h_storage.put(last_h[0])  # the top σ: the last evaluation's (see above)
        kept = [t for t in grid if h_storage.keeps(t)]
        trajectory = h_storage.trajectory(grid, [h_at[t] for t in kept], branches, fingerprint, "inversion", site)
    return x_T, recon, features, trajectory


def flow_styleid(denoise: Denoise, content_x_T: torch.Tensor, style_x_T: torch.Tensor, style: AttentionFeatures,
                 settings: StyleIDSettings, sigmas, timesteps: Sequence[int], *,
                 content_q: AttentionFeatures | None = None, content_h: HTrajectory | None = None,
                 gamma_h: float = 0.0, h_window: SigmaWindow | None = None, site: str = "",
                 mask: torch.Tensor | None = None, omega: float | None = None, fingerprint: str = "", levels=None,
                 callback=None) -> torch.Tensor:
    """StyleID by flow matching: Euler from ``settings.start`` (AdaIN(x_T^c, x_T^s) by default) on the grid the
    features were recorded on, with ``injection_patch`` at the steps inside ``settings.window`` (the others plain).

    With ``content_h`` it is the combined mode, as on U-Nets (``styleid.styleid_inject``): at the steps whose σ lies
    in ``h_window`` h̃ = Slerp(h, h_c·‖h‖/‖h_c‖, γ_h) at ``site`` (the site ``denoise`` reads h at; the trajectory's
    site, model and grid must be the run's: ``styleid.combined_h_edit``), joined by the flow-matching asymmetric step
    (or calibrated, ``omega`` > 0; ``mask`` limits the mix to a region), the K/V injection in both predictions."""
    _check_grid(sigmas, timesteps)
    grid = tuple(int(t) for t in timesteps)
    start = injection_start(style, content_q, settings, grid, fingerprint, content_x_T, style_x_T)
    inside = {t for t in grid if keeps_window(t, settings.window)}
    edits = None
    if content_h is not None:
        if h_window is None:
            raise ValueError("The combined mode needs the h window (h_window): the steps h is injected at.")
        host = sigmas.tolist() if torch.is_tensor(sigmas) else [float(s) for s in sigmas]  # one copy, before the loop
        edits = [h_window.contains(s) for s in host[:-1]]
        check_window_steps(h_window.made_with, [t for t, on in zip(grid, edits) if on], len(grid))
    edit = combined_h_edit(content_h, gamma_h, [t for t, on in zip(grid, edits or ()) if on], site, fingerprint,
                           mask=mask, omega=omega)
    if edit is not None and not callable(gamma_h) and gamma_h == 0 and not omega:
        # the edited prediction would be the plain one computed again in a batch of two, which differs from it in
        # the last bits (CPU kernels are not batch-invariant): γ_h = 0 is plain StyleID, bit for bit
        log.info("H-Space StyleID: γ_h = 0 injects no h; the run is plain StyleID (the content h is checked only).")
        edit, edits = None, None

    def patch_at(i):
        t = grid[i]
        return injection_patch(style, content_q, settings, t) if t in inside else None

    return flow_reverse(denoise, start, sigmas, patch_at, edit=edit, edits=edits, omega=omega, levels=levels,
                        callback=callback)
