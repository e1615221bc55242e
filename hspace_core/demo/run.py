"""Library demo: invert two procedural images, mix content and style, edit along a direction, interpolate.

``python -m hspace_core.demo.run --out outputs/demo [--model FOLDER]``; without ``--model`` a tiny random U-Net is
built (plumbing only: random weights make no meaningful pictures).
"""
from __future__ import annotations

import argparse
import logging
import os

import torch

import hspace_core as hs
from .images import grid
from .shapes import make_batch

log = logging.getLogger("hspace.demo")


def load_model(folder: str | None) -> hs.DiffusersUNet:
    from diffusers import UNet2DModel

    if folder is None:
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=32, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        return hs.DiffusersUNet(unet.eval(), hs.schedule_from_betas(hs.betas_linear(1000)))
    import json

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        return hs.DiffusersUNet(unet.eval(), json.load(f))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.makedirs(args.out, exist_ok=True)
    model = load_model(args.model)
    images = torch.from_numpy(make_batch(2, seed=3)[0])
    sched = hs.EditSchedule(num_steps=args.steps, t_edit=400, t_boost=0)
    with torch.no_grad():
        inv = hs.invert(model, images, args.steps, refine_iters=1)
        log.info("inversion PSNR %.1f dB", inv.report.psnr)
        traj = hs.capture(model, inv.x_T, args.steps)
        mix = torch.cat([hs.inject(model, inv.x_T[1:], traj.select([0]), g, sched) for g in (0.0, 0.5, 0.9)])
        direction = hs.direction_from_examples(traj.select([0]), traj.select([1])).global_mean()
        sweep = torch.cat([hs.edit(model, inv.x_T[:1], direction, s, sched) for s in (-1.0, 0.0, 1.0)])
        frames = hs.interpolate(model, inv.x_T[:1], inv.x_T[1:], 5, sched, trajectory_a=traj.select([0]),
                                trajectory_b=traj.select([1]))
    outputs = {"inputs_and_reconstructions": [images, inv.reconstruction], "content_injection": [images, mix],
               "edit_sweep": [sweep], "interpolation": [frames]}
    for name, rows in outputs.items():
        path = os.path.join(args.out, f"{name}.png")
        grid(rows).save(path)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
