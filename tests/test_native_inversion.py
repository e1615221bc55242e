"""One code path for DDIM inversion: H-Space DDIM Inversion and the H-Space Inversion Sampler both run
``nodes/comfy/samplers.run_inversion`` (``sampling.invert_sigmas``), and the node's reconstructions run the SAMPLERs'
``run_h_edit``.  In-process on an SD-shaped ComfyUI U-Net (under CFG) and a pixel U-Net, the node's outputs equal
what it gave on the library's ᾱ-space loop (``hspace_core.invert`` / ``generate`` / ``null_text_embeddings``, as the
node ran them before) up to float32 round-off (``ROUNDING``, measured across CPU kernels), and the sampler equals the
library on grids that start at t = 0 and above."""
import pytest
import torch

from harness.inprocess import run_in_comfy
from hspace_core import (EditSchedule, HStorage, ReconstructionReport, generate, invert, null_text_embeddings,
                         timestep_grid)

from test_comfy_one_call import ROUNDING, conditioning, relative, tiny_sd

from hspace_demo.run import BUNDLED
from hspace_core.sampling import invert_sigmas

STEPS = 4


@pytest.fixture(scope="module")
def nodes(pack):
    import hspace_pack.nodes as nodes

    return nodes


@pytest.fixture(scope="module")
def demo_model(pack):
    _, pixel_model = pack
    return pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(BUNDLED))


def _library(model, x, steps, *, cfg, method, convention, refine_iters, h_source, storage,
             positive=None, negative=None):
    """What H-Space DDIM Inversion returned on the library's loop (the node's code before it ran the σ-space one):
    (x_T, trajectory, reconstruction, PSNR against x, {t: negative embedding})."""
    kw = dict(convention=convention, refine_iters=refine_iters, h_source=h_source, h_storage=storage)
    with torch.inference_mode():
        inv = run_in_comfy(model, x, lambda m, x0: invert(m, x0, steps, report=method == "plain", **kw),
                           positive=positive, negative=negative if method == "plain" else None,
                           cfg=cfg if method == "plain" else 1.0)
    sched = EditSchedule.reconstruction(steps)
    found, recon = {}, inv.reconstruction
    if method == "null_text":
        def body(m, _):
            negatives = null_text_embeddings(m, inv)
            with torch.inference_mode():
                return negatives, generate(m.with_negative(negatives), inv.x_T, sched)

        found, recon = run_in_comfy(model, inv.x_T, body, positive=positive, negative=negative, cfg=cfg)
    elif method == "negative_prompt":
        with torch.inference_mode():
            recon = run_in_comfy(model, inv.x_T, lambda m, _: generate(m, inv.x_T, sched),
                                 positive=positive, negative=positive, cfg=cfg)
    return inv.x_T, inv.trajectory, recon, ReconstructionReport.compare(model.model.process_latent_in(x), recon).psnr, found


def _node(nodes, model, x, steps, *, cfg, method, convention, refine_iters, h_source, positive=None, negative=None,
          keep_h_from_t=0):
    run = lambda: nodes.inversion.DDIMInversion.execute(  # noqa: E731
        model=model, latent={"samples": x}, steps=steps, cfg=cfg, edit_branches="cond", refine_iters=refine_iters,
        cfg_inversion=method, convention=convention, h_source=h_source, h_storage="float32 on CPU",
        keep_h_from_t=keep_h_from_t, positive=positive, negative=negative)
    if method == "null_text":  # null-text optimises under autograd; the other modes run as ComfyUI runs nodes
        return run()
    with torch.inference_mode():
        return run()


