"""Inversion, measured side by side on the bundled demo model (and its class-conditional variant for guidance).

``python -m benchmarks.inversion [--images 16] [--out docs/inversion.md]`` (from the repository root).

1. Reconstruction RMSE / PSNR of regenerate(invert(x)) at 10 / 20 / 50 / 100 steps for the seeds' convention
   (ε at the current point) and the diffusers one (ε at the next timestep), each with k = 0, 1, 2 fixed-point
   iterations, next to diffusers' own DDIMInverseScheduler + DDIMScheduler driving the same U-Net.
2. Content injection (γ = 0.5, t_edit = 400, 20 steps) with the content h read along the inversion (InjectFusion)
   or along the reconstruction from x_T.
3. Guidance: reconstruction PSNR and seconds at cfg 1 / 3 / 7.5 for plain DDIM inversion, fixed-point k = 1, 2,
   negative-prompt and null-text inversion, on the class-conditional demo model (labels = shape type × background polarity).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

import hspace_core as hs
from hspace_demo.measure import injection_scores
from hspace_demo.run import BUNDLED, load_model
from hspace_demo.shapes import make_batch
from hspace_demo.train_conditional import NULL_CLASS, label_of
from .report import publish

CONDITIONAL = os.path.join(os.path.dirname(BUNDLED), "hspace-shapes-ddpm-cond")
STEPS = (10, 20, 50, 100)
REFINE = (0, 1, 2)


def psnr_rmse(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    mse = float((a.double() - b.double()).pow(2).mean())
    return 10 * math.log10(4.0 / mse), math.sqrt(mse)


def diffusers_anchor(model: hs.DiffusersUNet, x0: torch.Tensor, steps: int, config: dict) -> torch.Tensor:
    """diffusers' DDIMInverseScheduler then DDIMScheduler with the same config, driving the same U-Net."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    inverse, forward = DDIMInverseScheduler.from_config(config), DDIMScheduler.from_config(config)
    inverse.set_timesteps(steps)
    forward.set_timesteps(steps)
    x = x0
    for t in inverse.timesteps:
        x = inverse.step(model.unet(x, t).sample, t, x).prev_sample
    for t in forward.timesteps:
        x = forward.step(model.unet(x, t).sample, t, x).prev_sample
    return x


def reconstruction_table(model, x0, config, log) -> list[dict]:
    rows = []
    for steps in STEPS:
        for convention in hs.INVERSION_CONVENTIONS:
            for k in REFINE:
                t0 = time.time()
                inv = hs.invert(model, x0, steps, convention=convention, refine_iters=k)
                p, r = psnr_rmse(inv.reconstruction, x0)
                rows.append(dict(steps=steps, method=f"{convention}, k={k}", psnr=p, rmse=r, seconds=time.time() - t0))
                log(rows[-1])
        t0 = time.time()
        p, r = psnr_rmse(diffusers_anchor(model, x0, steps, config), x0)
        rows.append(dict(steps=steps, method="diffusers DDIMInverseScheduler", psnr=p, rmse=r, seconds=time.time() - t0))
        log(rows[-1])
    return rows


def injection_table(model, pairs: int, log) -> list[dict]:
    content, _ = make_batch(pairs, seed=101)
    style, _ = make_batch(pairs, seed=202)
    sched = hs.EditSchedule(20, t_edit=400)
    rows = []
    style_x_T = hs.invert(model, torch.from_numpy(style), 20, report=False).x_T
    for source in hs.H_SOURCES:
        traj = hs.invert(model, torch.from_numpy(content), 20, h_source=source).trajectory
        out = torch.cat([hs.inject(model, style_x_T[i:i + 1], traj.select([i]), 0.5, sched) for i in range(pairs)])
        rows.append(dict(source=source, **injection_scores(out, content, style)))
        log(rows[-1])
    return rows


