"""Figures of the bundled demo model from plain Python: inversion, content injection, a size-direction edit sweep,
interpolation and samples from pure noise.

``python -m hspace_core.demo.run --out docs/figures [--model FOLDER]`` (default: the bundled models/hspace-shapes-ddpm).
"""
from __future__ import annotations

import argparse
import logging
import os

import torch

import hspace_core as hs
from .images import grid
from .measure import size_examples
from .shapes import make_batch

log = logging.getLogger("hspace.demo")


BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models",
                       "hspace-shapes-ddpm")


def load_model(folder: str = BUNDLED) -> hs.DiffusersUNet:
    """A diffusers pipeline folder (unet/ + scheduler/) as an ``HSpaceModel``."""
    import json

    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        return hs.DiffusersUNet(unet.eval(), json.load(f))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--model", default=BUNDLED)
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
        traj = inv.trajectory
        mix = torch.cat([hs.inject(model, inv.x_T[1:], traj.select([0]), g, sched) for g in (0.0, 0.3, 0.5, 0.7, 0.9)])
        # Asyrp edit along a size direction: mean h of large minus mean h of small centred examples
        small, large = size_examples(16, (6.0, 7.0), 10), size_examples(16, (10.0, 11.0), 20)
        size = hs.direction_from_examples(hs.invert(model, large, args.steps).trajectory,
                                          hs.invert(model, small, args.steps).trajectory).global_mean()
        tests = hs.invert(model, size_examples(4, (7.5, 9.5), 30), args.steps)
        sweep = [torch.cat([hs.edit(model, tests.x_T[i:i + 1], size, s, sched) for s in (-2, -1, 0, 1, 2)])
                 for i in range(4)]
        frames = hs.interpolate(model, inv.x_T[:1], inv.x_T[1:], 5, hs.EditSchedule(args.steps, t_edit=200, clip_x0=1.0),
                                trajectory_a=traj.select([0]), trajectory_b=traj.select([1]))
        noise = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        samples = hs.generate(model, noise, hs.EditSchedule(50, t_edit=0, clip_x0=1.0))
    outputs = {"inputs_and_reconstructions": [images, inv.reconstruction], "content_injection": [images, mix],
               "edit_sweep": sweep, "interpolation": [frames], "samples": [samples[:8], samples[8:]]}
    for name, rows in outputs.items():
        path = os.path.join(args.out, f"{name}.png")
        grid(rows).save(path)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
