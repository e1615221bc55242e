"""The process nodes' run layer: a process is a KSAMPLER (``samplers.h_edit_sampler``, ``samplers.inversion_sampler``:
the SAMPLER nodes' own) run by ``comfy.sample.sample_custom`` on the real sigmas of the node's DDIM grid
(``NoiseLevels.grid_sigmas``), so ComfyUI loads the model, processes the CONDITIONING, applies CFG, sees the schedule
(``transformer_options["sample_sigmas"]``), reserves memory for the rows run and gets every step through the sampler
callback (progress, Cancel, latent previews).  ``run_in_comfy`` runs a body over ``model.ComfyHSpaceModel`` inside
the same sampling, for the processes that are not a KSAMPLER yet."""
from __future__ import annotations

import math

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from ...hspace_core.sites import DEFAULT_SITE

from .checks import check_has_h_space, check_latent, is_pixel_unet, resolve_site
from .memory import rows_run, with_row_reservation
from .model import ComfyHSpaceModel
from .noise_levels import noise_levels
from .progress import progress_bar


def check_process_inputs(model, samples: torch.Tensor, site: str) -> None:
    """Refuse, before sampling, a MODEL without h-space, a latent from another model and a site the model lacks
    (``checks.resolve_site``: the U-Net default stands for a transformer's default block)."""
    check_has_h_space(model)
    check_latent(model, samples)
    resolve_site(model, site)


def sample_process(model, sampler, sigmas: torch.Tensor, *, noise: torch.Tensor | None = None,
                   latent: torch.Tensor | None = None, positive=None, negative=None, cfg: float = 1.0, seed: int = 0,
                   rows: int | None = None, callback=None) -> torch.Tensor:
    """``sampler`` (a KSAMPLER) run by ``sample_custom`` on ``sigmas`` from ``noise`` or ``latent`` (model space and a
    LATENT's samples: ComfyUI's start is σ₀·noise + the latent, or (1 − σ₀)·the latent for flow matching, so a zero
    noise hands a DDPM-style model's LATENT on as it is, and an x_T as the noise is a flow model's point at σ₀ = 1).  ``rows``: the batch the sampler really runs through the model when
    it is not the latent's (``memory.rows_run``), reserved by ComfyUI.  ``callback(step, x0, x, total_steps)`` is
    ComfyUI's sampler callback.  Returns ComfyUI's output LATENT samples (``process_latent_out`` applied)."""
    shape = (noise if noise is not None else latent).shape
    noise = torch.zeros(shape) if noise is None else noise
    latent = torch.zeros(shape) if latent is None else latent
    positive, negative = conditioning_of(model, positive, negative, cfg)
    runner = with_row_reservation(model, rows) if rows is not None and rows != shape[0] else model
    return comfy.sample.sample_custom(runner, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=True, seed=seed)


def runs_callback(model, steps: int, runs: int = 1):
    """Callbacks for ``runs`` sampler runs of ``steps`` steps each under one progress bar (with latent previews of each
    step's denoised x0): ``for_run(k)`` is run k's ``sample_process`` callback."""
    bar = progress_bar(steps * runs, model)

    def for_run(k: int):
        return lambda step, x0, x, total: bar(k * steps + step + 1, steps * runs, x0)

    return for_run


def sweep_process(model, x_T, sampler_of, values, steps: int, *, site: str, positive=None, negative=None,
                  cfg: float = 1.0, seed: int = 0, edited: bool = True, callbacks=None) -> torch.Tensor:
    """A reverse process from ``x_T`` (the pack's x_T: a LATENT, or a model-space tensor) on the DDIM grid of
    ``steps``, once per value of a sweep (``sampler_of(value)``: its KSAMPLER, started at x_T by ``starting_at``),
    each run by ``sample_process`` under one progress bar; the runs' LATENT samples concatenated along the batch,
    value-major.  ``edited``: its steps edit h (memory for the one-call [x; x] rows is reserved).  ``callbacks(k)``:
    run k's sampler callback, where the runs are part of a longer node (default: ``runs_callback``'s)."""
    x = model.model.process_latent_in(x_T["samples"].float()) if isinstance(x_T, dict) else x_T
    check_process_inputs(model, x, site)
    levels = noise_levels(model)
    sigmas = levels.grid_sigmas(steps).float()
    rows = rows_run(model, x.shape[0], edited=edited)
    callbacks = callbacks or runs_callback(model, steps, len(values))
    return torch.cat([sample_process(model, starting_at(sampler_of(value), x, levels), sigmas,
                                     latent=torch.zeros_like(x), positive=positive, negative=negative, cfg=cfg,
                                     seed=seed, rows=rows, callback=callbacks(k))
                      for k, value in enumerate(values)])


