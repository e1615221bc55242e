"""Tiny random-weight models that ComfyUI's own loaders accept, built at test time (never committed).

Run inside a process that has ComfyUI on sys.path with ``comfy.cli_args.args.cpu = True`` set first.
Writes, under ``models/``:
- ``checkpoints/v1-5-pruned-emaonly.safetensors``: an SD1-shaped checkpoint (320-channel one-level U-Net,
  full-shape random CLIP-L, TAESD VAE), so the sample workflows run unchanged;
- ``diffusers/tiny-pixel-unet``: a small diffusers UNet2DModel folder for the pixel-model workflows;
- ``open_clip/hspace-tiny-clip.json`` + ``.safetensors``: a tiny open_clip model config and random weights, so the
  CLIP direction-training workflow runs offline through the node's real config/weights loading path.

Every weight is initialised (ComfyUI's ops leave some uninitialised and LDM zero-inits output layers, which
would make h edits invisible).
"""
from __future__ import annotations

import json
import math
import os

import torch

VERSION = "2"  # bump to rebuild cached models


def _init_all(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
                continue
            for p in m.parameters(recurse=False):
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=generator, device=generator.device) / math.sqrt(p[0].numel()))
                else:
                    p.copy_(torch.randn(p.shape, generator=generator, device=generator.device) * 0.01)
    return module


def taesd_state_dict(generator: torch.Generator, scale: float = 0.18215, latent_channels: int = 4) -> dict:
    """A random TAESD VAE (the small VAE ComfyUI's VAE class recognises by its keys) as a state dict; 16 latent
    channels make a TAEF1-shaped one (Flux, SD3)."""
    import comfy.taesd.taesd as taesd

    vae = _init_all(taesd.TAESD(latent_channels=latent_channels), generator)
    sd = {f"taesd_encoder.{k}": v for k, v in vae.taesd_encoder.state_dict().items()}
    sd.update({f"taesd_decoder.{k}": v for k, v in vae.taesd_decoder.state_dict().items()})
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(scale), torch.tensor(0.0)
    return sd


def build_sd15_checkpoint(path: str, comfy_dir: str, seed: int = 0) -> None:
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    # SD1 detection: model_channels 320, context_dim 768 read from an input-block transformer, conv proj_in.
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                     channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                     transformer_depth_middle=1, context_dim=768, num_heads=8, num_head_channels=-1,
                     use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False,
                     adm_in_channels=None, dtype=torch.float32, device="cpu",
                     operations=comfy.ops.disable_weight_init)
    _init_all(unet, g)
    vae = taesd_state_dict(g)
    with open(os.path.join(comfy_dir, "comfy", "sd1_clip_config.json")) as f:
        clip = _init_all(comfy.clip_model.CLIPTextModel(json.load(f), torch.float32, "cpu", comfy.ops.manual_cast), g)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.state_dict().items()})
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def build_pixel_unet(folder: str, seed: int = 0, mid_block: bool = True) -> None:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, mid_block_type="UNetMidBlock2D" if mid_block else None)
    unet.save_pretrained(os.path.join(folder, "unet"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                   "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"}, f)


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def build_tiny_open_clip(folder: str, seed: int = 0) -> None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hspace-tiny-clip.json"), "w") as f:
        json.dump(TINY_CLIP, f, indent=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(TINY_CLIP["embed_dim"], CLIPVisionCfg(**TINY_CLIP["vision_cfg"]), CLIPTextCfg(**TINY_CLIP["text_cfg"]))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "hspace-tiny-clip.safetensors"))


def build_all(models_dir: str, comfy_dir: str) -> None:
    stamp = os.path.join(models_dir, f".tiny-models-v{VERSION}")
    if os.path.exists(stamp):
        return
    build_sd15_checkpoint(os.path.join(models_dir, "checkpoints", "v1-5-pruned-emaonly.safetensors"), comfy_dir)
    build_pixel_unet(os.path.join(models_dir, "diffusers", "tiny-pixel-unet"))
    build_pixel_unet(os.path.join(models_dir, "diffusers", "no-middle-block-unet"), mid_block=False)
    build_tiny_open_clip(os.path.join(models_dir, "open_clip"))
    open(stamp, "w").close()


if __name__ == "__main__":
    import sys

    comfy_dir, models_dir = sys.argv[1], sys.argv[2]
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    build_all(models_dir, comfy_dir)
