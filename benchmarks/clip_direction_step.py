"""Seconds per optimiser step of Asyrp's CLIP direction training (``hspace_core.clip_directions.train_direction``).

    python -m benchmarks.clip_direction_step [--skip-sd] [--threads 1]

One step = the edited prediction ε(x_t | h_t + Δh), the unedited one on the source path, decoding P_t for CLIP
(the VAE for SD), CLIP image features, and the backward pass through the U-Net decoder (and VAE decoder).
Models have random weights and real architectures: the tests' tiny U-Net + tiny open_clip (16 px), and SD1.5's
UNet2DConditionModel at a 64×64 latent with SD's AutoencoderKL decoder (512² images) and open_clip ViT-B-16.
"""
from __future__ import annotations

import argparse
import time

import torch

import hspace_core as hs
from hspace_core.clip_directions import CLIPDirectional, DirectionTraining, train_direction


def tiny(form: str) -> float:
    from harness.tiny import tiny_clip, tiny_pixel_unet

    model = hs.DiffusersUNet(tiny_pixel_unet(size=16))
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = DirectionTraining(form=form, num_steps=40, inversion_steps=10, t_edit=400, epochs=1)
    return train_direction(model, images, tiny_clip(), "a photo", "a red photo", config).seconds_per_step


def sd15(form: str) -> float:
    import open_clip
    from diffusers import AutoencoderKL
    from .step_cost import sd15_unet

    torch.manual_seed(0)
    unet = sd15_unet()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    text = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    model = hs.DiffusersUNet(unet, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                             hs.Conditioning(positive=text))
    clip = CLIPDirectional(open_clip.create_model("ViT-B-16"), open_clip.get_tokenizer("ViT-B-16"))
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    decode = lambda z: vae.decode(z / 0.18215).sample
    with torch.no_grad():
        images = decode(latents).clamp(-1, 1)
    # 10 steps on Asyrp's grid with t_edit 900: one trained timestep (t = 999) — one measured step
    config = DirectionTraining(form=form, num_steps=10, inversion_steps=2, t_edit=900, epochs=1)
    with hs.adapters.base.autograd_ready(vae):
        return train_direction(model, images, clip, "a photo", "a red photo", config, latents=latents,
                               decode=decode).seconds_per_step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-sd", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for form in ("global", "implicit"):
        print(f"tiny U-Net 16 px + tiny CLIP, {form}: {tiny(form):.3f} s/step", flush=True)
    if not args.skip_sd:
        for form in ("global",):
            t0 = time.perf_counter()
            print(f"SD1.5 U-Net 64×64 latent + SD VAE decoder + ViT-B-16, {form}: {sd15(form):.1f} s/step "
                  f"(run incl. set-up and inversion: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