def _compare(nodes, pack, model, x, steps, *, cfg, method, convention, refine_iters, h_source, keep_h_from_t=0,
             positive=None, negative=None, noise_floor=False):
    """The node against ``_library`` to ``ROUNDING`` relative; with ``noise_floor`` (the random tiny SD U-Net, where
    the inversion amplifies float32 rounding ~10²×, ~10³× under fixed-point refinement and null-text's Adam) to ROUNDING
    or 3× what the library itself moves when its input moves by 1e-7 relative, whichever is larger."""
    storage = HStorage("float32", "cpu", keep_h_from_t)
    kw = dict(cfg=cfg, method=method, convention=convention, refine_iters=refine_iters, h_source=h_source,
              storage=storage, positive=positive, negative=negative)
    x_T, trajectory, recon, psnr, found = _library(model, x, steps, **kw)
    tol = {"x_T": ROUNDING, "recon": ROUNDING, "h": ROUNDING}
    if noise_floor:
        moved = _library(model, x * (1 + 1e-7), steps, **kw)
        for name, got, want in (("x_T", moved[0], x_T), ("recon", moved[2], recon), ("h", moved[1].h, trajectory.h),
                                *((("negative", moved[4][t], found[t]) for t in found))):
            tol[name] = max(tol.get(name, ROUNDING), 3 * relative(got, want))
    out = _node(nodes, model, x, steps, cfg=cfg, method=method, convention=convention, refine_iters=refine_iters,
                h_source=h_source, positive=positive, negative=negative, keep_h_from_t=keep_h_from_t)
    node_x_T, node_trajectory, node_recon, node_psnr = out.result
    assert relative(node_x_T["samples"], model.model.process_latent_out(x_T)) < tol["x_T"], tol
    assert relative(node_recon["samples"], model.model.process_latent_out(recon)) < tol["recon"], tol
    assert node_psnr == pytest.approx(psnr, rel=1e-4 if not noise_floor else 1e-3)
    assert (node_trajectory.timesteps, node_trajectory.branches, node_trajectory.source, node_trajectory.site) == (
        trajectory.timesteps, trajectory.branches, trajectory.source, trajectory.site)
    assert relative(node_trajectory.h, trajectory.h) < tol["h"], tol
    origin = node_x_T["hspace_origin"]
    assert (origin.timesteps, origin.guidance, origin.guidance_scale) == (timestep_grid(steps), method, cfg)
    if found:
        negative_at = origin.negative_at
        assert set(negative_at) == set(found)
        assert max(relative(negative_at[t], found[t]) for t in found) < tol.get("negative", ROUNDING), tol
    return out


@pytest.mark.parametrize("convention", ["seed", "diffusers"])
@pytest.mark.parametrize("refine_iters", [0, 1])
@pytest.mark.parametrize("h_source", ["inversion", "reconstruction"])
def test_ddim_inversion_on_sd_at_cfg_1_is_todays(nodes, pack, convention, refine_iters, h_source):
    positive, _ = conditioning()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    _compare(nodes, pack, tiny_sd(), x, STEPS, cfg=1.0, method="plain", convention=convention,
             refine_iters=refine_iters, h_source=h_source, positive=positive, noise_floor=True)


@pytest.mark.parametrize("method, refine_iters, h_source, convention, keep", [
    ("plain", 0, "inversion", "seed", 0), ("plain", 1, "reconstruction", "diffusers", 0),
    ("plain", 1, "inversion", "diffusers", 500),
    ("negative_prompt", 0, "inversion", "seed", 0), ("negative_prompt", 1, "reconstruction", "seed", 500),
    ("negative_prompt", 0, "reconstruction", "diffusers", 0),
    ("null_text", 0, "inversion", "seed", 0), ("null_text", 1, "reconstruction", "diffusers", 0)])
def test_ddim_inversion_on_sd_at_cfg_7_5_is_todays(nodes, pack, method, refine_iters, h_source, convention, keep):
    positive, negative = conditioning()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    _compare(nodes, pack, tiny_sd(), x, 3 if method == "null_text" else STEPS, cfg=7.5, method=method,
             convention=convention, refine_iters=refine_iters, h_source=h_source, keep_h_from_t=keep,
             positive=positive, negative=negative, noise_floor=True)


@pytest.mark.parametrize("convention", ["seed", "diffusers"])
@pytest.mark.parametrize("refine_iters", [0, 1])
@pytest.mark.parametrize("h_source", ["inversion", "reconstruction"])
def test_ddim_inversion_on_the_demo_pixel_model_is_todays(nodes, pack, demo_model, convention, refine_iters,
                                                          h_source):
    """The bundled (trained) pixel DDPM: refinement converges there, and the node equals the library up to float32
    round-off (the h of reconstruction-1-seed: 9.1e-6 here, 1.1e-5 on another CPU; ROUNDING)."""
    from hspace_demo.shapes import make_batch

    x = torch.from_numpy(make_batch(2, seed=3)[0])
    _compare(nodes, pack, demo_model, x, STEPS, cfg=1.0, method="plain", convention=convention,
             refine_iters=refine_iters, h_source=h_source)


def _inversion_sampler(nodes, model, latent, sigmas, *, convention="seed", refine_iters=0):
    """The H-Space Inversion Sampler in the real SamplerCustomAdvanced (DisableNoise, BasicGuider), then H-Space
    Inverted x_T: (x_T LATENT, trajectory)."""
    from comfy_extras.nodes_custom_sampler import Guider_Basic, Noise_EmptyNoise, SamplerCustomAdvanced

    guider = Guider_Basic(model)
    guider.set_conds(conditioning()[0])
    sampler, record = nodes.samplers.InversionSampler.execute(refine_iters, "middle", convention).result
    with torch.inference_mode():
        out = SamplerCustomAdvanced.execute(Noise_EmptyNoise(), guider, sampler, sigmas, {"samples": latent}).result[0]
        return nodes.samplers.InvertedXT.execute(model, out, record).result


