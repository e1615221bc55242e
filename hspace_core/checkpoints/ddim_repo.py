"""The DDIM-repo ``Model`` (Song et al.'s ermongroup/ddim ``models/diffusion.py``, the layout of Ho et al.'s DDPM
ported to PyTorch) as a diffusers ``UNet2DModel``: Asyrp / InjectFusion's ``celeba_hq.ckpt`` and the ``ema_lsun_*``
checkpoints.

It maps exactly onto ``UNet2DModel`` with a sinusoidal time embedding (sin first, frequencies 10000^(−i/(d/2 − 1)):
diffusers' flip_sin_to_cos=False, freq_shift=1), GroupNorm(32, eps 1e-6), single-head attention over all channels,
asymmetric-padding strided-conv downsampling and nearest + conv upsampling.
"""
from __future__ import annotations

import re

import torch

from .files import count_indices

__all__ = ["ddim_config", "ddim_to_diffusers"]


def ddim_config(state: dict, sample_size: int | None = None) -> dict:
    """The ``UNet2DModel`` config of a DDIM-repo ``Model`` state dict (ch, ch_mult, num_res_blocks and the
    attention levels read off the weights)."""
    try:
        ch, in_channels = state["conv_in.weight"].shape[:2]
        out_channels = state["conv_out.weight"].shape[0]
        levels = count_indices(state, "down.{}.block.0.conv1.weight")
        blocks = count_indices(state, "down.0.block.{}.conv1.weight")
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


def ddim_to_diffusers(state: dict, origins: dict | None = None) -> dict[str, torch.Tensor]:
    """Rename a DDIM-repo ``Model`` state dict to ``UNet2DModel``'s: down.i → down_blocks.i, up.i →
    up_blocks.(L−1−i) (diffusers lists the decoder deepest first), ResnetBlock/AttnBlock parts to diffusers' names,
    and the attention's 1×1 convolutions to linear weights.  ``logvar`` (the 'bayesian' model type) is dropped.
    ``origins``, when given, is filled with {diffusers key: the file's key}."""
    levels = count_indices(state, "down.{}.block.0.conv1.weight")
    out = {}
    for original, value in state.items():
        if original == "logvar":
            continue
        key = re.sub(r"^down\.(\d+)\.", r"down_blocks.\1.", original)
        key = re.sub(r"^up\.(\d+)\.", lambda m: f"up_blocks.{levels - 1 - int(m.group(1))}.", key)
        for pattern, replacement in _DDIM_RENAMES:
            key = re.sub(pattern, replacement, key)
        if ".attentions." in key and key.endswith(".weight") and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[key] = value
        if origins is not None:
            origins[key] = original
    return out
