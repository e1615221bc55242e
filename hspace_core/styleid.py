"""StyleID (Chung, Hyun & Heo, "Style Injection in Diffusion", CVPR 2024), and StyleID together with h-space content
injection (InjectFusion) in one generation.

StyleID inverts the content and the style image with DDIM and, while the content is regenerated, replaces the keys
and values of chosen decoder self-attention layers by the style's at the same timestep (§4.1), blends the query
with the content's (query preservation, §4.2), sharpens the attention with a temperature (§4.3) and starts from
the content's x_T with the style's channel statistics (initial-latent AdaIN, §4.4).  Following the official code
(``jiwoogit/StyleID``): the content's Q and the style's K/V come from each image's inversion, at the timestep of
the reverse step that uses them; one set of style K/V serves every row of the batch (both CFG branches); γ = 0.75,
τ = 1.5 and SD 1.x decoder layers 7–11 by default.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adapters.attention import Attend, AttentionPatch, DiffusersAttention
from .adapters.base import HSpaceModel, denoise_at, levels_of
from .attention_store import (CONTENT_KINDS, STYLE_KINDS, AttentionFeatures, check_window, features_from_steps,
                              keeps_window)
from .hmath import check_gamma
from .processes import content_injection, invert, run_reverse
from .progress import ProgressFn, StepLoop, StopFn, check_batch
from .schedules import timestep_grid
from .sites import check_same_site, site_of
from .file_format import check_fingerprint
from .settings import EditSchedule
from .trajectory import HStorage, HTrajectory, Inversion, ReconstructionReport

log = logging.getLogger("hspace")
FEATURE_SOURCES = ("inversion", "reconstruction")
STARTS = ("adain", "content", "style")
FULL_WINDOW = (999, 0)
__all__ = ["FEATURE_SOURCES", "STARTS", "StyleIDSettings", "adain", "preserve_query", "temperature_attention",
           "record_features", "styleid_inject", "attention_access", "combined_h_edit"]


# --- the math ---

def preserve_query(q_content: torch.Tensor, q_current: torch.Tensor, gamma: float) -> torch.Tensor:
    """Query preservation (StyleID §4.2): Q̃ = γ·Q_c + (1 − γ)·Q_cs, Q_c the content's query at this timestep and
    Q_cs the generation's own; γ = 1 keeps the content's query, γ = 0 the generation's."""
    return gamma * q_content + (1 - gamma) * q_current


def temperature_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tau: float, attend: Attend) -> torch.Tensor:
    """Attention temperature scaling (StyleID §4.3): softmax(τ·Q·Kᵀ/√d)·V.  Scaling Q by τ scales every logit by
    τ, so the layer's own ``attend`` (softmax(Q·Kᵀ/√d)·V) computes it unchanged, as the official code does."""
    return attend(q * tau if tau != 1 else q, k, v)


def adain(x_content: torch.Tensor, x_style: torch.Tensor) -> torch.Tensor:
    """Initial-latent AdaIN (StyleID §4.4): z_T^cs = σ(z_T^s)·(z_T^c − μ(z_T^c))/σ(z_T^c) + μ(z_T^s), with the mean and
    (unbiased) standard deviation of each channel over H×W, per image (one style image serves every content image)."""
    if x_style.shape[1:] != x_content.shape[1:]:
        raise ValueError(f"The content x_T {tuple(x_content.shape)} and the style x_T {tuple(x_style.shape)} differ in "
                         "shape: invert both images at the same size with the same model.")
    if x_style.shape[0] not in (1, x_content.shape[0]):
        raise ValueError(f"{x_style.shape[0]} style x_T for {x_content.shape[0]} content x_T: give one style image, "
                         "or one per content image.")
    mu_c, sd_c = x_content.mean((2, 3), keepdim=True), x_content.std((2, 3), keepdim=True)
    mu_s, sd_s = x_style.mean((2, 3), keepdim=True), x_style.std((2, 3), keepdim=True)
    return (x_content - mu_c) / sd_c.clamp_min(1e-12) * sd_s + mu_s


# --- settings and access ---

