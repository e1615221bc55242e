"""Measure the papers' h-space claims on the bundled demo model (models/hspace-shapes-ddpm).

    python benchmarks/demo_model.py [--pairs 64] [--steps 20] [--out docs/demo_model.md]

Everything is batched over seeded (content, style) pairs of procedural images and scored from pixels
(hspace_core.demo.readouts).  Sections: how much h matters to ε (h swap vs the two images' ε), DDIM
inversion error, content injection against its baselines, style calibration, asymmetric vs symmetric
steps, an Asyrp size direction, and timings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hspace_core as hs  # noqa: E402
from hspace_core.demo import readouts as ro  # noqa: E402
from hspace_core.demo.run import BUNDLED, load_model  # noqa: E402
from hspace_core.demo.shapes import SHAPES, Factors, make_batch, render  # noqa: E402

def scores(out: torch.Tensor, content: np.ndarray, style: np.ndarray) -> dict:
    """Mean IoU of the output's shape with the content's and the style's, and background distances."""
    o = out.numpy()
    iou_c = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(c)) for a, c in zip(o, content)]
    iou_s = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(s)) for a, s in zip(o, style)]
    bg_s = [ro.colour_distance(ro.mean_background(a), ro.mean_background(s)) for a, s in zip(o, style)]
    bg_c = [ro.colour_distance(ro.mean_background(a), ro.mean_background(c)) for a, c in zip(o, content)]
    return {"iou_content": float(np.mean(iou_c)), "iou_style": float(np.mean(iou_s)),
            "bg_to_style": float(np.nanmean(bg_s)), "bg_to_content": float(np.nanmean(bg_c))}