def guidance_table(folder: str, images: int, steps: int, log) -> list[dict]:
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32).eval()
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        base = hs.DiffusersUNet(unet, json.load(f), class_labels=torch.zeros(1, dtype=torch.long))
    imgs, factors = make_batch(images, seed=303)
    x0 = torch.from_numpy(imgs)
    labels = torch.tensor([label_of(f) for f in factors])
    positive, negative = base.class_embedding_of(labels), base.class_embedding_of(torch.full_like(labels, NULL_CLASS))
    rows = []
    for w in (1.0, 3.0, 7.5):
        model = base.with_conditioning(hs.Conditioning(positive=positive, negative=negative, guidance_scale=w))
        for method, k in (("plain", 0), ("plain", 1), ("plain", 2), ("negative_prompt", 0), ("negative_prompt", 1),
                          ("null_text", 0)):
            if w == 1.0 and method != "plain":
                continue  # no negative branch at guidance 1: both are plain inversion
            t0 = time.time()
            with torch.no_grad() if method != "null_text" else torch.enable_grad():
                r = hs.invert_guided(model, x0, steps, method=method, refine_iters=k)
            name = ("plain DDIM" if method == "plain" else method.replace("_", "-")) + (f", fixed-point k={k}" if k else "")
            rows.append(dict(cfg=w, method=name, psnr=r.report.psnr, seconds=time.time() - t0))
            log(rows[-1])
    return rows


def to_markdown(recon, inject, guided, images: int, pairs: int, guided_images: int, guided_steps: int) -> str:
    out = []
    if recon:
        out += [f"### Reconstruction of regenerate(invert(x)), {images} images (PSNR dB / RMSE, images in [-1, 1])",
                "", "| method | " + " | ".join(f"{s} steps" for s in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
        for method in dict.fromkeys(r["method"] for r in recon):
            cells = [next(r for r in recon if r["method"] == method and r["steps"] == s) for s in STEPS]
            out.append(f"| {method} | " + " | ".join(f"{c['psnr']:.1f} / {c['rmse']:.3f}" for c in cells) + " |")
        out.append("")
    if inject:
        out += [f"### Content injection by content-h source ({pairs} pairs, γ 0.5, t_edit 400, 20 steps)", "",
                "| h source | IoU with content | IoU with style | background → style | background → content |",
                "|---|---|---|---|---|"]
        out += [f"| {r['source']} | {r['iou_content']:.3f} | {r['iou_style']:.3f} | {r['bg_to_style']:.3f} | "
                f"{r['bg_to_content']:.3f} |" for r in inject]
        out.append("")
    if guided:
        out += [f"### Guidance: reconstruction PSNR (dB) and seconds, class-conditional demo model, {guided_images} "
                f"images, {guided_steps} steps", "", "| method | cfg 1 | cfg 3 | cfg 7.5 |", "|---|---|---|---|"]
        for method in dict.fromkeys(r["method"] for r in guided):
            cells = []
            for w in (1.0, 3.0, 7.5):
                hit = [r for r in guided if r["method"] == method and r["cfg"] == w]
                cells.append(f"{hit[0]['psnr']:.1f} dB, {hit[0]['seconds']:.1f} s" if hit else "= plain (no negative)")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--guided-images", type=int, default=8)
    p.add_argument("--guided-steps", type=int, default=20)
    p.add_argument("--out", default="")
    p.add_argument("--sections", default="reconstruction,injection,guidance",
                   help="comma-separated subset of reconstruction, injection, guidance")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    torch.set_num_threads(1)
    model = load_model()
    with open(os.path.join(BUNDLED, "scheduler", "scheduler_config.json")) as f:
        config = json.load(f)
    x0 = torch.from_numpy(make_batch(args.images, seed=7)[0])
    with torch.no_grad():
        recon = reconstruction_table(model, x0, config, print) if "reconstruction" in sections else []
        inject = injection_table(model, args.pairs, print) if "injection" in sections else []
    guided = guidance_table(CONDITIONAL, args.guided_images, args.guided_steps, print) if "guidance" in sections else []
    text = to_markdown(recon, inject, guided, args.images, args.pairs, args.guided_images, args.guided_steps)
    publish(text, args.out)


if __name__ == "__main__":
    main()