@dataclass(frozen=True)
class StyleIDSettings:
    """γ (query preservation), τ (temperature), the layers, the window t_start ≥ t ≥ t_stop in which K/V are
    injected, and the start: "adain" (AdaIN(x_T^c, x_T^s), StyleID's), "content" (x_T^c) or "style" (x_T^s)."""

    layers: tuple[str, ...]
    gamma: float = 0.75
    tau: float = 1.5
    window: tuple[int, int] = FULL_WINDOW
    start: str = "adain"

    def __post_init__(self):
        check_gamma(self.gamma)
        if not (isinstance(self.tau, (int, float)) and 0 < self.tau < float("inf")):
            raise ValueError(f"τ (attention temperature) must be a finite number > 0, got {self.tau}.")
        if self.start not in STARTS:
            raise ValueError(f"start {self.start!r} is unknown; use one of {STARTS}.")
        if not self.layers:
            raise ValueError("Give at least one decoder self-attention layer.")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "window", check_window(self.window))


def attention_access(model, access=None):
    """The self-attention access of ``model``: ``access`` if given (the ComfyUI adapter passes its own), else the
    diffusers one; anything else is refused."""
    if access is not None:
        return access
    if hasattr(model, "unet"):
        return DiffusersAttention(model)
    raise ValueError(f"{type(model).__name__} gives no access to its self-attention layers; StyleID runs on diffusers "
                     "UNet2DConditionModel / UNet2DModel adapters and on ComfyUI SD models.")


class _PerStep:
    """An ``HSpaceModel`` that runs every prediction with ``patch_at(t)`` on the self-attention ``layers``."""

    def __init__(self, model, access, layers, patch_at: Callable[[int], AttentionPatch]):
        self.model, self.access, self.layers, self.patch_at = model, access, tuple(layers), patch_at
        self.schedule, self.branches, self.fingerprint = model.schedule, model.branches, model.fingerprint
        self.site = site_of(model)

    @property
    def levels(self):
        return levels_of(self.model)

    def predict(self, x_t, t, edit=None):
        with self.access.patched(self.layers, self.patch_at(int(t))) as inner:
            return inner.predict(x_t, t, edit)

    def denoised(self, x, sigma, edit=None, t=None):
        """The patched model's σ view (``denoise_at``): what the processes call."""
        t = self.levels.timestep(float(sigma)) if t is None else t
        with self.access.patched(self.layers, self.patch_at(int(t))) as inner:
            return denoise_at(inner, x, sigma, edit, t=t)


def _check_layers(access, layers) -> None:
    available = access.layers
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise ValueError(f"This U-Net has no decoder self-attention layer {', '.join(missing)} (block.transformer); "
                         f"it has {', '.join(available) or 'none (its decoder has no self-attention)'}.")


# --- recording ---

def _recorder(per_step: dict, kinds, storage: HStorage, keep: Callable[[int], bool]):
    def patch_at(t):
        def patch(layer, q, k, v, chunks, attend):
            if keep(t):
                rows = dict(zip(chunks, range(len(chunks))))
                pick = rows.get("cond", rows.get("single", 0))
                named = {"q": q, "k": k, "v": v}
                step = per_step.setdefault(t, {})
                for kind in kinds:
                    step[f"{layer}.{kind}"] = storage.put(named[kind].chunk(len(chunks))[pick])
            return attend(q, k, v)
        return patch
    return patch_at


