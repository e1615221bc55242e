"""H-Space StyleID Features / Inject on a Flux or SD3.x MODEL (``hspace_core.flow_styleid``): the same nodes and
widgets as on a U-Net, run by flow matching on ComfyUI's 'simple' σ grid of ``steps`` (``dit_attention.flow_grid``)."""
from __future__ import annotations

import torch

from ...hspace_core import ReconstructionReport
from ...hspace_core.flow_styleid import flow_styleid, record_flow_features
from ...hspace_core.styleid import StyleIDSettings
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


def features_on_transformer(model, latent: dict, kinds, steps: int, features_source: str, storage, positive, image,
                            vae, **window):
    """StyleID Features on a transformer: (x_T, features, None (no h trajectory), PSNR of the reconstruction)."""
    layers, sigmas, timesteps, kv = _grid(model, FEATURES, steps, **window)
    tick = _ticker(model, 2 * steps)

    def body(denoise, x):
        s = sigmas.to(x.device)
        return record_flow_features(sigma_denoise(denoise, s), x, s, timesteps, layers, kinds, window=kv,
                                    source=features_source, storage=storage, fingerprint=model_fingerprint(model),
                                    levels=noise_levels(model), callback=tick)

    x_T, recon, features = run_on_transformer(model, latent["samples"], body, positive=positive, sigmas=sigmas,
                                              layers=layers)
    quality = ReconstructionReport.compare(latent_x(model, latent).to(recon), recon).psnr
    if image is not None:
        quality = psnr(decode(vae, latent_out(model, recon)), encoded_pixels(vae, image), 1.0)
    return latent_out(model, x_T), features, None, quality


def inject_on_transformer(model, content_x_T: dict, style_x_T: dict, style_features, content_features, gammas, tau,
                          start: str, steps: int, positive, **window) -> torch.Tensor:
    """StyleID Inject on a transformer: one generation per γ, concatenated γ-major (model space)."""
    layers, sigmas, timesteps, kv = _grid(model, INJECT, steps, **window)
    tick = _ticker(model, steps * len(gammas))

    def body(denoise, x):
        s = sigmas.to(x.device)
        style_x = latent_x(model, style_x_T).to(x)
        return torch.cat([flow_styleid(sigma_denoise(denoise, s), x, style_x, style_features,
                                       StyleIDSettings(layers, g, tau, kv, start), s, timesteps,
                                       content_q=content_features, fingerprint=model_fingerprint(model),
                                       levels=noise_levels(model), callback=tick) for g in gammas])

    return run_on_transformer(model, content_x_T["samples"], body, positive=positive, sigmas=sigmas, layers=layers)