def _flipped(model, grid):
    """FlipSigmas of the model's sigmas on ``grid`` (and 0): 1e-4, then σ at the grid, increasing."""
    table = model.get_model_object("model_sampling").sigmas.float().cpu()
    return torch.cat([torch.full((1,), 1e-4), table[list(reversed(grid))]])


@pytest.mark.parametrize("convention, refine_iters", [("seed", 0), ("diffusers", 1), ("seed", 2)])
def test_the_inversion_sampler_equals_ddim_inversion(nodes, pack, convention, refine_iters):
    model, positive = tiny_sd(), conditioning()[0]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    native_x_T, native_trajectory = _inversion_sampler(nodes, model, x, _flipped(model, timestep_grid(STEPS)),
                                                       convention=convention, refine_iters=refine_iters)
    node_x_T, node_trajectory, _, _ = _node(nodes, model, x, STEPS, cfg=1.0, method="plain", convention=convention,
                                            refine_iters=refine_iters, h_source="inversion", positive=positive)
    assert relative(native_x_T["samples"], node_x_T["samples"]) < ROUNDING
    assert native_trajectory.timesteps == node_trajectory.timesteps == timestep_grid(STEPS)
    assert native_trajectory.branches == node_trajectory.branches == ("single",)
    assert relative(native_trajectory.h, node_trajectory.h) < ROUNDING
    assert native_x_T["hspace_origin"].timesteps == timestep_grid(STEPS)


@pytest.mark.parametrize("convention", ["seed", "diffusers"])
def test_on_a_grid_above_t_0_the_sampler_takes_the_librarys_first_step(nodes, pack, convention):
    """ComfyUI's ddim_uniform-like grid (1, 1 + k, …) does not start at t = 0: the clean input takes a first step to
    it with ε(x0, t_first), as ``processes.invert`` does, instead of standing there."""
    model, positive = tiny_sd(), conditioning()[0]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    grid = timestep_grid(STEPS, kind="uniform")
    assert min(grid) > 0
    native_x_T, native_trajectory = _inversion_sampler(nodes, model, x, _flipped(model, grid), convention=convention)
    with torch.inference_mode():
        inv = run_in_comfy(model, x, lambda m, x0: invert(m, x0, STEPS, grid="uniform", report=False,
                                                          convention=convention), positive=positive)
        sigmas, ascending = _flipped(model, grid), list(reversed(grid))
        stood = run_in_comfy(model, x, lambda m, x0: invert_sigmas(  # the clean input stood at t_first
            lambda v, k: m.denoised(v, sigmas[k], t=ascending[k - 1])[0], x0, sigmas, clean_start=True,
            convention=convention), positive=positive)
    assert relative(native_x_T["samples"], model.model.process_latent_out(inv.x_T)) < ROUNDING
    assert relative(native_trajectory.h, inv.trajectory.h) < ROUNDING and native_trajectory.timesteps == grid
    if convention == "seed":  # the first step shows, so the agreement above is about it
        assert relative(stood / (1 + float(sigmas[-1]) ** 2) ** 0.5, inv.x_T) > 1e-3


def test_the_node_keeps_the_librarys_latents_for_null_text(nodes, pack, demo_model):
    """``ddim_inversion``'s Inversion.latents are the library's (the pivot null-text optimises towards)."""
    import hspace_pack.nodes.comfy.samplers as samplers

    from hspace_demo.shapes import make_batch

    x = torch.from_numpy(make_batch(2, seed=4)[0])
    seen = []
    for convention in ("seed", "diffusers"):
        with torch.inference_mode():
            ours, theirs = run_in_comfy(demo_model, x, lambda m, x0: (
                samplers.ddim_inversion(m, x0, STEPS, convention=convention, refine_iters=1,
                            progress=lambda d, n, x0: seen.append((d, n, x0.shape))),
                invert(m, x0, STEPS, convention=convention, refine_iters=1, report=False)))
        assert ours.latents.shape == theirs.latents.shape == (STEPS + 1, 2, 3, 32, 32)
        assert relative(ours.latents, theirs.latents) < ROUNDING and ours.timesteps == theirs.timesteps
    passes = {"seed": samplers.inversion_passes(STEPS, "seed", 1), "diffusers": samplers.inversion_passes(STEPS, "diffusers", 1)}
    assert passes == {"seed": 2 * (STEPS - 1), "diffusers": 2 * STEPS}
    assert [d for d, _, _ in seen] == [*range(2, 2 * STEPS - 1, 2), *range(2, 2 * STEPS + 1, 2)]
    assert all(shape == (2, 3, 32, 32) for _, _, shape in seen)
