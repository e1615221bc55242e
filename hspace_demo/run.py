"""Figures of the bundled demo model from plain Python: inversion, content injection, size- and shape-direction edit
sweeps, interpolation and samples from pure noise.

``python -m hspace_demo.run --out docs/figures [--model FOLDER]`` (default: the bundled models/hspace-shapes-ddpm).
"""
from __future__ import annotations

import argparse
import logging
import os

import torch

import hspace_core as hs
from .images import grid
from .measure import centred_examples, samples_from_noise, shape_direction, size_direction
from .shapes import make_batch

log = logging.getLogger("hspace.demo")


BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
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
    contents, styles = torch.from_numpy(make_batch(4, seed=41)[0]), torch.from_numpy(make_batch(4, seed=42)[0])
    sched = hs.EditSchedule(num_steps=args.steps, t_edit=400, t_boost=0)
    with torch.no_grad():
        inv = hs.invert(model, images, args.steps, refine_iters=1)
        log.info("inversion PSNR %.1f dB", inv.report.psnr)
        traj = inv.trajectory
        # one row per pair: content, style, then γ = 0.3 / 0.5 / 0.7 / 0.9
        content_traj, style_x_T = hs.invert(model, contents, args.steps).trajectory, hs.invert(model, styles, args.steps).x_T
        mixes = [hs.inject(model, style_x_T, content_traj, g, sched) for g in (0.3, 0.5, 0.7, 0.9)]
        mix_rows = [torch.stack([contents[i], styles[i]] + [m[i] for m in mixes]) for i in range(4)]
        # Asyrp edits along directions from paired examples: large − small, circles − squares
        size = size_direction(model, 16, 10, args.steps)
        tests = hs.invert(model, centred_examples(4, (7.5, 9.5), 30), args.steps)
        sweep = [torch.cat([hs.edit(model, tests.x_T[i:i + 1], size, s, sched) for s in (-2, -1, 0, 1, 2)])
                 for i in range(4)]
        shape = shape_direction(model, 16, 11, args.steps)
        shape_tests = hs.invert(model, torch.cat([centred_examples(2, (7.5, 9.5), 12, "square"),
                                                  centred_examples(2, (7.5, 9.5), 13, "circle")]), args.steps)
        shape_sweep = [torch.cat([hs.edit(model, shape_tests.x_T[i:i + 1], shape, s, sched) for s in (-3, -1.5, 0, 1.5, 3)])
                       for i in range(4)]
        frames = hs.interpolate(model, inv.x_T[:1], inv.x_T[1:], 5, hs.EditSchedule(args.steps, t_edit=200, clip_x0=1.0),
                                trajectory_a=traj.select([0]), trajectory_b=traj.select([1]))
        samples = samples_from_noise(model, 16, 100, seed=0, clip_x0=1.0, eta=1.0)
    outputs = {"inputs_and_reconstructions": [images, inv.reconstruction], "content_injection": mix_rows,
               "edit_sweep": sweep, "shape_edit_sweep": shape_sweep, "interpolation": [frames], "samples": [samples[:8], samples[8:]]}
    for name, rows in outputs.items():
        path = os.path.join(args.out, f"{name}.png")
        grid(rows).save(path)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
