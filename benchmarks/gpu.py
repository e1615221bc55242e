"""Seconds and peak GPU memory of the h-space steps on Stable Diffusion 1.5's and SDXL's U-Nets, random weights in
float16 (the real architectures, written out below: nothing is downloaded).

    bash benchmarks/gpu.sh                     # on a CUDA machine: makes a venv, installs from PyPI, runs
    python -m benchmarks.gpu [--repeats 5]     # in an environment that has torch (CUDA) and diffusers
    python -m benchmarks.gpu --dry-run         # on the CPU at tiny widths and sizes: checks that everything runs

Rows per architecture, all under classifier-free guidance (scale 7.5, batch 1, so 2 U-Net rows a pass):
- plain step: one guided pass and a DDIM step;
- edited step: the cond branch's h edited (Asyrp's asymmetric step: the encoder runs once, the decoder again for the
  edited row);
- calibrated step: content injection with style calibration (an edited pass, then a plain pass from the calibrated
  x_t);
- invert + edit: negative-prompt DDIM inversion and an Asyrp edit, 20 steps each, of one 512² image (SD1.5, a 64²
  latent) or 1024² image (SDXL, 128²), U-Net only (no VAE: its cost does not depend on the method).
Goals (issue): invert + edit ≤ 2 s (SD1.5) and ≤ 6 s (SDXL) on an H200; an edited step ≤ 1.30× a plain one.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

import hspace_core as hs
from .step_cost import step_functions

GUIDANCE = 7.5
STEPS = 20


@dataclass(frozen=True)
class Architecture:
    name: str
    config: dict  # diffusers UNet2DConditionModel arguments
    latent: int  # latent side (image side / 8)
    context: tuple[int, int]  # (tokens, width) of the text conditioning
    pooled: int = 0  # SDXL's pooled text embedding width (0: none)


SD15 = Architecture("SD1.5 (512²)", dict(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3), 64, (77, 768))

SDXL = Architecture("SDXL (1024²)", dict(  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json
    sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280),
    layers_per_block=2, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
    128, (77, 2048), 1280)

# --dry-run: the same block structure at tiny widths
TINY = {
    SD15.name: Architecture("SD1.5 (dry run)", dict(
        SD15.config, sample_size=8, cross_attention_dim=32, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
        norm_num_groups=8), 8, (5, 32)),
    SDXL.name: Architecture("SDXL (dry run)", dict(
        SDXL.config, sample_size=8, cross_attention_dim=32, attention_head_dim=(2, 2, 4),
        block_out_channels=(32, 32, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 2),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8, norm_num_groups=8), 8, (5, 32),
        16),
}


def build(arch: Architecture, device: torch.device, dtype: torch.dtype) -> hs.DiffusersUNet:
    """The U-Net with seeded random weights, and its conditioning under guidance."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch.config).eval().to(device, dtype)
    g = torch.Generator().manual_seed(1)
    text = lambda: torch.randn(1, *arch.context, generator=g).to(device, dtype)
    added = {}
    if arch.pooled:
        side = arch.latent * 8
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=dtype, device=device)
        added = {"text_embeds": (text()[:, 0, :arch.pooled], text()[:, 0, :arch.pooled]), "time_ids": (time_ids, time_ids)}
    cond = hs.Conditioning(text(), text(), GUIDANCE, edit_branches="cond", added_cond=added)
    return hs.DiffusersUNet(unet, conditioning=cond)


class Clock:
    """Median seconds and peak memory of a callable (CUDA: synchronised, peak allocated bytes)."""

    def __init__(self, device: torch.device, repeats: int):
        self.cuda, self.repeats = device.type == "cuda", repeats

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> tuple[float, float | None]:
        fn()  # warm-up (kernels, allocator)
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return statistics.median(times), peak


def rows_for(model: hs.DiffusersUNet, arch: Architecture, clock: Clock, steps: int) -> list[tuple[str, float, float | None]]:
    device = model.device
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, arch.latent, arch.latent, generator=g).to(device)  # latents in float32, as ComfyUI's
    t, a, a_prev = 500, model.schedule.alpha_bar(500), model.schedule.alpha_bar(450)
    shift = lambda h, tt, b: h + 0.1
    with torch.no_grad():
        h_rows = model.predict(x, t).h
    content = hs.HTrajectory((t,), h_rows[None] * 0.9, model.branches, device=str(device), dtype="float32")
    inject = hs.content_injection(content, 0.5)

    steps_of = step_functions(model, x, t, a, a_prev, shift, inject)

    direction = hs.Direction("global", torch.randn(h_rows.shape[1:], generator=g) * 0.1)
    sched = hs.EditSchedule(num_steps=steps, t_edit=400)

    def invert_and_edit():
        found = hs.invert_guided(model, x, steps, method="negative_prompt", report=False)
        hs.edit(found.guided(model), found.inversion.x_T, direction, 1.0, sched)

    out = []
    with torch.no_grad():
        for name, fn in (("plain step", steps_of["plain"]), ("edited step (CFG, cond edited)", steps_of["asymmetric"]),
                         ("calibrated step", steps_of["calibrated"]), (f"invert + edit, {steps} steps", invert_and_edit)):
            seconds, peak = clock(fn)
            out.append((name, seconds, peak))
    return out


def table(results: dict, device: str, dtype: torch.dtype) -> str:
    lines = [f"device: {device}, U-Net in {str(dtype).replace('torch.', '')}, guidance {GUIDANCE}, batch 1", "",
             "| architecture | row | seconds | × plain step | peak GiB |", "|---|---|---:|---:|---:|"]
    for arch, rows in results.items():
        plain = rows[0][1]
        for name, seconds, peak in rows:
            ratio = f"{seconds / plain:.2f}" if "step" in name and "steps" not in name else ""
            lines.append(f"| {arch} | {name} | {seconds:.4f} | {ratio} | {'–' if peak is None else f'{peak:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (checks that everything runs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, archs, repeats, steps = torch.device("cpu"), torch.float32, list(TINY.values()), 1, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run on a GPU machine, or pass --dry-run to check on the CPU.")
        device, dtype, archs, repeats, steps = torch.device("cuda"), torch.float16, [SD15, SDXL], args.repeats, args.steps
    clock = Clock(device, repeats)
    results = {}
    for arch in archs:
        model = build(arch, device, dtype)
        results[arch.name] = rows_for(model, arch, clock, steps)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    text = table(results, name, dtype)
    print(text)
    return text


if __name__ == "__main__":
    main()
