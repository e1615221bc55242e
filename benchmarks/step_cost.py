"""Cost of each kind of step relative to a plain DDIM step on the same U-Net, measured in one run.

    python -m benchmarks.step_cost [--repeats 5] [--skip-celebahq] [--out docs/benchmarks.md]

Models (random weights, real architectures): Stable Diffusion 1.5's UNet2DConditionModel at a 64×64 latent
(batch 1, with and without CFG) and the DDPM CelebA-HQ 256 UNet2DModel at 256².  Each row is the median time of
one step (or pass) divided by the median time of a plain DDIM step of the same model in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import hspace_core as hs
from hspace_core.ddim import calibrated_x_t, ddim_step
from .report import publish


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()


def celebahq_unet():
    from diffusers import UNet2DModel

    # google/ddpm-celebahq-256's configuration
    return UNet2DModel(sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
                       down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4).eval()


def step_functions(model, x: torch.Tensor, t: int, a, a_prev, shift, inject) -> dict:
    """The steps whose costs the benchmarks compare, each a call with no arguments, from x at t to t_prev:
    a plain DDIM step, Asyrp's asymmetric step with the edit ``shift`` (P_t from the edited ε, D_t from the
    original), InjectFusion's injection step with ``inject``, and the calibrated injection step (ω = 0.3: the
    calibrated x_t, then a plain step from it)."""

    def plain():
        ddim_step(x, model.predict(x, t).eps, a, a_prev)

    def asymmetric():
        p = model.predict(x, t, shift)
        ddim_step(x, p.eps_edited, a, a_prev, eps_direction=p.eps)

    def injection():
        p = model.predict(x, t, inject)
        ddim_step(x, p.eps_edited, a, a_prev, eps_direction=p.eps)

    def calibrated():
        p = model.predict(x, t, inject)
        x_cal = calibrated_x_t(x, p.eps, p.eps_edited, a, 0.3)
        ddim_step(x_cal, model.predict(x_cal, t).eps, a, a_prev)

    return {"plain": plain, "asymmetric": asymmetric, "injection": injection, "calibrated": calibrated}


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, x: torch.Tensor, repeats: int, reference=None) -> dict:
    """Step costs of an ``HSpaceModel``; ``reference`` is the same model on its path without encoder reuse
    (diffusers: ``reuse_encoder=False``; ComfyUI: two denoiser calls per edited step)."""
    t, a, a_prev = 500, model.schedule.alpha_bar(500), model.schedule.alpha_bar(480)
    h_rows = model.predict(x, t).h
    content = hs.HTrajectory((t,), h_rows[None].clone() * 0.9, model.branches)
    shift = lambda h, tt, b: h + 0.1
    inject = hs.content_injection(content, 0.5)

    steps = step_functions(model, x, t, a, a_prev, shift, inject)
    base = median_seconds(steps["plain"], repeats)
    rows = {"plain DDIM step (below t_edit)": 1.0}
    for name, fn in (("asymmetric edit step (Asyrp)", steps["asymmetric"]),
                     ("content injection step (DiffStyle)", steps["injection"]),
                     ("calibrated injection step (ω)", steps["calibrated"])):
        rows[name] = median_seconds(fn, repeats) / base
    full = reference or hs.DiffusersUNet(model.unet, model.schedule, model.conditioning, reuse_encoder=False)

    def asymmetric_full():
        p = full.predict(x, t, shift)
        ddim_step(x, p.eps_edited, a, a_prev, eps_direction=p.eps)

    rows["asymmetric step, reference path (diffusers: no encoder reuse; ComfyUI: two calls)"] = median_seconds(asymmetric_full, repeats) / base
    per_step_bytes = h_rows.numel() * 4
    return {"base_seconds": base, "ratios": rows, "h_bytes_per_step": per_step_bytes,
            "h_shape": tuple(h_rows.shape)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-celebahq", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--comfy", action="store_true", help="only the ComfyUI-path columns (adapter run in-process)")
    p.add_argument("--latent", type=int, default=64, help="latent side for the SD1.5-architecture U-Nets")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    results = {}
    if args.comfy:
        results = comfy_results(args)
    else:
        results = diffusers_results(args)
    write_table(results, args)


def comfy_results(args) -> dict:
    """Through the real ComfyUI adapter (``run_in_comfy``): ComfyUI's SD1.5-architecture UNetModel with random
    weights, and the bundled pixel model through the pixel loader."""
    from harness.inprocess import load_pack, sd15_comfy_patcher

    _, pixel_model = load_pack()
    results = {}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, args.latent, args.latent, generator=g)
    text = [[torch.randn(1, 77, 768, generator=g), {}]]
    blank = [[torch.zeros(1, 77, 768), {}]]
    patcher = sd15_comfy_patcher()
    side = f"{args.latent}×{args.latent} latent"
    for label, cfg, branches in ((f"ComfyUI SD1.5 arch., {side}, cfg 1", 1.0, "cond"),
                                 (f"ComfyUI SD1.5 arch., {side}, CFG 7.5, cond edited", 7.5, "cond"),
                                 (f"ComfyUI SD1.5 arch., {side}, CFG 7.5, both edited", 7.5, "both")):
        results[label] = comfy_measure(patcher, x, args.repeats, positive=text, negative=blank, cfg=cfg,
                                       edit_branches=branches)
    del patcher
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "hspace-shapes-ddpm")
    pixel = pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(folder))
    size = pixel.model.diffusion_model.unet.config.sample_size
    results[f"ComfyUI bundled pixel model, {size}²"] = comfy_measure(
        pixel, torch.randn(1, 3, size, size, generator=g), args.repeats)
    return results


def comfy_measure(patcher, x, repeats, **kwargs) -> dict:
    import copy

    from harness.inprocess import run_in_comfy

    def body(model, latent):
        reference = copy.copy(model)
        reference.one_call = False
        return measure(model, x, repeats, reference)

    with torch.inference_mode():
        return run_in_comfy(patcher, torch.zeros_like(x), body, **kwargs)


def diffusers_results(args) -> dict:
    results = {}
    with torch.no_grad():
        sd = sd15_unet()
        sched = hs.schedule_from_betas(hs.betas_scaled_linear(1000))
        text = torch.randn(1, 77, 768)
        x = torch.randn(1, 4, 64, 64)
        results["SD1.5 U-Net, 64×64 latent, no CFG"] = measure(hs.DiffusersUNet(sd, sched, hs.Conditioning(text)), x, args.repeats)
        results["SD1.5 U-Net, 64×64 latent, CFG 7.5"] = measure(
            hs.DiffusersUNet(sd, sched, hs.Conditioning(text, torch.zeros_like(text), 7.5)), x, args.repeats)
        del sd
        if not args.skip_celebahq:
            unet = celebahq_unet()
            results["DDPM CelebA-HQ U-Net, 256², batch 1"] = measure(
                hs.DiffusersUNet(unet, hs.schedule_from_betas(hs.betas_linear(1000))), torch.randn(1, 3, 256, 256),
                args.repeats)
    return results


def write_table(results: dict, args) -> None:
    lines = [f"Measured by `python -m benchmarks.step_cost` on {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s), median of {args.repeats}. "
             "Ratios are to a plain DDIM step of the same model in the same run.", ""]
    names = list(next(iter(results.values()))["ratios"])
    lines.append("| step | " + " | ".join(results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r['ratios'][name]:.2f}×" for r in results.values()) + " |")
    lines.append("| plain step, seconds | " + " | ".join(f"{r['base_seconds']:.2f} s" for r in results.values()) + " |")
    lines.append("| h stored per step (float32) | " + " | ".join(
        f"{r['h_bytes_per_step'] / 1024:.0f} KiB {list(r['h_shape'])}" for r in results.values()) + " |")
    publish("\n".join(lines), args.out, "Step cost")


if __name__ == "__main__":
    main()
