"""H-Space StyleID Features / Inject on a Flux or SD3.x MODEL (``hspace_core.flow_styleid``): the same nodes and
widgets as on a U-Net, run by flow matching on ComfyUI's 'simple' σ grid of ``steps`` (``dit_attention.flow_grid``)."""
from __future__ import annotations

import torch

from ...hspace_core import ReconstructionReport
from ...hspace_core.flow_styleid import flow_styleid, record_flow_features
from ...hspace_core.styleid import StyleIDSettings
from ..comfy import dit
from ..comfy.checks import resolve_site
from ..comfy.dit_attention import flow_grid, percent_steps, run_on_transformer, sigma_denoise, transformer_layers
from ..comfy.fingerprint import model_fingerprint
from ..comfy.run import latent_out
from ..comfy.noise_levels import noise_levels
from ..comfy.progress import progress_bar
from .images import decode, encoded_pixels, latent_x, psnr

FEATURES, INJECT = "H-Space StyleID Features", "H-Space StyleID Inject"


def _grid(model, node, steps, attention_layers, custom_layers, window, t_start, t_stop, start_percent, end_percent):
    """(layers, sigmas, timesteps, (t_start, t_stop)) of a StyleID node on a transformer: the K/V window is the whole
    process, or a percent window (the t widgets count a U-Net's 1000 DDIM timesteps, which a flow model has not)."""
    layers = transformer_layers(model.get_model_object("diffusion_model"), attention_layers, custom_layers, node)
    sigmas, timesteps = flow_grid(model, steps)
    if window == "percent":
        return layers, sigmas, timesteps, percent_steps(model, sigmas, timesteps, start_percent, end_percent)
    if (t_start, t_stop) != (999, 0):
        raise ValueError(f"{node}: t_start/t_stop ({t_start}, {t_stop}) count a U-Net's DDIM timesteps; on a "
                         "transformer set window to 'percent' and give start_percent / end_percent (or leave "
                         "t_start = 999, t_stop = 0: the whole process).")
    return layers, sigmas, timesteps, (max(timesteps), 0)


def _ticker(model, total: int):
    progress, done = progress_bar(total, model), [0]

    def tick(i, denoised, x):
        done[0] += 1
        progress(done[0], total, denoised)
    return tick


def features_on_transformer(model, latent: dict, kinds, steps: int, features_source: str, storage, h_storage,
                            positive, image, vae, **window):
    """StyleID Features on a transformer: (x_T, features, h along the inversion at the transformer's default site
    (the combined mode's content h), PSNR of the reconstruction)."""
    layers, sigmas, timesteps, kv = _grid(model, FEATURES, steps, **window)
    site = resolve_site(model, None)
    tick = _ticker(model, 2 * steps)

    def body(denoise, x):
        s = sigmas.to(x.device)
        return record_flow_features(sigma_denoise(denoise, s, timesteps), x, s, timesteps, layers, kinds, window=kv,
                                    source=features_source, storage=storage, h_storage=h_storage, site=site,
                                    fingerprint=model_fingerprint(model), levels=noise_levels(model), callback=tick)

    x_T, recon, features, trajectory = run_on_transformer(model, latent["samples"], body, positive=positive,
                                                          sigmas=sigmas, layers=layers, site=site)
    quality = ReconstructionReport.compare(latent_x(model, latent).to(recon), recon).psnr
    if image is not None:
        quality = psnr(decode(vae, latent_out(model, recon)), encoded_pixels(vae, image), 1.0)
    return latent_out(model, x_T), features, trajectory, quality


def inject_on_transformer(model, content_x_T: dict, style_x_T: dict, style_features, content_features, runs, tau,
                          start: str, steps: int, positive, *, content_h=None, h_window=None, mask=None, omega=None,
                          **window) -> torch.Tensor:
    """StyleID Inject on a transformer: one generation per (γ, γ_h) of ``runs``, concatenated in that order (model
    space); with ``content_h`` the combined mode at the trajectory's site (a block of this model, else refused by
    name) over ``h_window`` (a ``SigmaWindow``)."""
    layers, sigmas, timesteps, kv = _grid(model, INJECT, steps, **window)
    site = None
    if content_h is not None:
        site = dit.check_block_site(model.get_model_object("diffusion_model"), content_h.site).name
    tick = _ticker(model, steps * len(runs))

    def body(denoise, x):
        s = sigmas.to(x.device)
        style_x = latent_x(model, style_x_T).to(x)
        return torch.cat([flow_styleid(sigma_denoise(denoise, s, timesteps), x, style_x, style_features,
                                       StyleIDSettings(layers, g, tau, kv, start), s, timesteps,
                                       content_q=content_features, content_h=content_h, gamma_h=gh,
                                       h_window=h_window, site=site, mask=mask, omega=omega,
                                       fingerprint=model_fingerprint(model), levels=noise_levels(model),
                                       callback=tick) for g, gh in runs])

    return run_on_transformer(model, content_x_T["samples"], body, positive=positive, sigmas=sigmas, layers=layers,
                              site=site)
