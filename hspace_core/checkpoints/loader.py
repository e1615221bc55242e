"""``load_checkpoint``: a checkpoint file in one of the papers' layouts, recognised, converted to a diffusers
``UNet2DModel`` and returned with the scheduler config the model was trained with."""
from __future__ import annotations

import logging
import os

from .ddim_repo import ddim_config, ddim_to_diffusers
from .files import key_mismatch, read_state_dict
from .guided_diffusion import guided_unet, known_model
from .settings import BETA_SCHEDULES, settings_beside

GUIDED_SETTINGS = ("num_heads", "num_head_channels", "new_attention_order", "class_label")
log = logging.getLogger("hspace")
__all__ = ["layout_of", "unet_from_state_dict", "load_checkpoint"]


def layout_of(state: dict) -> str:
    """"ddim" (DDIM-repo Model), "guided_diffusion" (openai UNetModel) or "diffusers" (UNet2DModel); else a
    ValueError listing what each layout's keys look like."""
    if "conv_in.weight" in state and "temb.dense.0.weight" in state and "mid.block_1.conv1.weight" in state:
        return "ddim"
    if "input_blocks.0.0.weight" in state and "time_embed.0.weight" in state:
        return "guided_diffusion"
    if "conv_in.weight" in state and "time_embedding.linear_1.weight" in state:
        return "diffusers"
    sample = ", ".join(list(state)[:4])
    raise ValueError(f"Unknown checkpoint layout (first keys: {sample}). Supported: the DDIM-repo Model (conv_in, "
                     "temb.dense.*, down.*, mid.block_1, up.*), openai guided-diffusion UNetModel (input_blocks.*, "
                     "middle_block.*, output_blocks.*) or a diffusers UNet2DModel state dict.")


def unet_from_state_dict(state: dict, sample_size: int | None = None, *, beta_schedule: str | None = None,
                         **guided_settings):
    """A diffusers ``UNet2DModel`` (float32, eval) and its scheduler config, for a DDIM-repo ``Model`` or an openai
    guided-diffusion / iDDPM ``UNetModel`` state dict.

    ``beta_schedule``: "linear" (DDPM, 1e-4 … 0.02) or "cosine" (improved DDPM), 1000 steps.  None: the DDIM-repo
    models' linear; guided-diffusion checkpoints do not record theirs: the recognised published model's, else linear,
    with a warning.  ``guided_settings`` (guided-diffusion only; see ``guided_diffusion.guided_unet``):
    num_heads, num_head_channels, new_attention_order, class_label.
    """
    from diffusers import UNet2DModel

    unknown = sorted(set(guided_settings) - set(GUIDED_SETTINGS))
    if unknown:
        raise ValueError(f"Unknown checkpoint setting(s) {unknown}; the settings are beta_schedule and, for "
                         f"guided-diffusion checkpoints, {', '.join(GUIDED_SETTINGS)}.")
    if beta_schedule not in (None, *BETA_SCHEDULES):
        raise ValueError(f"beta_schedule must be one of {tuple(BETA_SCHEDULES)}, got {beta_schedule!r}.")
    layout = layout_of(state)
    if layout == "diffusers":
        raise ValueError("This is a diffusers UNet2DModel state dict: put it in a diffusers folder with its "
                         "config.json (models/diffusers/<name>/) and pick the folder.")
    if layout == "guided_diffusion":
        return _guided_unet(state, sample_size, beta_schedule, guided_settings)
    given = sorted(name for name, value in guided_settings.items() if value is not None)
    if given:
        raise ValueError(f"{', '.join(given)} apply to guided-diffusion checkpoints only; this is a DDIM-repo Model "
                         "(single-head attention, unconditional): leave them unset.")
    config = ddim_config(state, sample_size)
    unet = UNet2DModel(**config)
    weights = ddim_to_diffusers(state)
    missing, unexpected = key_mismatch(unet.state_dict(), weights)
    if missing or unexpected:
        raise ValueError(f"The checkpoint does not match the inferred config {config}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}; the file is not a complete DDIM-repo Model.")
    unet.load_state_dict({k: v.float() for k, v in weights.items()})
    return unet.eval(), dict(BETA_SCHEDULES[beta_schedule or "linear"])


def _guided_unet(state: dict, sample_size: int | None, beta_schedule: str | None, settings: dict):
    """The guided-diffusion branch of ``unet_from_state_dict``: the U-Net, and the schedule chosen loudly."""
    unet, layout = guided_unet(state, sample_size, **settings)
    if beta_schedule is None:
        known = known_model(layout)
        beta_schedule = known.beta_schedule if known else "linear"
        if known:
            log.info("Using the %s β schedule of %s (1000 steps).", beta_schedule, known.name)
        else:
            log.warning("guided-diffusion checkpoints do not record their noise schedule: assuming linear β "
                        "(1e-4 … 0.02, 1000 steps, as the published 256×256 models). For a model trained with the "
                        "cosine schedule (improved DDPM) pass beta_schedule='cosine', or put {\"beta_schedule\": "
                        "\"cosine\"} in a JSON file named like the checkpoint beside it (the loader node reads it).")
    variance = "learned_range" if layout.learned_sigma else "fixed_small"
    return unet, {**BETA_SCHEDULES[beta_schedule], "variance_type": variance}


def load_checkpoint(path: str, sample_size: int | None = None, **settings):
    """(``UNet2DModel``, scheduler config) of a checkpoint file in a supported layout.

    Settings the file cannot carry (``unet_from_state_dict``'s beta_schedule, num_heads, num_head_channels,
    new_attention_order, class_label) come from the keyword arguments, else from a JSON file beside the checkpoint
    with the same name (``afhqdog_p2.pt`` → ``afhqdog_p2.json``, e.g. ``{"beta_schedule": "cosine"}``)."""
    name = os.path.basename(path)
    try:
        given = {key: value for key, value in settings.items() if value is not None}
        return unet_from_state_dict(read_state_dict(path), sample_size, **{**settings_beside(path), **given})
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
