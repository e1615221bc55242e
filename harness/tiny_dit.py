"""Tiny Flux- and SD3-architecture models built in memory with ComfyUI's own classes, random weights.

ComfyUI's Flux detection in 0.3.75 fixes 24 heads of 128 channels (hidden 3072), so a Flux small enough for CI
cannot come through the stock loaders; these are instantiated directly, as ``tiny_sdxl.py`` does for SDXL:

- Flux: ``comfy.supported_models.Flux`` → ``comfy.model_base.Flux`` (``comfy.ldm.flux.model.Flux``: double-stream
  and single-stream blocks, RoPE over (index, row, column), guidance embedding as Flux-dev has, pooled vector input,
  ``ModelSamplingFlux`` with its resolution-dependent shift, model type FLUX = CONST flow matching).
- Chroma: ``comfy.supported_models.Chroma`` → ``comfy.model_base.Chroma`` (``comfy.ldm.chroma.model.Chroma``: Flux's
  double and single blocks without their own modulation, every block's shift / scale / gate coming from one
  approximator of σ and guidance, no pooled vector, T5 text only; ``ModelSamplingFlux``, model type FLUX).
- SD3: ``comfy.supported_models.SD3`` → ``comfy.model_base.SD3`` (``OpenAISignatureMMDITWrapper``: joint blocks,
  the last one context-pre-only, pooled ``y`` input, ``ModelSamplingDiscreteFlow`` with shift 3, model type FLOW).

Flux's text encoder is ComfyUI's ``FluxClipModel`` (CLIP-L and T5-XXL, real tokenizers) at small widths
(``tiny_flux_clip``), so CLIPTextEncode and FluxGuidance make real Flux conditioning, and ``tiny_vae16`` a random
TAEF1-shaped VAE.  In-process tests may also make conditioning in code (``flux_conditioning``, ``sd3_conditioning``:
a seeded random context and pooled output of the widths these models take).
Run inside a process that has ComfyUI on sys.path with ``comfy.cli_args.args.cpu = True`` set first.
"""
from __future__ import annotations

import copy

import torch

from .tiny_models import _init_all, taesd_state_dict

FLUX_CONTEXT, FLUX_POOLED = 32, 32  # T5-XXL's 4096 and CLIP-L's 768 in Flux.1
# model_options["<name>_model_config"] overrides keys of ComfyUI's fixed text-encoder configs (sd1_clip.py)
FLUX_TEXT_ENCODERS = {
    "clip_l_model_config": {"hidden_size": FLUX_POOLED, "projection_dim": FLUX_POOLED, "intermediate_size": 64,
                            "num_attention_heads": 2, "num_hidden_layers": 3},
    "t5xxl_model_config": {"d_model": FLUX_CONTEXT, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}}
# Flux.1: hidden 3072, 24 heads of 128 (axes 16, 56, 56), 19 double and 38 single blocks, 16 latent channels, patch 2
FLUX_DIT = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=FLUX_POOLED,
                context_in_dim=FLUX_CONTEXT, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)

# Chroma (Flux.1-schnell pruned): Flux's blocks at Flux's width; the approximator maps (σ, guidance, block index)
# embeddings (in_dim 64) through n_layers 5 of hidden_dim 5120 to out_dim = hidden_size; T5-XXL text (4096)
CHROMA_CONTEXT = FLUX_CONTEXT
CHROMA_DIT = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=CHROMA_CONTEXT,
                  hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
                  theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=2)
CHROMA_TEXT_ENCODERS = {"t5xxl_model_config": FLUX_TEXT_ENCODERS["t5xxl_model_config"]}

# SD3's text encoder pads CLIP-L + CLIP-G to T5-XXL's 4096 (sd3_clip.py, fixed); pooled: CLIP-L's + CLIP-G's
SD3_CONTEXT, SD3_POOLED = 4096, 32 + 64
SD3_TEXT_ENCODERS = {
    "clip_l_model_config": {"hidden_size": 32, "projection_dim": 32, "intermediate_size": 64,
                            "num_attention_heads": 2, "num_hidden_layers": 3},
    "clip_g_model_config": {"hidden_size": 64, "projection_dim": 64, "intermediate_size": 128,
                            "num_attention_heads": 2, "num_hidden_layers": 3}}
# SD3 medium: depth 24 (hidden 64·depth, depth heads), 16 latent channels, patch 2, pos_embed_max_size 192
SD3_DIT = dict(in_channels=16, out_channels=16, patch_size=2, depth=2, num_patches=64 * 64, pos_embed_max_size=64,
               adm_in_channels=SD3_POOLED, context_embedder_config={
                   "target": "torch.nn.Linear", "params": {"in_features": SD3_CONTEXT, "out_features": 128}},
               qk_norm=None, x_block_self_attn_layers=[])


def _patcher(family: str, dit_config: dict, seed: int, dtype=torch.float32, device: str = "cpu"):
    """``family``'s model over ``dit_config`` in ``dtype``, random weights drawn on ``device`` (where it runs:
    the GPU benchmark builds a full-size Flux there) from ``seed``."""
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, family)(copy.deepcopy(dict(dit_config, dtype=dtype)))
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, device=device)
    _init_all(base.diffusion_model, torch.Generator(device).manual_seed(seed))
    if getattr(base.diffusion_model, "pos_embed", None) is not None:  # SD3's fixed sin-cos table, random here
        with torch.no_grad():
            base.diffusion_model.pos_embed.copy_(torch.randn(base.diffusion_model.pos_embed.shape, device=device,
                                                             generator=torch.Generator(device).manual_seed(seed + 1)) * 0.1)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device(device), offload_device=torch.device("cpu"))