def record_features(model: HSpaceModel, x0: torch.Tensor, num_steps: int, layers, kinds=STYLE_KINDS, *,
                    source: str = "inversion", window: tuple[int, int] = FULL_WINDOW, grid: str = "asyrp",
                    convention: str = "seed", refine_iters: int = 0, storage: HStorage = HStorage(),
                    h_storage: HStorage = HStorage(), access=None, progress: ProgressFn | None = None,
                    should_stop: StopFn | None = None) -> tuple[Inversion, AttentionFeatures]:
    """Invert ``x0`` and record the decoder self-attention ``kinds`` (style: K, V; content: Q) of ``layers`` at
    the timesteps of the grid inside ``window``, kept as ``storage`` says (its precision and device).

    ``source`` "inversion" (the official code's): each model evaluation of the inversion, at the timestep it was
    evaluated at (with refine iterations, the last); the seed convention never evaluates at T, where the last
    evaluation's features stand (as for h).  "reconstruction": along the reverse process from x_T, what a
    generation from that x_T computes itself.  Returns the inversion (with its reconstruction report and h along the
    inversion, kept as ``h_storage`` says: the content's h for the combined mode) and the store.
    """
    if source not in FEATURE_SOURCES:
        raise ValueError(f"features source {source!r} is unknown; use one of {FEATURE_SOURCES}.")
    access = attention_access(model, access)
    _check_layers(access, layers)
    window = check_window(window)
    grid_desc = timestep_grid(num_steps, model.schedule.num_train_timesteps, grid)
    kept = {t for t in grid_desc if keeps_window(t, window)}
    if not kept:
        raise ValueError(f"The time window t = {window[0]} … {window[1]} holds no step of the {num_steps}-step grid; "
                         "widen it.")
    per_step: dict = {}
    from_inversion = _PerStep(model, access, layers, _recorder(per_step, kinds, storage, lambda t: t in kept))
    loop = StepLoop(num_steps * (2 + refine_iters), progress, should_stop)
    tick = loop.sub()
    inv = invert(from_inversion if source == "inversion" else model, x0, num_steps, grid=grid, convention=convention,
                 refine_iters=refine_iters, report=False, h_storage=h_storage, progress=tick)
    if source == "inversion" and max(grid_desc) in kept and max(grid_desc) not in per_step and per_step:
        per_step[max(grid_desc)] = per_step[max(per_step)]  # T: the last evaluation's (see above)
    along = _PerStep(model, access, layers, _recorder(per_step, kinds, storage, lambda t: t in kept)) \
        if source == "reconstruction" else model
    sched = EditSchedule.reconstruction(num_steps, grid, model.schedule.num_train_timesteps)
    recon = run_reverse(along, inv.x_T, sched, progress=tick).x0
    inv = dataclasses.replace(inv, reconstruction=recon, report=ReconstructionReport.compare(x0, recon))
    features = features_from_steps(per_step, grid_desc, layers, kinds, storage, model.fingerprint, source)
    return inv, features


# --- generation ---

def _injection(style: AttentionFeatures, content_q: AttentionFeatures | None, settings: StyleIDSettings):
    def patch_at(t):
        inject = keeps_window(t, settings.window)

        def patch(layer, q, k, v, chunks, attend):
            if not inject:
                return attend(q, k, v)
            k_s, v_s = (_rows(style.at(t, layer, kind), q) for kind in ("k", "v"))
            if content_q is not None and settings.gamma > 0:
                q = preserve_query(_rows(content_q.at(t, layer, "q"), q), q, settings.gamma)
            return temperature_attention(q, k_s, v_s, settings.tau, attend)
        return patch
    return patch_at


