"""The process nodes' run layer: a process is a KSAMPLER (``samplers.h_edit_sampler``, ``samplers.inversion_sampler``:
the SAMPLER nodes' own) run by ``comfy.sample.sample_custom`` on the real sigmas of the node's DDIM grid
(``NoiseLevels.grid_sigmas``), so ComfyUI loads the model, processes the CONDITIONING, applies CFG, sees the schedule
(``transformer_options["sample_sigmas"]``), reserves memory for the rows run and gets every step through the sampler
callback (progress, Cancel, latent previews)."""
from __future__ import annotations

import torch

import comfy.sample
import comfy.samplers

from ...hspace_core.sigmas import ve_scale

from .memory import rows_run, with_row_reservation
from .model import check_has_h_space, check_latent, conditioning_of, resolve_site
from .progress import progress_bar


def check_process_inputs(model, samples: torch.Tensor, site: str) -> None:
    """Refuse, before sampling, a MODEL without h-space, a latent from another model and a site the model lacks
    (``model.resolve_site``: the U-Net default stands for a transformer's default block)."""
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
    from .noise_levels import noise_levels

    x = model.model.process_latent_in(x_T["samples"].float()) if isinstance(x_T, dict) else x_T
    check_process_inputs(model, x, site)
    levels = noise_levels(model)
    sigmas, flow = levels.grid_sigmas(steps).float(), levels.parameterisation == "const"
    rows = rows_run(model, x.shape[0], edited=edited)
    callbacks = callbacks or runs_callback(model, steps, len(values))
    return torch.cat([sample_process(model, starting_at(sampler_of(value), x, flow), sigmas, latent=torch.zeros_like(x),
                                     positive=positive, negative=negative, cfg=cfg, seed=seed, rows=rows,
                                     callback=callbacks(k))
                      for k, value in enumerate(values)])


def starting_at(sampler, x_T: torch.Tensor, flow: bool):
    """``sampler`` (a KSAMPLER) started from the pack's x_T at its first σ (model space, unit variance) in place of
    the (zero) start ComfyUI hands it: the VE point √(1 + σ²)·x_T of a DDPM-style model (``sigmas.ve_scale``), or x_T
    itself for flow matching (``flow``), whose DDIM grid starts at σ = 1, where x is the noise.  (ComfyUI's own start cannot
    carry it: it scales a LATENT by 1 − σ = 0 there, and its noise path rounds √(1 + σ²) in float32.)"""
    inner = sampler.sampler_function

    def sample(model, x, sigmas, *args, **kwargs):
        sigma = float(sigmas[0])
        if flow and abs(sigma - 1.0) > 1e-6:
            raise ValueError(f"A flow-matching process from x_T starts at σ = 1, not {sigma}.")
        start = x_T.to(x) if flow else x_T.to(x) * ve_scale(sigma)
        return inner(model, start, sigmas, *args, **kwargs)

    return comfy.samplers.KSAMPLER(sample, extra_options=sampler.extra_options, inpaint_options=sampler.inpaint_options)
