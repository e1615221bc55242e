"""Cost of an edited step relative to a plain one on the Flux and SD3.5 architectures, through ComfyUI, in one run.

    python -m benchmarks.dit_cost [--repeats 3] [--latent 32] [--double 2] [--single 4] [--joint 4] [--out FILE]
                                  [--only asyrp|fluxspace]
    python -m benchmarks.dit_cost --gpu        # CUDA: Flux.1 and SD3.5 large at full depth, 1024², bfloat16
    python -m benchmarks.dit_cost --dry-run    # tiny widths on the CPU: checks that everything runs

Models: ComfyUI's own ``comfy.ldm.flux.model.Flux`` and ``MMDiT`` (``harness.tiny_dit.tiny_flux``, ``tiny_sd3``),
random weights, at the real widths and heads: Flux.1 (hidden 3072, 24 heads of 128, MLP ratio 4, T5 context 4096,
CLIP-pooled 768, guidance embedding) and SD3.5 large (hidden 2432 = 64·38, 38 heads of 64, RMS q/k norm, context
4096, pooled 2048), on the CPU with fewer blocks than the real 19 + 38 and 38 (``--double``, ``--single``,
``--joint``), with ``--gpu`` at full depth.  Flux runs under its distilled guidance (one row a call), SD3.5 under
CFG 4.5 with the cond branch edited (two rows a call).  h is read at the model's default site (the middle double /
joint block's attention output), so the share of blocks before the site depends on the block counts.

Columns: the median time of one denoiser evaluation inside ComfyUI's sampling (plain), and over it, the edited step
as one call on [x; x] with the other blocks running only the rows that differ (``edit_batch.DitCopies``,
``dit.SharedRows``), as one call running every row in every block, and as the two calls of the path before
(``ComfyHSpaceModel.one_call = False``).

FluxSpace Edit on the same Flux (every double block edited, the paper's choice, the coarse edit on): the median time
of one denoiser evaluation inside its window over the plain one, with the edit and null prompts as rows of the model
call (their rows dropped after the last edited block: ``nodes/comfy/fluxspace.py``) and as two more calls (the path
before, ``FluxSpace.one_call = False``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from .report import publish

FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
            mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
            patch_size=2, qkv_bias=True, guidance_embed=True)
SD35_LARGE = dict(in_channels=16, out_channels=16, patch_size=2, depth=38, num_blocks=38, num_patches=192 * 192,
                  pos_embed_max_size=192, adm_in_channels=2048, qk_norm="rms", x_block_self_attn_layers=[],
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 64 * 38}})
SD3_CFG = 4.5


def flux_config(double: int, single: int, tiny: bool = False) -> dict:
    """Flux.1's configuration with ``double`` + ``single`` blocks (``tiny``: harness.tiny_dit's widths)."""
    return {"depth": double, "depth_single_blocks": single} if tiny else {**FLUX, "depth": double,
                                                                          "depth_single_blocks": single}


def sd3_config(joint: int, tiny: bool = False) -> dict:
    """SD3.5 large's configuration with ``joint`` blocks (``tiny``: harness.tiny_dit's widths)."""
    return {"num_blocks": joint} if tiny else {**SD35_LARGE, "num_blocks": joint}


def conditioning(context: int, pooled: int, tokens: int, device, seed: int, **extra):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, context, generator=g).to(device),
             {"pooled_output": torch.randn(1, pooled, generator=g).to(device), **extra}]]


def interleaved_medians(fns: dict, repeats: int, cuda: bool) -> dict:
    """Median seconds of each callable over ``repeats`` rounds that run each once in turn (after one warm-up round),
    so a change of load between rounds falls on all of them alike.  On the CPU the process's CPU time (one thread:
    what the other processes on a shared machine do not add to); on CUDA the synchronised wall time."""
    clock = time.perf_counter if cuda else time.process_time
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = clock()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if round_:
                times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(comfy_model, patcher, positive, negative, cfg: float, latent: int, repeats: int) -> dict:
    """Seconds of a plain denoiser evaluation at σ = 0.5 and of an edited one (cond edited): one call with the rows
    shared, one call running every row in every block (``DitCopies.prepare`` off), and two calls."""
    import comfy.sample
    import comfy.samplers

    from hspace_pack.nodes.comfy.edit_batch import DitCopies

    cuda = patcher.load_device.type == "cuda"
    found = {}
    shift = lambda h, t, branch: h + 0.1  # noqa: E731

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        hs = comfy_model.ComfyHSpaceModel.for_guider(denoiser, extra_args, patcher, "cond", "middle")
        sigma = sigmas[0]

        def edited(one_call, shared=True):
            def run():
                hs.one_call = one_call
                if shared:
                    hs.denoised(x, sigma, shift, t=500)
                    return
                prepare, DitCopies.prepare = DitCopies.prepare, lambda self, options, dm, where: options
                try:
                    hs.denoised(x, sigma, shift, t=500)
                finally:
                    DitCopies.prepare = prepare
            return run

        found["site"] = hs.site
        found.update(interleaved_medians({"plain": lambda: hs.denoised(x, sigma, t=500), "one call": edited(True),
                                          "one call, every row": edited(True, shared=False),
                                          "two calls": edited(False)}, repeats, cuda))
        return x

    x = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        comfy.sample.sample_custom(patcher, x, cfg, comfy.samplers.KSAMPLER(body), torch.tensor([0.5, 0.0]),
                                   positive, negative, torch.zeros_like(x), disable_pbar=True, seed=0)
    return found


def measure_fluxspace(patcher, cond, latent: int, repeats: int) -> dict:
    """Seconds of a plain denoiser evaluation at σ = 0.5 and of one inside FluxSpace Edit's window (every joint block,
    λ 1, λ_coarse 0.5): the edit and null prompts as rows of the call, and as calls of their own."""
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.sample
    import comfy.samplers

    from hspace_core.sampling import SigmaWindow
    from hspace_pack.nodes.comfy.fluxspace import KEY, patched_with_fluxspace

    cuda = patcher.load_device.type == "cuda"
    patched = patched_with_fluxspace(patcher, cond(5)[0], cond(6)[0], 1.0, 0.5, SigmaWindow(1.0, 0.0), "all")
    edit = patched.wrappers[comfy.patcher_extension.WrappersMP.APPLY_MODEL][KEY][0].__self__
    found = {}

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        sigma = sigmas[0] * x.new_ones(x.shape[0])
        plain = {**extra_args, "model_options": comfy.model_patcher.create_model_options_clone(patcher.model_options)}

        def edited(one_call):
            def run():
                edit.one_call = one_call
                denoiser(x, sigma, **extra_args)
            return run

        found.update(interleaved_medians({"plain": lambda: denoiser(x, sigma, **plain), "one call": edited(True),
                                          "three calls": edited(False)}, repeats, cuda))
        return x

    x = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        comfy.sample.sample_custom(patched, x, 1.0, comfy.samplers.KSAMPLER(body), torch.tensor([0.5, 0.0]), cond(0),
                                   cond(1), torch.zeros_like(x), disable_pbar=True, seed=0)
    return found


def run(args) -> dict:
    from harness.inprocess import load_pack
    from harness.tiny_dit import FLUX_CONTEXT, FLUX_POOLED, SD3_CONTEXT, SD3_POOLED, tiny_flux, tiny_sd3

    comfy_model, _ = load_pack(cpu=not args.gpu)
    import comfy.model_management

    device = "cuda" if args.gpu else "cpu"
    dtype = torch.bfloat16 if args.gpu else torch.float32
    tiny, width = args.dry_run, "tiny width" if args.dry_run else "real width"
    double, single, joint = ((FLUX["depth"], FLUX["depth_single_blocks"], SD35_LARGE["num_blocks"]) if args.gpu else
                             (args.double, args.single, args.joint))
    widths = (FLUX_CONTEXT, FLUX_POOLED) if tiny else (FLUX["context_in_dim"], FLUX["vec_in_dim"])
    flux_cond = lambda seed: conditioning(*widths, args.tokens, device, seed, guidance=3.5)  # noqa: E731
    widths3 = (SD3_CONTEXT, SD3_POOLED) if tiny else (4096, SD35_LARGE["adm_in_channels"])
    sd3_cond = lambda seed: conditioning(*widths3, args.tokens, device, seed)  # noqa: E731
    models = {f"Flux.1 ({width}), {double} double + {single} single blocks, {args.latent}² latent, {args.tokens} text "
              "tokens, distilled guidance": (lambda: tiny_flux(0, dtype, device, **flux_config(double, single, tiny)),
                                             flux_cond, 1.0),
              f"SD3.5 large ({width}), {joint} joint blocks, {args.latent}² latent, {args.tokens} text tokens, CFG "
              f"{SD3_CFG}": (lambda: tiny_sd3(0, dtype, device, **sd3_config(joint, tiny)), sd3_cond, SD3_CFG)}
    results, fluxspace = {}, {}
    for name, (build, cond, cfg) in models.items():
        if args.only == "fluxspace" and cond is not flux_cond:
            continue
        model = build()
        if args.only != "fluxspace":
            results[name] = measure(comfy_model, model, cond(0), cond(1), cfg, args.latent, args.repeats)
        if cond is flux_cond and args.only != "asyrp":
            fluxspace[name.replace(", distilled guidance", "")] = measure_fluxspace(model, cond, args.latent,
                                                                                   args.repeats)
        del model
        comfy.model_management.unload_all_models()  # the next model's room on the GPU
        comfy.model_management.soft_empty_cache()
    return {"asyrp": results, "fluxspace": fluxspace}


def table(results: dict, args) -> str:
    where = torch.cuda.get_device_name() if args.gpu else (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} "
                                                           "thread(s), CPU time of the process")
    dtype = "bfloat16" if args.gpu else "float32"
    flags = (" --gpu" if args.gpu else "") + (f" --only {args.only}" if args.only else "")
    lines = [f"Measured by `python -m benchmarks.dit_cost{flags}` on {where}, torch "
             f"{torch.__version__}, {dtype}, random weights, median of {args.repeats} interleaved rounds; ratios to a "
             "plain step of the same model in the same run.", ""]
    ratio = lambda r, key: f"{r[key] / r['plain']:.2f}×"  # noqa: E731
    if results["asyrp"]:
        lines += ["| model (h site) | plain step | edited, one call (rows shared) | edited, one call, every row in "
                  "every block | edited, two calls (before) |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} ({r['site']}) | {r['plain']:.3f} s | {ratio(r, 'one call')} | "
                  f"{ratio(r, 'one call, every row')} | {ratio(r, 'two calls')} |"
                  for name, r in results["asyrp"].items()]
        lines.append("")
    if results["fluxspace"]:
        lines += ["| FluxSpace Edit, every double block, on | plain step | in the window: prompts as rows of one call "
                  "(now) | three calls (before) |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['plain']:.3f} s | {ratio(r, 'one call')} | {ratio(r, 'three calls')} |"
                  for name, r in results["fluxspace"].items()]
    return "\n".join(lines).rstrip("\n")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    p.add_argument("--tokens", type=int, default=32, help="text tokens (Flux-dev: 512, schnell: 256)")
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--joint", type=int, default=4)
    p.add_argument("--only", choices=["asyrp", "fluxspace"], default=None,
                   help="measure only the Asyrp edited step (Flux and SD3.5) or only FluxSpace Edit (Flux)")
    p.add_argument("--gpu", action="store_true", help="CUDA, bfloat16, full depth at 1024² (128² latent)")
    p.add_argument("--dry-run", action="store_true", help="tiny widths on the CPU")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        args.gpu, args.latent, args.repeats = False, 16, 1
    elif args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run on a GPU machine, or pass --dry-run to check on the CPU.")
        args.latent, args.tokens = 128, 512
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    text = table(run(args), args)
    publish(text, args.out, "Edited step cost on transformers")
    return text


if __name__ == "__main__":
    main()
