"""The checkpoint formats the papers' pixel models ship in, converted to a diffusers ``UNet2DModel``.

- The DDIM-repo ``Model`` (Song et al.'s ermongroup/ddim ``models/diffusion.py``, the layout of Ho et al.'s DDPM
  ported to PyTorch): Asyrp / InjectFusion's ``celeba_hq.ckpt`` and the ``ema_lsun_*`` checkpoints.  It maps exactly
  onto ``UNet2DModel`` with a sinusoidal time embedding (sin first, frequencies 10000^(−i/(d/2 − 1)): diffusers'
  flip_sin_to_cos=False, freq_shift=1), GroupNorm(32, eps 1e-6), single-head attention over all channels,
  asymmetric-padding strided-conv downsampling and nearest + conv upsampling.

- The openai guided-diffusion / iDDPM ``UNetModel`` (AFHQ-dog, METFACES, ImageNet): see ``guided_diffusion``.

The config is inferred from the state dict; what cannot be inferred or expressed raises a ValueError saying so.
The schedule the models were trained with comes back as a diffusers scheduler config: DDPM linear β (1e-4 … 0.02,
1000 steps) for the DDIM repo's; guided-diffusion files do not record theirs (``unet_from_state_dict``).
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch

CHECKPOINT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
DDPM_LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2,
               "prediction_type": "epsilon", "clip_sample": False}
BETA_SCHEDULES = {"linear": DDPM_LINEAR, "cosine": {**DDPM_LINEAR, "beta_schedule": "squaredcos_cap_v2"}}
GUIDED_SETTINGS = ("num_heads", "num_head_channels", "new_attention_order", "class_label")
log = logging.getLogger("hspace")
__all__ = ["CHECKPOINT_EXTENSIONS", "BETA_SCHEDULES", "read_state_dict", "layout_of", "ddim_config",
           "ddim_to_diffusers", "unet_from_state_dict", "load_checkpoint", "settings_beside"]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors / .pt / .pth / .ckpt file, on the CPU.

    Pickles are read with ``torch.load(weights_only=True)`` (no code runs).  A training checkpoint that wraps the
    weights (``{"state_dict": …}``, ``{"model": …}``, ``{"ema": …}``, or the DDIM repo's list [model, optimiser,
    epoch, step, ema]) is unwrapped, preferring the EMA weights; DataParallel's ``module.`` prefix is dropped.
    """
    if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
        raise ValueError(f"{os.path.basename(path)} is not a checkpoint file; use one of {CHECKPOINT_EXTENSIONS}.")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise ValueError(f"Could not read {os.path.basename(path)} as a checkpoint of tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); save the model's state_dict with "
                         "torch.save or as .safetensors.") from None
    return state_dict_of(raw, os.path.basename(path))


