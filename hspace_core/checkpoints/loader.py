"""``load_checkpoint``: a checkpoint file in one of the papers' layouts, recognised, converted to a diffusers
``UNet2DModel`` and returned as an ``HSpaceModel`` ready to use: ``DiffusersUNet`` on the β schedule the model was
trained with (ε, v or x0 prediction), or ``Denoiser`` around the σ preconditioning (EDM, consistency models).

``read_checkpoint`` gives the parts instead (the ``UNet2DModel``, its scheduler config, the settings), for callers
that wrap the U-Net themselves (the ComfyUI loader node, per-image class labels)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..adapters import Denoiser, DiffusersUNet, fingerprint_of
from .ddim_repo import ddim_config, ddim_to_diffusers
from .files import fit_problems, read_state_dict
from .guided_diffusion import MissingHeadSplit, guided_unet, known_model
from .preconditioning import PreconditionedUNet, sigma_table
from .settings import (BETA_SCHEDULES, C_NOISE, PREDICTION_TYPE, CheckpointSettings, checkpoint_settings,
                       settings_beside, sidecar_of)
from .settings_check import check_sigma_settings

log = logging.getLogger("hspace")
__all__ = ["LoadedCheckpoint", "layout_of", "unet_from_state_dict", "read_checkpoint", "hspace_model",
           "load_checkpoint", "log_settings_check", "missing_settings"]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A converted checkpoint: the ``UNet2DModel`` (float32, eval), the diffusers scheduler config of a β-schedule
    model (None for a σ-parameterised one: ``settings`` holds its σ range) and the settings it was read with."""

    unet: torch.nn.Module
    scheduler: dict | None
    settings: CheckpointSettings
    name: str = "the checkpoint"


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


def unet_from_state_dict(state: dict, sample_size: int | None = None, **settings):
    """(``UNet2DModel``, scheduler config) of a DDIM-repo ``Model`` or an openai guided-diffusion / iDDPM
    ``UNetModel`` state dict; the scheduler config is None for a σ-parameterised model.  ``settings``: those of
    ``settings.checkpoint_settings`` (parameterization, beta_schedule, the head split, class_label, condition, …)."""
    return convert(state, sample_size, checkpoint_settings(settings))


def convert(state: dict, sample_size: int | None, settings: CheckpointSettings):
    """``unet_from_state_dict`` with checked settings.

    ``beta_schedule``: "linear" (DDPM, 1e-4 … 0.02) or "cosine" (improved DDPM), 1000 steps.  None: the DDIM-repo
    models' linear; guided-diffusion checkpoints do not record theirs: the recognised published model's, else linear,
    with a warning.  A σ-parameterised model has no β schedule.
    """
    from diffusers import UNet2DModel

    layout = layout_of(state)
    if layout == "diffusers":
        raise ValueError("This is a diffusers UNet2DModel state dict: put it in a diffusers folder with its "
                         "config.json (models/diffusers/<name>/) and pick the folder.")
    if layout == "guided_diffusion":
        return _guided_unet(state, sample_size, settings)
    if settings.guided:
        raise ValueError(f"{', '.join(settings.guided)} apply to guided-diffusion checkpoints only; this is a DDIM-repo "
                         "Model (single-head attention, unconditional): leave them unset.")
    config = ddim_config(state, sample_size)
    unet = UNet2DModel(**config)
    origins = {}
    weights = ddim_to_diffusers(state, origins)
    problems = fit_problems(unet.state_dict(), weights, origins)
    if problems:
        raise ValueError(f"The checkpoint does not fit the DDIM-repo Model read off its weights (ch="
                         f"{config['block_out_channels'][0]}, widths {config['block_out_channels']}, "
                         f"num_res_blocks={config['layers_per_block']}): {problems}.")
    unet.load_state_dict({k: v.float() for k, v in weights.items()})
    return unet.eval(), _scheduler(settings, settings.beta_schedule or "linear")


def missing_settings(settings: CheckpointSettings) -> list[str]:
    """What the weights do not record, was not given and matters for this parameterization, with the default that
    would be assumed: the rest of a refusal for a missing head split, so one message names everything to give."""
    missing = []
    if "parameterization" not in settings.given:
        missing.append('parameterization (what the network computes: "eps", "v", "x0", "edm" or "consistency"; '
                       '"eps" would be assumed)')
    if settings.sigma_parameterised:
        defaults = {"sigma_data": "0.5", "sigma_min": "0.002", "sigma_max": "80",
                    "c_noise": f'"{settings.noise_input}"', "clip_denoised": "false"}
        missing += [f"{name} ({value} would be assumed)" for name, value in defaults.items() if name not in settings.given]
    elif "beta_schedule" not in settings.given:
        missing.append('beta_schedule ("linear" or "cosine"; "linear" would be assumed)')
    return missing


def _scheduler(settings: CheckpointSettings, beta_schedule: str, **extra) -> dict | None:
    if settings.sigma_parameterised:
        return None
    return {**BETA_SCHEDULES[beta_schedule], "prediction_type": PREDICTION_TYPE[settings.parameterization], **extra}