def starting_at(sampler, x_T: torch.Tensor, levels):
    """``sampler`` (a KSAMPLER) started from the pack's x_T at its first σ (model space, unit variance) in place of
    the (zero) start ComfyUI hands it: the model's point x_T·√(a² + σ²) (``levels.unit_scale``): √(1 + σ²)·x_T of a
    DDPM-style model, x_T itself for flow matching (``levels.flow``), whose DDIM grid starts at σ = 1, where x is the
    noise.  (ComfyUI's own start cannot
    carry it: it scales a LATENT by 1 − σ = 0 there, and its noise path rounds √(1 + σ²) in float32.)"""
    inner = sampler.sampler_function

    def sample(model, x, sigmas, *args, **kwargs):
        sigma = float(sigmas[0])
        if levels.flow and abs(sigma - 1.0) > 1e-6:
            raise ValueError(f"A flow-matching process from x_T starts at σ = 1, not {sigma}.")
        start = x_T.to(x) * levels.unit_scale(sigma)
        return inner(model, start, sigmas, *args, **kwargs)

    return comfy.samplers.KSAMPLER(sample, extra_options=sampler.extra_options, inpaint_options=sampler.inpaint_options)


def run_in_comfy(model, latent: torch.Tensor, body, *, positive=None, negative=None, cfg: float = 1.0,
                 edit_branches: str = "cond", seed: int = 0, negative_at: dict | None = None,
                 site: str = DEFAULT_SITE, rows: int | None = None, steps: int | None = None):
    """Run ``body(hspace_model, x)`` inside ComfyUI's sampling of ``model``, with h read at ``site``.

    ``latent`` is a LATENT's ``samples`` (unscaled); ``x`` is the model-space tensor the body works on
    (``process_latent_in`` applied; on flow matching too, where ComfyUI's start at σ = 1 would be 0).
    ``negative_at`` ({t: cross-attention tensor}, null-text inversion) replaces the negative's embedding at those
    timesteps.  ``rows`` is the batch the body really runs through the U-Net
    when it is not the latent's (``rows_run``: an edit's one-call [x; x] is 2×, the explorer's S strengths 2S×, the
    Jacobian's k + oversample): ComfyUI then reserves memory for that many rows.  ``steps``: the body's DDIM grid
    (Asyrp's, ``NoiseLevels.grid_sigmas``), whose real sigmas ComfyUI's sampling is handed (its
    ``transformer_options["sample_sigmas"]`` and the schedule patches see); without it (a body with no one grid)
    [σ_max, 0].  Returns what ``body`` returns.
    """
    check_has_h_space(model)
    check_latent(model, latent)
    resolve_site(model, site)  # refuse a site this model lacks before sampling
    positive, negative = conditioning_of(model, positive, negative, cfg)
    result = {}
    levels = noise_levels(model)

    def sampler_function(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        if levels.flow:  # ComfyUI's flow start (1 − σ₀)·latent is 0 at σ₀ = 1: the latent itself
            x = model.model.process_latent_in(latent).to(x)
        hs_model = ComfyHSpaceModel(denoiser, extra_args, model, cfg, edit_branches, negative, site)
        if negative_at:
            hs_model = hs_model.with_negative(negative_at)
        result["value"] = body(hs_model, x)
        return x

    sigmas = levels.grid_sigmas(steps).float() if steps else torch.tensor([levels.sigma_max, 0.0])
    sample_process(model, comfy.samplers.KSAMPLER(sampler_function), sigmas, noise=torch.zeros_like(latent),
                   latent=latent, positive=positive, negative=negative, cfg=cfg, seed=seed, rows=rows)
    return result["value"]


def conditioning_of(model, positive, negative, cfg: float):
    """(positive, negative) to sample with: a pixel U-Net's empty conditioning when none is connected, the positive
    as the negative at cfg 1; refused where a text-conditioned model has none, or cfg ≠ 1 has no negative."""
    if positive is None:
        if not is_pixel_unet(model):
            raise ValueError("This model is text-conditioned: connect positive (and negative) CONDITIONING.")
        positive = [[torch.zeros(1, 1, 1), {}]]
    if negative is None:
        if not math.isclose(cfg, 1.0):
            raise ValueError(f"cfg is {cfg} but no negative CONDITIONING is connected: connect one or set cfg to 1.")
        negative = positive
    return positive, negative


def latent_out(model, x: torch.Tensor) -> dict:
    """Model-space tensor → LATENT dict (``process_latent_out``)."""
    return {"samples": model.model.process_latent_out(x.float()).to(comfy.model_management.intermediate_device())}
