"""StyleID on ComfyUI models, in-process: the layer numbering against ComfyUI's own diffusers key map on the real SD1.5
and SDXL architectures (built on the meta device), the K/V bytes docs/styleid.md gives, and the attn1 patch on the
tiny SDXL (own features give the reconstruction; nothing reaches the MODEL)."""
import copy
import math
import os
import re

import pytest
import torch

from harness.inprocess import SD15_UNET, run_in_comfy
from hspace_core import EditSchedule, generate
from hspace_core.adapters.attention import decoder_self_attention
from hspace_core.attention_store import LAYER_PRESETS, bytes_per_image
from hspace_core.styleid import StyleIDSettings, record_features, styleid_inject

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDXL_UNET = dict(SD15_UNET, num_res_blocks=[2] * 3, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 context_dim=2048, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                 adm_in_channels=2816, num_classes="sequential")
DIFFUSERS = {
    "SD15": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "SDXL": dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}


def _comfy_unet(config):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**config, dtype=torch.float32, device="meta", operations=comfy.ops.disable_weight_init)


def _diffusers_unet(family):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(sample_size=64, layers_per_block=2, **DIFFUSERS[family])


class _Patcher:
    def __init__(self, dm):
        self.dm = dm

    def get_model_object(self, name):
        return self.dm


@pytest.mark.parametrize("family,config", [("SD15", SD15_UNET), ("SDXL", SDXL_UNET)])
def test_layer_names_are_comfyui_output_blocks_and_map_to_the_same_diffusers_modules(pack, family, config):
    import comfy.utils
    from hspace_pack.nodes.comfy.attention import decoder_self_attention_layers

    comfy_layers = decoder_self_attention_layers(_Patcher(_comfy_unet(config)))
    assert comfy_layers[0] == "middle.0"
    comfy_layers = tuple(name for name in comfy_layers if not name.startswith("middle"))
    unet = _diffusers_unet(family)
    modules = decoder_self_attention(unet)
    assert tuple(modules) == comfy_layers
    names = {module: name for name, module in unet.named_modules()}
    to_comfy = comfy.utils.unet_to_diffusers(copy.deepcopy(config))  # diffusers key → ComfyUI key
    for layer, module in modules.items():
        block, transformer = layer.split(".")
        key = f"{names[module]}.to_q.weight"
        assert to_comfy[key] == f"output_blocks.{block}.1.transformer_blocks.{transformer}.attn1.to_q.weight", key
    preset = LAYER_PRESETS["StyleID SD1.x" if family == "SD15" else "SDXL"]
    assert set(preset) <= set(comfy_layers)
    if family == "SD15":  # the official code's layers 7–11: up_blocks[i // 3].attentions[i % 3]
        official = {f"up_blocks.{i // 3}.attentions.{i % 3}.transformer_blocks.0.attn1" for i in range(7, 12)}
        assert {names[modules[layer]] for layer in preset} == official


def _kv_bytes(family, side, steps):
    """K/V bytes of one image for a preset, from the architecture: tokens = latent area / 4^level, dim = to_k width."""
    unet = _diffusers_unet(family)
    modules = decoder_self_attention(unet)
    latent = side // 8
    shapes = {}
    for layer in LAYER_PRESETS["StyleID SD1.x" if family == "SD15" else "SDXL"]:
        block = int(layer.split(".")[0])
        level = next(i for i, up in enumerate(unet.up_blocks)  # up level i runs at latent / 2^(levels − 1 − i)
                     if block < sum(len(u.resnets) for u in unet.up_blocks[:i + 1]))
        res = latent // 2 ** (len(unet.up_blocks) - 1 - level)
        shapes[layer] = (res * res, modules[layer].to_k.out_features)
    return bytes_per_image(shapes, 2, steps, 2)


def test_docs_give_the_kv_bytes_of_the_architectures(pack):
    docs = open(os.path.join(ROOT, "docs", "styleid.md")).read()
    for family, side in (("SD15", 512), ("SDXL", 1024)):
        for steps in (20, 50):
            mib = _kv_bytes(family, side, steps) / 2**20
            assert f"| {family} {side}² | {steps} | {mib:.0f} MiB" in docs, (family, side, steps, f"{mib:.0f}")


@pytest.fixture(scope="module")
def sdxl(pack):
    from harness.tiny_sdxl import sdxl_conditioning, tiny_sdxl, tiny_sdxl_clip

    return tiny_sdxl(), sdxl_conditioning(tiny_sdxl_clip(), "a lighthouse", 64, 64)


def test_attn1_patch_on_comfy_sdxl_own_features_reconstruct_and_nothing_leaks(pack, sdxl):
    from hspace_pack.nodes.comfy.attention import ComfyAttention, decoder_self_attention_layers

    patcher, positive = sdxl
    before = copy.deepcopy(patcher.model_options)
    layers = decoder_self_attention_layers(patcher)
    assert layers == ("middle.0", "middle.1", "0.0", "1.0")  # the tiny SDXL: a 2-deep middle, one decoder level
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    steps = 5

    def body(m, x):
        access = ComfyAttention(m)
        inv, q = record_features(m, x0, steps, layers, ("q",), source="reconstruction", access=access)
        _, kv = record_features(m, x0, steps, layers, source="reconstruction", access=access)
        plain = generate(m, inv.x_T, EditSchedule.reconstruction(steps))
        same = styleid_inject(m, inv.x_T, inv.x_T, kv, StyleIDSettings(layers, 0.75, 1.0, start="content"), steps,
                       content_q=q, access=access)
        hot = styleid_inject(m, inv.x_T, inv.x_T, kv, StyleIDSettings(layers, 0.75, 1.5, start="content"), steps,
                      content_q=q, access=access)
        return plain, same, hot, kv

    with torch.inference_mode():
        plain, same, hot, kv = run_in_comfy(patcher, x0, body, positive=positive)
    scale = plain.abs().max()
    assert torch.allclose(same, plain, atol=1e-5 * scale), (same - plain).abs().max()
    assert (hot - plain).abs().max() > 1e-3 * scale
    assert kv.layers == layers and kv.tensors["0.0.k"].shape[1:] == (1, 16, 128)  # 4×4 tokens at the 8×8 latent
    assert patcher.model_options == before