def h_swap_ratio(model, a: torch.Tensor, b: torch.Tensor, t: int, seed: int = 0) -> float:
    """‖ε(x_a | h_b) − ε(x_a)‖ / ‖ε(x_b) − ε(x_a)‖ with the same noise: how much of the difference h carries."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(a.shape, generator=g)
    ab = model.schedule.alpha_bar(t)
    xa, xb = ab**0.5 * a + (1 - ab) ** 0.5 * noise, ab**0.5 * b + (1 - ab) ** 0.5 * noise
    pa, pb = model.predict(xa, t), model.predict(xb, t)
    swapped = model.predict(xa, t, lambda h, tt, br: pb.h).eps_edited
    return float(((swapped - pa.eps).flatten(1).norm(dim=1) / (pb.eps - pa.eps).flatten(1).norm(dim=1)).mean())


def size_examples(n: int, radius: tuple[float, float], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        fg = tuple(rng.uniform(0.3, 1.0, 3)); bg = tuple(rng.uniform(0.0, 0.4, 3))
        imgs.append(render(Factors(int(rng.integers(len(SHAPES))), float(rng.uniform(*radius)), 16.0, 16.0, fg, bg, bg)))
    return torch.from_numpy(np.stack(imgs))


def evaluate(model, pairs: int, steps: int, log=print) -> dict:
    results, timings = {}, {}
    content_np, _ = make_batch(pairs, seed=1001)
    style_np, _ = make_batch(pairs, seed=2002)
    content, style = torch.from_numpy(content_np), torch.from_numpy(style_np)

    results["h_swap"] = {t: h_swap_ratio(model, content, style, t) for t in (200, 400, 600, 800)}
    log("h swap ratio", results["h_swap"])

    inv_rows = {}
    sub = content[:16]
    for n in (20, 50, 100):
        for k in (0, 1, 2):
            t0 = time.time()
            inv = hs.invert(model, sub, n, refine_iters=k)
            inv_rows[(n, k)] = (inv.report.psnr, time.time() - t0)
    results["inversion"] = inv_rows
    log("inversion", inv_rows)

    t0 = time.time()
    inv_c = hs.invert(model, content, steps, refine_iters=1)
    timings["invert+report, batch"] = time.time() - t0
    inv_s = hs.invert(model, style, steps, refine_iters=1)
    traj = inv_c.trajectory
    recon_style = inv_s.reconstruction
    results["baseline_style_reconstruction"] = scores(recon_style, content_np, style_np)

    sweep = {}
    for gamma in [round(0.1 * i, 1) for i in range(11)]:
        out = hs.inject(model, inv_s.x_T, traj, gamma, hs.EditSchedule(steps, t_edit=400), strict_fingerprint=False)
        sweep[gamma] = scores(out, content_np, style_np)
    results["gamma_sweep_t_edit_400"] = sweep
    log("gamma sweep", {g: (round(v["iou_content"], 3), round(v["iou_style"], 3)) for g, v in sweep.items()})
    results["naive_replace"] = scores(hs.inject(model, inv_s.x_T, traj, 1.0, hs.EditSchedule(steps, t_edit=400),
                                                mode="replace"), content_np, style_np)
    results["t_edit_sweep_gamma_0.5"] = {te: scores(hs.inject(model, inv_s.x_T, traj, 0.5, hs.EditSchedule(steps, t_edit=te)),
                                                    content_np, style_np) for te in (200, 400, 600)}
    results["calibration_gamma_0.5"] = {w: scores(hs.inject(model, inv_s.x_T, traj, 0.5, hs.EditSchedule(steps, t_edit=400),
                                                            omega=w), content_np, style_np) for w in (0.0, 0.3, 0.7, 1.0)}
    hook = hs.content_injection(traj, 0.5)
    sym = hs.run_reverse(model, inv_s.x_T, hs.EditSchedule(steps, t_edit=400), edit=hook, asymmetric=False).x0
    results["symmetric_gamma_0.5"] = scores(sym, content_np, style_np)

    # Asyrp: a size direction from centred examples (mean h of large minus mean h of small)
    small, large = size_examples(32, (6.0, 7.0), 7), size_examples(32, (10.0, 11.0), 8)
    d = hs.direction_from_examples(hs.invert(model, large, steps).trajectory, hs.invert(model, small, steps).trajectory)
    d = d.global_mean()
    test_np = size_examples(pairs, (7.5, 9.5), 9).numpy()
    inv_t = hs.invert(model, torch.from_numpy(test_np), steps)
    base = inv_t.reconstruction.numpy()
    edits = {}
    for s in (-2.0, -1.0, 0.0, 1.0, 2.0):
        out = hs.edit(model, inv_t.x_T, d, s, hs.EditSchedule(steps, t_edit=400)).numpy()
        ratio = [ro.area(o) / max(ro.area(b), 1) for o, b in zip(out, base)]
        fg_shift = [ro.colour_distance(ro.foreground_colour(o), ro.foreground_colour(b)) for o, b in zip(out, base)]
        moved = np.mean([(r > 1) if s > 0 else (r < 1) for r in ratio]) if s != 0 else float("nan")
        edits[s] = {"area_ratio": float(np.median(ratio)), "moved_intended_way": float(moved),
                    "fg_colour_shift": float(np.nanmedian(fg_shift))}
    results["size_direction"] = edits
    log("size direction", edits)

    x = content[:1]
    t0 = time.time()
    for _ in range(10):
        model.predict(x, 500)
    timings["U-Net pass, batch 1"] = (time.time() - t0) / 10
    t0 = time.time()
    for _ in range(10):
        model.predict(x, 500, lambda h, t, b: h + 0.1)
    timings["edited step (2 decoders), batch 1"] = (time.time() - t0) / 10
    t0 = time.time()
    hs.invert(model, x, steps, report=False)
    timings[f"inversion, {steps} steps, batch 1"] = time.time() - t0
    results["timings"] = timings
    return results


def to_markdown(r: dict, pairs: int, steps: int) -> str:
    L = [f"Measured by `python benchmarks/demo_model.py --pairs {pairs} --steps {steps}` on the bundled model; "
         f"{pairs} seeded (content, style) pairs, {steps} DDIM steps, t_edit = 400 unless stated.", ""]
    L += ["## How much h carries", "", "‖ε(x_a | h_b) − ε(x_a)‖ / ‖ε(x_b) − ε(x_a)‖ (same noise):", "",
          "| t | " + " | ".join(str(t) for t in r["h_swap"]) + " |", "|---|" + "---|" * len(r["h_swap"]),
          "| ratio | " + " | ".join(f"{v:.2f}" for v in r["h_swap"].values()) + " |", ""]
    L += ["## DDIM inversion (16 images)", "", "| steps | PSNR, no refinement | 1 fixed-point iteration | 2 iterations |",
          "|---|---|---|---|"]
    for n in (20, 50, 100):
        L.append(f"| {n} | " + " | ".join(f"{r['inversion'][(n, k)][0]:.1f} dB ({r['inversion'][(n, k)][1]:.0f} s)"
                                          for k in (0, 1, 2)) + " |")
    L += ["", "## Content injection (DiffStyle)", "",
          "| setting | IoU with content | IoU with style | background → style | background → content |", "|---|---|---|---|---|"]

    def row(name, s):
        L.append(f"| {name} | {s['iou_content']:.3f} | {s['iou_style']:.3f} | {s['bg_to_style']:.3f} | {s['bg_to_content']:.3f} |")

    row("reconstruct the style (baseline)", r["baseline_style_reconstruction"])
    row("naive replacement h̃ = h_content (baseline)", r["naive_replace"])
    for g, s in r["gamma_sweep_t_edit_400"].items():
        row(f"γ = {g}", s)
    for te, s in r["t_edit_sweep_gamma_0.5"].items():
        row(f"γ = 0.5, t_edit = {te}", s)
    for w, s in r["calibration_gamma_0.5"].items():
        row(f"γ = 0.5, calibration ω = {w}", s)
    row("γ = 0.5, symmetric step (P and D from the injected ε)", r["symmetric_gamma_0.5"])
    L += ["", "## Asyrp size direction (mean h of large − mean h of small, centred examples)", "",
          "| strength | median area ratio | moved the intended way | median foreground colour shift |", "|---|---|---|---|"]
    for s, v in r["size_direction"].items():
        L.append(f"| {s:+.0f} | {v['area_ratio']:.2f} | {v['moved_intended_way']:.2f} | {v['fg_colour_shift']:.3f} |")
    L += ["", "## Timings (this machine, 1 thread)", ""] + [f"- {k}: {v:.3f} s" for k, v in r["timings"].items()]
    return "\n".join(L) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=BUNDLED)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = load_model(args.model)
    with torch.no_grad():
        r = evaluate(model, args.pairs, args.steps)
    text = to_markdown(r, args.pairs, args.steps)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# The bundled demo model, measured\n\n" + text)


if __name__ == "__main__":
    main()
