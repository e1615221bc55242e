"""Memory of h trajectories and of a step: computed for SD1.5 at 512² and SDXL at 1024², measured where it fits.

    python -m benchmarks.memory [--latent 64] [--steps 50] [--t-edit 400] [--skip-peak] [--out FILE]

- Computed (arithmetic from the architectures): h per step, per CFG branch and for both, and a whole trajectory in
  float32 / float16, all steps or only t ≥ t_edit (what an injection reads).  h is the middle block's output:
  (rows, 1280, latent/8, latent/8) for SD1.5 (channel_mult 1,2,4,4: three downsamples) and (rows, 1280, latent/4,
  latent/4) for SDXL (channel_mult 1,2,4: two).
- Measured, float16 against float32 storage, on the bundled pixel model (trained weights): the relative error of
  the stored h, of a "reconstruction through stored h" (replacing h by the h the reconstruction itself computed: exact in
  float32)
  and of a content injection.
- Measured, peak resident memory of one step on ComfyUI's SD1.5-architecture U-Net (random weights) at a
  ``--latent`` latent with CFG 7.5: each kind of step in a fresh process, the peak (VmHWM, reset after loading)
  above the resident memory before the step; also the h shape the model really returns.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import hspace_core as hs
from .report import publish

H_CHANNELS = 1280
ARCHS = {"SD1.5, 512²": (64, 8), "SDXL, 1024²": (128, 4)}  # latent side, latent side / h side


def h_sizes(steps: int, t_edit: int) -> list[dict]:
    """Bytes of h per step and per trajectory for each architecture (computed, batch 1)."""
    grid = hs.timestep_grid(steps, 1000, "asyrp")
    edited = sum(1 for t in grid if t >= t_edit)
    rows = []
    for name, (latent, down) in ARCHS.items():
        per_branch = H_CHANNELS * (latent // down) ** 2  # elements
        rows.append({"arch": name, "h_shape": [1, H_CHANNELS, latent // down, latent // down], "steps": steps,
                     "edited_steps": edited, "per_step_fp32": {1: per_branch * 4, 2: per_branch * 8},
                     "trajectory": {(dtype, keep): per_branch * 2 * size * (steps if keep == "all" else edited)
                                    for dtype, size in (("float32", 4), ("float16", 2)) for keep in ("all", "edited")}})
    return rows


def precision_errors(pairs: int = 8, steps: int = 20, t_edit: int = 400, gamma: float = 0.5) -> dict:
    """float16 vs float32 storage on the bundled pixel model: relative errors (see the module docstring)."""
    from hspace_demo.run import load_model
    from hspace_demo.shapes import make_batch

    model = load_model()
    content = torch.from_numpy(make_batch(pairs, seed=1001)[0])
    style = torch.from_numpy(make_batch(pairs, seed=2002)[0])
    schedule = hs.EditSchedule(steps, t_edit=t_edit)
    with torch.no_grad():
        inv_c = hs.invert(model, content, steps, report=False)
        x_T_s = hs.invert(model, style, steps, report=False).x_T
        full = inv_c.trajectory
        half = hs.HTrajectory(full.timesteps, full.h, full.branches, full.fingerprint, full.source, dtype="float16")
        h_error = float((half.h.float() - full.h).norm() / full.h.norm())
        own = hs.generate(model, inv_c.x_T, hs.EditSchedule.reconstruction(steps))
        along = hs.capture(model, inv_c.x_T, steps)  # h the reconstruction itself computes
        recon = {k: hs.inject(model, inv_c.x_T, along, 1.0, schedule, mode="replace")
                 for k, along in (("float32", along), ("float16", hs.capture(model, inv_c.x_T, steps,
                                                                            h_storage=hs.HStorage("float16"))))}
        mixed = {k: hs.inject(model, x_T_s, traj, gamma, schedule) for k, traj in (("float32", full), ("float16", half))}
        plain_style = hs.generate(model, x_T_s, schedule)
    change = (mixed["float32"] - plain_style).norm()
    return {"pairs": pairs, "steps": steps, "t_edit": t_edit, "gamma": gamma, "h_relative_error": h_error,
            "replace_fp32_max_abs": float((recon["float32"] - own).abs().max()),
            "replace_fp16_max_abs": float((recon["float16"] - own).abs().max()),
            "replace_fp16_rmse": float((recon["float16"] - own).pow(2).mean().sqrt()),
            "inject_fp16_max_abs": float((mixed["float16"] - mixed["float32"]).abs().max()),
            "inject_fp16_relative_to_change": float((mixed["float16"] - mixed["float32"]).norm() / change)}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_of_step(kind: str, latent: int) -> dict:
    """In this process: one ``kind`` step (plain, edited, calibrated) of ComfyUI's SD1.5-architecture U-Net at CFG
    7.5; the peak resident memory above the memory before the step (KiB) and the h shape."""
    from harness.inprocess import load_pack, run_in_comfy, sd15_comfy_patcher
    from hspace_core.ddim import calibrated_x_t

    load_pack()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=g)
    text, blank = [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.zeros(1, 77, 768), {}]]
    patcher = sd15_comfy_patcher()
    shift = lambda h, t, b: h + 0.1
    out = {}

    def body(model, _x):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        before, t0 = _rss_kib("VmRSS"), time.perf_counter()
        if kind == "plain":
            p = model.predict(x, 500)
        else:
            p = model.predict(x, 500, shift)
            if kind == "calibrated":
                model.predict(calibrated_x_t(x, p.eps, p.eps_edited, model.schedule.alpha_bar(500), 0.3), 500)
        out.update(seconds=time.perf_counter() - t0, peak_kib=_rss_kib("VmHWM") - before, rss_before_kib=before, h_shape=list(p.h.shape),
                   h_dtype=str(p.h.dtype))

    with torch.inference_mode():
        run_in_comfy(patcher, torch.zeros_like(x), body, positive=text, negative=blank, cfg=7.5)
    return out


def peak_memory(latent: int) -> dict:
    """``peak_of_step`` of each kind, each in a fresh process (peaks do not mix)."""
    results = {}
    for kind in ("plain", "edited", "calibrated"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", kind, "--latent", str(latent)],
                              capture_output=True, text=True, check=True)
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def report(sizes, errors, peaks, latent) -> str:
    mib = lambda b: f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"
    lines = ["### h bytes (computed from the architectures, batch 1)", "",
             f"{sizes[0]['steps']} DDIM steps on the Asyrp grid, {sizes[0]['edited_steps']} of them at t ≥ t_edit.", "",
             "| model | h per step | per step, 1 branch (fp32) | per step, both CFG branches (fp32) | trajectory fp32, "
             "all steps | fp32, t ≥ t_edit | fp16, all steps | fp16, t ≥ t_edit |", "|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        tr = s["trajectory"]
        lines.append(f"| {s['arch']} | {s['h_shape']} | {mib(s['per_step_fp32'][1])} | {mib(s['per_step_fp32'][2])} | "
                     f"{mib(tr['float32', 'all'])} | {mib(tr['float32', 'edited'])} | {mib(tr['float16', 'all'])} | "
                     f"{mib(tr['float16', 'edited'])} |")
    if errors:
        e = errors
        lines += ["", f"### float16 against float32 storage (measured, bundled pixel model, {e['pairs']} image pairs, "
                  f"{e['steps']} steps, t_edit {e['t_edit']})", "",
                  "| quantity | value |", "|---|---|",
                  f"| relative error of stored h, ‖h16 − h32‖/‖h32‖ | {e['h_relative_error']:.2e} |",
                  f"| reconstruction through stored h (replace-injection of the image's own h), max abs error, fp32 | "
                  f"{e['replace_fp32_max_abs']:.1e} |",
                  f"| same, fp16: max abs error / RMSE (images in [−1, 1]) | {e['replace_fp16_max_abs']:.1e} / "
                  f"{e['replace_fp16_rmse']:.1e} |",
                  f"| content injection (γ = {e['gamma']}), fp16 − fp32: max abs | {e['inject_fp16_max_abs']:.1e} |",
                  f"| same, relative to the injection's own change ‖mix − style‖ | "
                  f"{e['inject_fp16_relative_to_change']:.1e} |"]
    if peaks:
        lines += ["", f"### Peak memory of one step (measured: ComfyUI SD1.5 architecture, random weights, "
                  f"{latent}×{latent} latent, CFG 7.5, batch 1, CPU)", "",
                  "| step | peak above the loaded model | seconds (one run) | h the model returned |", "|---|---|---|---|"]
        for kind, p in peaks.items():
            lines.append(f"| {kind} | {mib(p['peak_kib'] * 1024)} | {p['seconds']:.1f} s | {p['h_shape']} {p['h_dtype']} |")
        lines.append(f"\nResident before the step (model loaded): {mib(peaks['plain']['rss_before_kib'] * 1024)}.")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t-edit", type=int, default=400)
    p.add_argument("--skip-peak", action="store_true")
    p.add_argument("--skip-precision", action="store_true")
    p.add_argument("--child", choices=("plain", "edited", "calibrated"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.child:
        print(json.dumps(peak_of_step(args.child, args.latent)))
        return
    sizes = h_sizes(args.steps, args.t_edit)
    errors = None if args.skip_precision else precision_errors()
    peaks = None if args.skip_peak else peak_memory(args.latent)
    publish(report(sizes, errors, peaks, args.latent), args.out)


if __name__ == "__main__":
    main()