def _rows(feature: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A store's (images, tokens, dim) for a batch of ``like``'s rows: every chunk of images gets the same set."""
    if like.shape[0] % feature.shape[0] or like.shape[1:] != feature.shape[1:]:
        raise ValueError(f"Attention features for {feature.shape[0]} image(s) of {tuple(feature.shape[1:])} do not fit "
                         f"a batch of {like.shape[0]} rows of {tuple(like.shape[1:])}: record them at the same image "
                         "size, with one image or as many as are generated.")
    return feature.to(like.device, like.dtype).repeat(like.shape[0] // feature.shape[0], 1, 1)


def injection_start(style: AttentionFeatures, content_q: AttentionFeatures | None, settings: StyleIDSettings,
                    grid: Sequence[int], fingerprint: str, content_x_T: torch.Tensor,
                    style_x_T: torch.Tensor) -> torch.Tensor:
    """Check that the features cover the steps the window injects at (the content's Q only when γ > 0) and return
    the start latent ``settings.start`` names: AdaIN(x_T^c, x_T^s) (StyleID eq. 7), the content's or the style's x_T."""
    injected = [t for t in grid if keeps_window(t, settings.window)]
    style.check_for(grid, injected, settings.layers, STYLE_KINDS, fingerprint, "style features")
    if settings.gamma > 0:
        if content_q is None:
            raise ValueError(f"Query preservation γ = {settings.gamma} needs the content's Q (content features); "
                             "connect them, or set γ to 0.")
        content_q.check_for(grid, injected, settings.layers, CONTENT_KINDS, fingerprint, "content features")
    return {"adain": lambda: adain(content_x_T, style_x_T.to(content_x_T)), "content": lambda: content_x_T,
            "style": lambda: style_x_T.to(content_x_T)}[settings.start]()


def combined_h_edit(content_h: HTrajectory | None, gamma_h: float | Callable[[int], float], edited: Sequence[int],
                    site: str, fingerprint: str, *, mask: torch.Tensor | None = None, omega: float | None = None):
    """The combined mode's h edit (InjectFusion's content injection, ``processes.content_injection``) at the
    ``edited`` timesteps, or None without ``content_h``: the trajectory must be read at ``site`` (where the run reads
    h), with the model ``fingerprint`` ("" skips that check) and hold h at every edited timestep (the same grid);
    ``mask`` and ``omega`` (calibration) without a trajectory are refused.  The U-Net and the transformer path's."""
    if content_h is None:
        if mask is not None or omega:
            raise ValueError("mask and calibration apply to the h injection: connect the content's h trajectory "
                             "(combined mode), or disconnect them.")
        return None
    check_same_site(content_h.site, site, "content h trajectory")
    if fingerprint:
        check_fingerprint(content_h.fingerprint, fingerprint, "content h trajectory")
    content_h.require_timesteps(edited, "the h injection")
    return content_injection(content_h.only_at(edited), gamma_h, mask=mask)


def styleid_inject(model: HSpaceModel, content_x_T: torch.Tensor, style_x_T: torch.Tensor, style: AttentionFeatures,
            settings: StyleIDSettings, num_steps: int, *, content_q: AttentionFeatures | None = None,
            content_h: HTrajectory | None = None, gamma_h: float | Callable[[int], float] = 0.0,
            t_edit: int = 400, mask: torch.Tensor | None = None, omega: float | None = None, grid: str = "asyrp",
            access=None, strict_fingerprint: bool = True, progress: ProgressFn | None = None,
            should_stop: StopFn | None = None, edit_timesteps: Sequence[int] | None = None) -> torch.Tensor:
    """StyleID: generate from ``settings.start`` (AdaIN(x_T^c, x_T^s) by default) with the style's K/V (and the
    content's Q blended by γ) in ``settings.layers`` inside the window.

    With ``content_h`` (an InjectFusion content trajectory) it is the combined mode: h̃_t = Slerp(h_t,
    h_c,t·‖h_t‖/‖h_c,t‖, γ_h) for t ≥ t_edit as well (``mask`` limits that to a region, ``omega`` > 0 calibrates),
    in the same reverse process (``edit_timesteps``, a percent window's grid timesteps, replace t ≥ t_edit).
    ``content_q`` is needed when γ > 0.
    """
    check_batch(content_x_T, "content x_T")
    check_batch(style_x_T, "style x_T")
    access = attention_access(model, access)
    _check_layers(access, settings.layers)
    fingerprint = model.fingerprint if strict_fingerprint else ""
    inside = tuple(int(t) for t in edit_timesteps) if edit_timesteps is not None and content_h is not None else None
    schedule = EditSchedule(num_steps, t_edit=t_edit if content_h is not None else 0, t_boost=0, grid=grid,
                            num_train_timesteps=model.schedule.num_train_timesteps, edit_timesteps=inside)
    grid_desc = schedule.timesteps()
    start = injection_start(style, content_q, settings, grid_desc, fingerprint, content_x_T, style_x_T)
    patched = _PerStep(model, access, settings.layers, _injection(style, content_q, settings))
    edit = combined_h_edit(content_h, gamma_h, [t for t in grid_desc if schedule.edits_at(t)], site_of(model),
                           fingerprint, mask=mask, omega=omega)
    return run_reverse(patched, start, schedule, edit=edit, omega=omega, progress=progress,
                       should_stop=should_stop).x0
