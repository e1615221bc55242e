"""Model checks: whether a ComfyUI MODEL has an h-space the pack reads (a U-Net's middle block, a pixel U-Net, a Flux or
SD3.x transformer), whether a latent belongs to it, and which block a site names on it."""
from __future__ import annotations

import logging

import torch

from ...hspace_core.sites import DEFAULT_SITE, check_site, output_block_of_site
from . import dit
from .noise_levels import noise_levels

log = logging.getLogger("hspace")
SUPPORTED = "SD1.x, SD2.x (including v-prediction), SDXL, or a pixel UNet2DModel loaded with 'H-Space Load Pixel U-Net'"
FLOW_TYPES = ("FLOW", "FLUX")  # ComfyUI's model types over CONST (x = (1 − σ)·x0 + σ·ε) model sampling


def is_pixel_unet(model) -> bool:
    """A diffusers UNet2DModel wrapped by 'H-Space Load Pixel U-Net' (no text conditioning, images in [-1, 1])."""
    return bool(getattr(model.get_model_object("diffusion_model"), "hspace_pixel_unet", False))


def is_flow_transformer(model) -> bool:
    """A Flux, Chroma or SD3.x transformer (``dit.dit_family``): h at its blocks (``sites.BlockSite``), flow matching."""
    return dit.dit_family(model.get_model_object("diffusion_model")) is not None


def check_has_h_space(model) -> None:
    """Refuse models with neither a U-Net middle block nor a transformer the pack knows (other DiTs: Qwen-Image,
    Chroma Radiance, HiDream, …) with a message naming what works, and a model sampled otherwise than it was
    trained: flow matching (``NoiseLevels.flow``, read from the MODEL's ``model_sampling``, the one test of flow the
    processes follow) holds exactly for the transformers, so "transformer" and "flow" never disagree past this
    check."""
    diffusion_model = model.get_model_object("diffusion_model")
    if is_flow_transformer(model):
        if not noise_levels(model).flow or model.model.model_type.name not in FLOW_TYPES:
            sampling = type(model.get_model_object("model_sampling")).__name__
            raise ValueError(f"This {type(diffusion_model).__name__} samples as {model.model.model_type.name} "
                             f"({sampling}), not flow matching (CONST); the pack reads h in {dit.TRANSFORMERS} "
                             "sampled as trained.")
        return
    if getattr(diffusion_model, "middle_block", None) is None and not is_pixel_unet(model):
        name = type(diffusion_model).__name__
        if getattr(getattr(diffusion_model, "params", None), "global_modulation", False):
            name += " (Flux.2: global modulation)"
        raise ValueError(
            f"This MODEL ({name}) has no U-Net middle block and is not a transformer the "
            f"pack reads h in, so it has no h-space here. Use {SUPPORTED}, or {dit.TRANSFORMERS} with the SAMPLER "
            "nodes, H-Space Shift or H-Space FluxSpace Edit."
        )
    model_type = model.model.model_type.name
    if model_type not in ("EPS", "V_PREDICTION") and not (model_type == "EDM" and is_pixel_unet(model)):
        raise ValueError(f"Model type {model_type} is not a DDPM-style discrete-time model; use {SUPPORTED}.")
    if noise_levels(model).flow:  # read after the structure checks: their messages come first
        raise ValueError(
            f"This {type(diffusion_model).__name__} U-Net is sampled as flow matching (CONST model sampling, as "
            "ComfyUI's ModelSamplingSD3 / ModelSamplingAuraFlow / ModelSamplingFlux nodes patch it), but its h-space "
            "is read on the DDPM schedule it was trained on: remove that ModelSampling node from the MODEL the H-Space "
            "nodes take (or use ModelSamplingDiscrete).")


def check_latent(model, latent: torch.Tensor) -> None:
    """Refuse, before sampling, a latent from another model (channels) or of a size the U-Net cannot take."""
    expected = model.model.latent_format.latent_channels
    if latent.dim() != 4 or latent.shape[1] != expected:
        raise ValueError(
            f"This latent has shape {tuple(latent.shape)} but the model works on {expected}-channel latents: it does not "
            f"belong to this model. Make it with this model (its VAE, or DDIM Inversion on this MODEL"
            f"{'; pixel U-Nets use VAELoader pixel_space' if expected == 3 else ''}).")
    size_check = getattr(model.get_model_object("diffusion_model"), "check_sample_size", None)
    if size_check is not None:
        size_check(*latent.shape[-2:])


def resolve_site(model, site: str) -> str:
    """``site`` on this MODEL: on a transformer the U-Net default ("middle", the site inputs' default) stands for
    the transformer's default block site (``dit.default_site``), logged; anything else is checked as it is."""
    dm = model.get_model_object("diffusion_model")
    if dit.dit_family(dm) is not None and site in (None, "", DEFAULT_SITE):
        chosen = dit.default_site(dm)
        log.info("H-Space: this %s has no middle block; h is read at %s (the default transformer site).",
                 type(dm).__name__, chosen)
        return chosen
    site_block(dm, site)
    return site


def site_block(diffusion_model, site: str) -> int | None:
    """The output block whose ``output_block_patch`` sees h at ``site`` as its ``h`` (``sites.output_block_of_site``
    over ComfyUI's ``num_res_blocks + 1`` output blocks per decoder level, or the pixel U-Net's own levels); None
    for a transformer's block site (checked against its blocks: ``dit.check_block_site``)."""
    if dit.dit_family(diffusion_model) is not None:
        dit.check_block_site(diffusion_model, site)
        return None
    check_site(site)
    if getattr(diffusion_model, "hspace_pixel_unet", False):
        return diffusion_model.block_of_site(site)
    per_level = [n + 1 for n in reversed(getattr(diffusion_model, "num_res_blocks", None) or [])]
    return output_block_of_site(site, per_level)