def state_dict_of(raw, what: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a loaded checkpoint to {name: tensor} (see ``read_state_dict``); anything else is refused."""
    if isinstance(raw, (list, tuple)):  # the DDIM repo's ckpt.pth: [model, optimiser, epoch, step, (ema)]
        dicts = [item for item in raw if isinstance(item, dict) and item]
        raw = dicts[-1] if len(dicts) > 2 else (dicts[0] if dicts else raw)
    if isinstance(raw, dict):
        for key in ("ema", "ema_model", "state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{what} holds no state dict (a mapping of parameter names to tensors).")
    state = {}
    for name, value in raw.items():
        if not torch.is_tensor(value):
            raise ValueError(f"{what}: entry {name!r} is a {type(value).__name__}, not a tensor; save only the model's "
                             "state_dict (parameter name → tensor).")
        state[name[len("module."):] if name.startswith("module.") else name] = value
    return state


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


def _count(state: dict, pattern: str) -> int:
    """How many distinct integers fill the {} in ``pattern`` among the state dict's keys."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return len({m.group(1) for key in state for m in [regex.match(key)] if m})


def ddim_config(state: dict, sample_size: int | None = None) -> dict:
    """The ``UNet2DModel`` config of a DDIM-repo ``Model`` state dict (ch, ch_mult, num_res_blocks and the
    attention levels read off the weights)."""
    try:
        ch, in_channels = state["conv_in.weight"].shape[:2]
        out_channels = state["conv_out.weight"].shape[0]
        levels = _count(state, "down.{}.block.0.conv1.weight")
        blocks = _count(state, "down.0.block.{}.conv1.weight")
        widths = [state[f"down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    except KeyError as missing:
        raise ValueError(f"The DDIM-repo checkpoint lacks {missing}; it is truncated or not a DDIM Model.") from None
    attn = [f"down.{i}.attn.0.q.weight" in state for i in range(levels)]
    problems = []
    if widths[0] != ch:
        problems.append(f"ch_mult[0] = {widths[0] / ch:g} (diffusers needs 1: the time embedding is ch wide)")
    if any(f"down.{i}.downsample.conv.weight" not in state for i in range(levels - 1)):
        problems.append("resamp_with_conv=False (diffusers' UNet2DModel resamples with convolutions)")
    if any(".conv_shortcut." in key for key in state):
        problems.append("3×3 conv shortcuts (conv_shortcut=True; diffusers has 1×1 shortcuts)")
    if any(n % 32 for n in widths) or ch % 32:
        problems.append(f"widths {widths} not multiples of 32 (GroupNorm(32) of the DDIM repo)")
    if problems:
        raise ValueError("This DDIM-repo checkpoint cannot be expressed as a diffusers UNet2DModel: "
                         + "; ".join(problems) + ".")
    return dict(sample_size=sample_size, in_channels=int(in_channels), out_channels=int(out_channels),
                block_out_channels=tuple(int(w) for w in widths), layers_per_block=int(blocks),
                down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
                norm_num_groups=32, act_fn="silu", attention_head_dim=None, downsample_padding=0,
                resnet_time_scale_shift="default", add_attention=True)


_DDIM_RENAMES = [  # (DDIM-repo pattern, diffusers pattern), applied to the key after block renumbering
    (r"^temb\.dense\.0\.", "time_embedding.linear_1."), (r"^temb\.dense\.1\.", "time_embedding.linear_2."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^mid\.block_1\.", "mid_block.resnets.0."), (r"^mid\.block_2\.", "mid_block.resnets.1."),
    (r"^mid\.attn_1\.", "mid_block.attentions.0."),
    (r"^(down|up)_blocks\.(\d+)\.block\.", r"\1_blocks.\2.resnets."),
    (r"^(down|up)_blocks\.(\d+)\.attn\.", r"\1_blocks.\2.attentions."),
    (r"^down_blocks\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0."),
    (r"^up_blocks\.(\d+)\.upsample\.", r"up_blocks.\1.upsamplers.0."),
    (r"\.temb_proj\.", ".time_emb_proj."), (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(attentions\.\d+)\.q\.", r"\1.to_q."),
    (r"(attentions\.\d+)\.k\.", r"\1.to_k."), (r"(attentions\.\d+)\.v\.", r"\1.to_v."),
    (r"(attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
]


def ddim_to_diffusers(state: dict) -> dict[str, torch.Tensor]:
    """Rename a DDIM-repo ``Model`` state dict to ``UNet2DModel``'s: down.i → down_blocks.i, up.i →
    up_blocks.(L−1−i) (diffusers lists the decoder deepest first), ResnetBlock/AttnBlock parts to diffusers' names,
    and the attention's 1×1 convolutions to linear weights.  ``logvar`` (the 'bayesian' model type) is dropped."""
    levels = _count(state, "down.{}.block.0.conv1.weight")
    out = {}
    for key, value in state.items():
        if key == "logvar":
            continue
        key = re.sub(r"^down\.(\d+)\.", r"down_blocks.\1.", key)
        key = re.sub(r"^up\.(\d+)\.", lambda m: f"up_blocks.{levels - 1 - int(m.group(1))}.", key)
        for pattern, replacement in _DDIM_RENAMES:
            key = re.sub(pattern, replacement, key)
        if ".attentions." in key and key.endswith(".weight") and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[key] = value
    return out


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
    from .guided_diffusion import guided_unet, known_model  # guided_diffusion builds on this module

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


def key_mismatch(expected: dict, given: dict) -> tuple[list, list]:
    """Keys missing from ``given``, keys it has in excess, and shape mismatches (reported as missing)."""
    missing = [k for k in expected if k not in given or tuple(given[k].shape) != tuple(expected[k].shape)]
    return missing, [k for k in given if k not in expected]


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


def settings_beside(path: str) -> dict:
    """The settings in ``<checkpoint name>.json`` next to the checkpoint, or {} when there is none."""
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar) as f:
            settings = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{os.path.basename(sidecar)} is not readable JSON ({error}); fix or remove it.") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{os.path.basename(sidecar)} must hold a JSON object of settings, e.g. "
                         '{"num_head_channels": 64}.')
    log.info("Checkpoint settings from %s: %s", os.path.basename(sidecar), settings)
    return settings
