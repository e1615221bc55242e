"""Tiny SDXL- and SD2-configured models built in memory with ComfyUI's own classes, random weights.

ComfyUI's checkpoint detection only accepts full-size SDXL U-Nets (the smallest SDXL-family match, Segmind Vega, has
780 M parameters), so these are instantiated directly.  The SDXL model keeps SDXL's structure at small widths:
``comfy.model_base.SDXL`` (ADM label embedding of the pooled CLIP-G output plus six size embeddings, ``encode_adm``),
no attention at the first level, linear transformer projections, 64-channel heads (``num_head_channels``), a deeper
middle transformer, and a cross-attention context made of two text encoders: ComfyUI's ``SDXLClipModel`` (CLIP-L and
CLIP-G, penultimate layers concatenated, CLIP-G's projected pooled output) with small configs and the real tokenizers,
so ``CLIPTextEncodeSDXL`` produces real SDXL conditioning.  The SD2 model is ``comfy.supported_models.SD20`` with
v-prediction (ComfyUI's ``ModelSamplingDiscrete`` + ``V_PREDICTION``) and ``SD2ClipModel`` (OpenCLIP-H) made small.

Run inside a process that has ComfyUI on sys.path with ``comfy.cli_args.args.cpu = True`` set first.
"""
from __future__ import annotations

import torch

from .inprocess import comfy_patcher
from .tiny_models import _init_all, taesd_state_dict

_SMALL_TEXT = {"intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3}
# model_options["<model_name>_model_config"] overrides keys of ComfyUI's fixed text-encoder configs (sd1_clip.py)
SDXL_TEXT_ENCODERS = {"clip_l_model_config": dict(_SMALL_TEXT, hidden_size=32, projection_dim=32),
                      "clip_g_model_config": dict(_SMALL_TEXT, hidden_size=64, projection_dim=64)}
SDXL_POOLED = 64  # CLIP-G's projection_dim (1280 in SDXL)
SDXL_CONTEXT = 32 + 64  # CLIP-L + CLIP-G hidden sizes (768 + 1280 = 2048 in SDXL)

# SDXL: channel_mult [1, 2, 4], transformer_depth [0, 0, 2, 2, 10, 10], middle depth 10, context 2048, adm 2816
SDXL_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1],
                 channel_mult=[1, 2], transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1],
                 transformer_depth_middle=2, context_dim=SDXL_CONTEXT, use_linear_in_transformer=True,
                 adm_in_channels=SDXL_POOLED + 6 * 256, num_classes="sequential", use_spatial_transformer=True,
                 legacy=False, use_temporal_attention=False)

SD2_TEXT_ENCODER = {"clip_h_model_config": dict(_SMALL_TEXT, hidden_size=64, projection_dim=64)}
# SD2: channel_mult [1, 2, 4, 4], attention at every level but the last, linear projections, context 1024
SD2_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=[1, 1],
                channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
                transformer_depth_middle=1, context_dim=64, use_linear_in_transformer=True, adm_in_channels=None,
                use_spatial_transformer=True, legacy=False, use_temporal_attention=False)


def tiny_sdxl(seed: int = 0):
    """A ModelPatcher over ``comfy.model_base.SDXL`` (ε-prediction) in the tiny SDXL config above."""
    return comfy_patcher(SDXL_UNET, "eps", seed, family="SDXL")


def tiny_sd2(prediction: str = "v", seed: int = 0):
    """A ModelPatcher over an SD 2.x (``comfy.supported_models.SD20``) U-Net, v-prediction by default."""
    return comfy_patcher(SD2_UNET, prediction, seed, family="SD20")


def _text_encoder(target, model_options: dict, seed: int):
    import comfy.sd

    clip = comfy.sd.CLIP(target, model_options={**model_options, "dtype": torch.float32})
    _init_all(clip.cond_stage_model, torch.Generator().manual_seed(seed))
    return clip


def tiny_sdxl_clip(seed: int = 0):
    """ComfyUI's SDXL text encoder (``SDXLClipModel``: CLIP-L + CLIP-G) at small widths, real SDXL tokenizers."""
    import comfy.sdxl_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    return _text_encoder(target, SDXL_TEXT_ENCODERS, seed)


def tiny_sd2_clip(seed: int = 0):
    """ComfyUI's SD2 text encoder (``SD2ClipModel``, OpenCLIP-H) at small width, real tokenizer."""
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip as sd2_clip

    target = comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)
    return _text_encoder(target, SD2_TEXT_ENCODER, seed)


def tiny_vae(seed: int = 0):
    """A random TAESD as ComfyUI's ``VAE`` (4-channel latents, 8× down)."""
    import comfy.sd

    return comfy.sd.VAE(sd=taesd_state_dict(torch.Generator().manual_seed(seed)))


def sdxl_conditioning(clip, text: str, width: int, height: int):
    """CONDITIONING from ComfyUI's own ``CLIPTextEncodeSDXL`` node (pooled output + size conditioning)."""
    from comfy_extras.nodes_clip_sdxl import CLIPTextEncodeSDXL

    return CLIPTextEncodeSDXL.execute(clip, width, height, 0, 0, width, height, text, text).result[0]