def tiny_flux(seed: int = 0, dtype=torch.float32, device: str = "cpu", **config):
    """A ModelPatcher over ``comfy.model_base.Flux`` (Flux-dev shaped: guidance embedding) at small width, in
    ``dtype`` (bfloat16 is Flux's native one; a name such as "bfloat16" is taken too); ``config`` overrides
    ``FLUX_DIT`` (the benchmarks' real widths)."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    # newer ComfyUI (0.33.0) requires txt_ids_dims (Flux.1: none; its detection sets [] for Flux.1)
    extra = {"txt_ids_dims": []} if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)} else {}
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return _patcher("Flux", {**FLUX_DIT, **extra, **config}, seed, dtype, device)


def tiny_chroma(seed: int = 0, dtype=torch.float32, device: str = "cpu", family: str = "Chroma", **config):
    """A ModelPatcher over ``comfy.model_base.Chroma`` at small width; ``config`` overrides ``CHROMA_DIT``
    (``family`` "ChromaRadiance" with its nerf settings: the pixel-space variant the pack refuses)."""
    import dataclasses

    from comfy.ldm.chroma.model import ChromaParams

    # newer ComfyUI (0.33.0) requires txt_ids_dims and vec_in_dim (its detection sets them for every Flux-like model)
    fields = {f.name for f in dataclasses.fields(ChromaParams)}
    extra = {k: v for k, v in (("txt_ids_dims", []), ("vec_in_dim", None)) if k in fields}
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return _patcher(family, {**CHROMA_DIT, **extra, **config}, seed, dtype, device)


def tiny_sd3(seed: int = 0, dtype=torch.float32, device: str = "cpu", **config):
    """A ModelPatcher over ``comfy.model_base.SD3`` (MMDiT joint blocks) at small width; ``config`` overrides
    ``SD3_DIT``."""
    return _patcher("SD3", {**SD3_DIT, **config}, seed, dtype, device)


def _conditioning(tokens: int, width: int, pooled: int, seed: int, **extra):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, width, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g),
                                                         **extra}]]


def flux_conditioning(seed: int = 0, guidance: float = 3.5, tokens: int = 7):
    """A Flux CONDITIONING (T5-shaped context, CLIP-pooled vector, FluxGuidance's ``guidance``) from ``seed``."""
    return _conditioning(tokens, FLUX_CONTEXT, FLUX_POOLED, seed, guidance=guidance)


def chroma_conditioning(seed: int = 0, tokens: int = 7):
    """A Chroma CONDITIONING (T5-shaped context; no pooled vector: T5 gives None, as CLIPTextEncode does) from
    ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CHROMA_CONTEXT, generator=g), {"pooled_output": None}]]


def sd3_conditioning(seed: int = 0, tokens: int = 7):
    """An SD3 CONDITIONING (context and pooled output) from ``seed``."""
    return _conditioning(tokens, SD3_CONTEXT, SD3_POOLED, seed)


def tiny_flux_clip(seed: int = 0):
    """ComfyUI's Flux text encoder (``FluxClipModel``: CLIP-L + T5-XXL) at small widths, real tokenizers."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux as flux

    target = comfy.supported_models_base.ClipTarget(flux.FluxTokenizer, flux.flux_clip(dtype_t5=torch.float32))
    clip = comfy.sd.CLIP(target, model_options={**FLUX_TEXT_ENCODERS, "dtype": torch.float32})
    _init_all(clip.cond_stage_model, torch.Generator().manual_seed(seed))
    return clip


def tiny_chroma_clip(seed: int = 0):
    """ComfyUI's Chroma text encoder (``pixart_t5``: T5-XXL alone, real tokenizer) at small width."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.pixart_t5 as pixart_t5

    target = comfy.supported_models_base.ClipTarget(pixart_t5.PixArtTokenizer,
                                                    pixart_t5.pixart_te(dtype_t5=torch.float32))
    clip = comfy.sd.CLIP(target, model_options={**CHROMA_TEXT_ENCODERS, "dtype": torch.float32})
    _init_all(clip.cond_stage_model, torch.Generator().manual_seed(seed))
    return clip


def tiny_sd3_clip(seed: int = 0):
    """ComfyUI's SD3 text encoder (``SD3ClipModel``: CLIP-L + CLIP-G, no T5, as SD3's loaders allow) at small widths,
    real tokenizers."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip as sd3_clip

    target = comfy.supported_models_base.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(t5=False))
    clip = comfy.sd.CLIP(target, model_options={**SD3_TEXT_ENCODERS, "dtype": torch.float32})
    _init_all(clip.cond_stage_model, torch.Generator().manual_seed(seed))
    return clip


def tiny_vae16(seed: int = 0):
    """A random TAESD with 16 latent channels as ComfyUI's ``VAE`` (Flux's and SD3's latent width, 8× down)."""
    import comfy.sd

    return comfy.sd.VAE(sd=taesd_state_dict(torch.Generator().manual_seed(seed), latent_channels=16))