def _guided_unet(state: dict, sample_size: int | None, settings: CheckpointSettings):
    """The guided-diffusion branch of ``convert``: the U-Net, and the schedule chosen loudly."""
    try:
        unet, layout = guided_unet(state, sample_size, **settings.guided)
    except MissingHeadSplit as error:
        others = missing_settings(settings)
        raise ValueError(f"{error} Not in the weights and not given either: {'; '.join(others)}." if others
                         else str(error)) from None
    beta_schedule = settings.beta_schedule
    if beta_schedule is None and not settings.sigma_parameterised:
        known = known_model(layout)
        beta_schedule = known.beta_schedule if known else "linear"
        if known:
            log.info("Using the %s β schedule of %s (1000 steps).", beta_schedule, known.name)
        else:
            log.warning("guided-diffusion checkpoints do not record their noise schedule: assuming linear β "
                        "(1e-4 … 0.02, 1000 steps, as the published 256×256 models). For a model trained with the "
                        "cosine schedule (improved DDPM) pass beta_schedule='cosine', or put {\"beta_schedule\": "
                        "\"cosine\"} in a JSON file named like the checkpoint beside it (the loader node reads it); "
                        "for a σ-parameterised model (EDM, consistency models) set parameterization.")
    variance = "learned_range" if layout.learned_sigma else "fixed_small"
    return unet, _scheduler(settings, beta_schedule, variance_type=variance)


def read_checkpoint(path: str, sample_size: int | None = None, **settings) -> LoadedCheckpoint:
    """The converted parts of a checkpoint file in a supported layout.

    Settings the file cannot carry (``settings.checkpoint_settings``) come from the keyword arguments, else from a
    JSON file beside the checkpoint with the same name (``afhqdog_p2.pt`` → ``afhqdog_p2.json``, e.g.
    ``{"beta_schedule": "cosine"}`` or ``{"parameterization": "edm"}``)."""
    name = os.path.basename(path)
    try:
        checked = checkpoint_settings(settings, settings_beside(path), os.path.basename(sidecar_of(path)))
        unet, scheduler = convert(read_state_dict(path), sample_size, checked)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    return LoadedCheckpoint(unet, scheduler, checked, name)


def hspace_model(loaded: LoadedCheckpoint):
    """The ``HSpaceModel`` of a converted checkpoint: ``DiffusersUNet`` on its β schedule, or ``Denoiser`` over
    D(x, σ) (``preconditioning``) with σ_t log-uniform from σ_min to σ_max over 1000 timesteps."""
    unet, settings, sidecar = loaded.unet, loaded.settings, os.path.splitext(loaded.name)[0] + ".json"
    if getattr(unet, "class_embedding", None) is not None:
        if unet.config.class_embed_type == "identity":
            dims = next(m for m in unet.class_embedding.modules() if isinstance(m, torch.nn.Linear)).in_features
            fix = (f"has a continuous conditioning input ({dims} numbers into label_emb): fix it with condition=[…] "
                   f"({dims} numbers; \"condition\" in {sidecar})")
        else:
            fix = (f"is class-conditional ({unet.config.num_class_embeds} classes): fix the class with class_label=k "
                   f"(\"class_label\" in {sidecar})")
        raise ValueError(f"{loaded.name} {fix}, or call read_checkpoint and wrap .unet yourself "
                         "(DiffusersUNet(unet, scheduler, class_labels=…)) for labels per image.")
    if not settings.sigma_parameterised:
        return DiffusersUNet(unet, loaded.scheduler)
    network = PreconditionedUNet(unet, settings)
    log.info("%s: %s-preconditioned (σ_data %g, σ %g … %g, c_noise %s%s): an hs.Denoiser over 1000 log-uniform σ.",
             loaded.name, settings.parameterization, settings.sigma_data, settings.sigma_min, settings.sigma_max,
             C_NOISE[settings.noise_input], ", D clamped to [−1, 1]" if settings.clip_denoised else "")
    arch = {"class": "PreconditionedUNet", "parameterization": settings.parameterization,
            "sigma_data": settings.sigma_data, "sigma_min": settings.sigma_min, "sigma_max": settings.sigma_max,
            "c_noise": settings.noise_input, **({"clip_denoised": True} if settings.clip_denoised else {}), **{k: v for k, v in dict(unet.config).items() if not k.startswith("_")}}
    return Denoiser(network, sigma_table(settings), "unet.mid_block", output="x0",
                    fingerprint=fingerprint_of(arch, unet.state_dict()))


def load_checkpoint(path: str, sample_size: int | None = None, *, check: bool = True,
                    probe_images: torch.Tensor | None = None, **settings):
    """An ``HSpaceModel`` ready for ``invert`` / ``edit`` / ``inject`` from a checkpoint file in a supported
    layout (``read_checkpoint``, then ``hspace_model``): settings from the keyword arguments, else the JSON file
    beside it.

    A σ-parameterised model's declared settings are then checked against the alternatives by denoising loss
    (``settings_check.check_sigma_settings``, on ``probe_images`` when given: a few images of the model's domain,
    (B, C, H, W) in [−1, 1]): a warning in the log names the settings that denoise clearly better.  ``check=False``
    skips it (it costs six or eight network passes over 36 small probes, or over 6 noised copies of each image
    given).

    >>> model = load_checkpoint("models/diffusion_models/afhqdog_p2.pt")          # DiffusersUNet, linear β
    >>> model = load_checkpoint("cm_model.pt", parameterization="consistency")    # Denoiser, D(x, σ)
    """
    loaded = read_checkpoint(path, sample_size, **settings)
    model = hspace_model(loaded)  # its refusals (an unfixed class or condition) come first
    if check and loaded.settings.sigma_parameterised:
        log_settings_check(loaded, probe_images)
    return model


def log_settings_check(loaded: LoadedCheckpoint, images: torch.Tensor | None = None):
    """``check_sigma_settings`` of a loaded σ-parameterised checkpoint, logged: a warning when other settings denoise
    clearly better, else an info line.  Returns the ``SettingsCheck``."""
    found = check_sigma_settings(loaded.unet, loaded.settings, images, name=loaded.name)
    (log.warning if found.better else log.info)("%s", found.message)
    return found
