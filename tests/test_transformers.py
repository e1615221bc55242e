"""h in diffusion transformers (issue 38): Flux and SD3 built tiny from ComfyUI's own classes (harness/tiny_dit.py),
in-process.  Sites and their spatial view, the dit patch reading exactly the block's (or its attention's) image
tokens, the flow-matching asymmetric and inversion steps against written-out formulas, the Asyrp Sampler (strength 0
is ComfyUI's euler bit for bit; no patch leaks), inversion round trips in dB, and the refusals."""
import math

import pytest
import torch
from einops import rearrange

from harness.inprocess import run_in_comfy
from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux
from hspace_core import Direction, HTrajectory
from hspace_core.flow import invert_flow
from hspace_core.sampling import asymmetric_step
from hspace_core.sites import block_site, check_site, spatial_to_tokens, tokens_to_spatial

SIZE = 16  # latent 16×16 → an 8×8 patch grid


def _models(request):
    return {"flux": (request.getfixturevalue("flux"), flux_conditioning, 1.0),
            "sd3": (request.getfixturevalue("sd3"), sd3_conditioning, 3.0)}


def noise(seed=0):
    return torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def sample(model, sampler, sigmas, cond, cfg, x=None, latent=None):
    import comfy.sample

    latent = torch.zeros(1, 16, SIZE, SIZE) if latent is None else latent
    return comfy.sample.sample_custom(model, noise() if x is None else x, cfg, sampler, sigmas, cond(0), cond(1),
                                      latent, disable_pbar=True, seed=0)


def sigmas_of(model, steps=6):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def euler():
    import comfy.samplers

    return comfy.samplers.sampler_object("euler")


# --- sites --------------------------------------------------------------------------------------------------------

def test_site_names_and_refusals():
    assert block_site("double.9.attn").name == "double.9.attn" and block_site("double.9.attn").attention
    assert block_site("joint.12") == block_site("joint.12") and not block_site("joint.12").attention
    assert block_site("middle") is None and check_site("single.20") == "single.20"
    with pytest.raises(ValueError, match="single-stream block .* use single.3"):
        block_site("single.3.attn")
    for bad in ("double", "joint.x", "up3", 7, None):
        with pytest.raises(ValueError, match="unknown"):
            check_site(bad)


def test_spatial_view_is_flux_patch_order():
    """Flux's process_img patchifies 'b c (h ph) (w pw) -> b (h w) (c ph pw)' and SD3's PatchEmbed flattens a conv's
    rows: token (i, j) is patch (i, j), so the spatial view of (B, H/p·W/p, C) is (B, C, H/p, W/p) row-major."""
    x = torch.randn(2, 3, 4, 6)
    tokens = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    spatial = tokens_to_spatial(tokens, (2, 3))
    assert torch.equal(spatial, rearrange(x, "b c (h ph) (w pw) -> b (c ph pw) h w", ph=2, pw=2))
    assert torch.equal(spatial_to_tokens(spatial), tokens)
    with pytest.raises(ValueError, match="do not make a 2×2"):
        tokens_to_spatial(tokens, (2, 2))


# --- the dit patch reads the block's image tokens ------------------------------------------------------------------

MODULES = {  # site → (module whose forward output holds h, how to take the image tokens from it)
    "double.0": (lambda dm: dm.double_blocks[0], lambda out, txt: out[0]),
    "double.1": (lambda dm: dm.double_blocks[1], lambda out, txt: out[0]),
    "single.0": (lambda dm: dm.single_blocks[0], lambda out, txt: out[:, txt:]),
    "double.1.attn": (lambda dm: dm.double_blocks[1].img_attn.proj, lambda out, txt: out),
    "single.1": (lambda dm: dm.single_blocks[1], lambda out, txt: out[:, txt:]),
    "joint.0": (lambda dm: dm.joint_blocks[0], lambda out, txt: out[1]),
    "joint.1.attn": (lambda dm: dm.joint_blocks[1].x_block.attn.proj, lambda out, txt: out),
}


@pytest.mark.parametrize("family,site", [("flux", "double.0"), ("flux", "double.1"), ("flux", "double.1.attn"),
                                         ("flux", "single.0"), ("flux", "single.1"),
                                         ("sd3", "joint.0"), ("sd3", "joint.1.attn")])
def test_h_is_the_blocks_image_tokens(pack, request, family, site):
    """h read through the dit replace patch equals the image tokens the block (or its attention's output
    projection) produced in the same forward, seen by a plain forward hook, in the spatial view; under cfg (SD3)
    ComfyUI batches both branches in one call and h holds both rows."""
    import comfy.samplers

    comfy_model, _ = pack
    model, cond, cfg = _models(request)[family]
    dm = model.get_model_object("diffusion_model")
    module, take = MODULES[site]
    seen, found = [], {}
    copied = lambda out: tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()  # noqa: E731
    # a copy: Flux's next block adds to a block's output in place, so a kept view is not what the block produced
    hook = module(dm).register_forward_hook(lambda m, i, out: seen.append(copied(out)))

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        hs = comfy_model.ComfyHSpaceModel.for_guider(denoiser, extra_args, model, "cond", site)
        found["h"] = hs.denoised(x, sigmas[0], t=999)[2]
        found["site"] = hs.site
        return x

    try:
        sample(model, comfy.samplers.KSAMPLER(body), sigmas_of(model, 2), cond, cfg)
    finally:
        hook.remove()
    txt = 7  # the conditioning's text tokens
    expected = torch.cat([tokens_to_spatial(take(out, txt), (SIZE // 2, SIZE // 2)) for out in seen])
    assert found["site"] == site and len(seen) == 1
    assert found["h"].shape == (1 if cfg == 1 else 2, dm.hidden_size, SIZE // 2, SIZE // 2)
    assert torch.equal(found["h"], expected)


# --- flow-matching step math against written-out formulas --------------------------------------------------------

def test_flow_asymmetric_step_is_x0_from_the_edit_and_the_noise_from_the_original():
    g = torch.Generator().manual_seed(0)
    x, d, d_edit = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    for sigma, sigma_next in [(1.0, 0.8), (0.7, 0.4), (0.3, 0.0)]:
        eps = (x - (1 - sigma) * d) / sigma  # x = (1 − σ)·x0 + σ·ε with x0 = D(x | h)
        written = (1 - sigma_next) * d_edit + sigma_next * eps
        step = asymmetric_step(x, d_edit, d, sigma, sigma_next, 1 - sigma_next)  # signal a(σ_next) = 1 − σ_next
        assert torch.allclose(step, written, atol=1e-5, rtol=1e-5)
        euler_step = x + (x - d) / sigma * (sigma_next - sigma)  # k-diffusion's sample_euler, as ComfyUI runs it
        assert torch.equal(asymmetric_step(x, d, d, sigma, sigma_next, 1 - sigma_next), euler_step)


def test_flow_inversion_steps_against_written_out_formulas():
    """One step of ``invert_flow`` is x + (σ' − σ)·(x − D(x, σ))/σ; from the clean input v is taken at σ_1; with
    refinement the point reached is a fixed point of the reverse Euler step back to σ (to 1e-5)."""
    a = lambda s: 1.0 / (1.0 + 2.0 * s)  # an analytic denoiser D(x, σ) = a(σ)·x  # noqa: E731
    sigmas = [1e-4, 0.25, 0.5, 0.75]
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    calls = []

    def denoise(x, k):
        calls.append(k)
        return a(sigmas[k] if k else 0.0) * x

    out = invert_flow(denoise, x0, sigmas)
    x = x0 + 0.25 * (x0 - a(0.25) * x0) / 0.25  # the clean input: v at (x0, σ_1)
    for s, s_next in [(0.25, 0.5), (0.5, 0.75)]:
        x = x + (s_next - s) * (x - a(s) * x) / s
    assert calls == [1, 1, 2] and torch.allclose(out, x, atol=1e-5, rtol=1e-5)

    def reverse(x_next, s_next, s):  # the Euler step back
        return x_next + (s - s_next) * (x_next - a(s_next) * x_next) / s_next

    steps = []
    invert_flow(denoise, x0, sigmas, refine_iters=30, callback=lambda k, d, x_next: steps.append(x_next))
    back = [x0, *steps[:-1]]
    for k, (s, s_next) in enumerate([(0.0, 0.25), (0.25, 0.5), (0.5, 0.75)]):
        assert torch.allclose(reverse(steps[k], s_next, s), back[k], atol=1e-5, rtol=1e-5)


# --- the processes on the tiny transformers ------------------------------------------------------------------------

def direction(model, site, seed=3):
    dm = model.get_model_object("diffusion_model")
    shape = (dm.hidden_size, SIZE // 2, SIZE // 2)
    return Direction("global", torch.randn(shape, generator=torch.Generator().manual_seed(seed)), h_shape=shape,
                     site=site)


@pytest.mark.parametrize("family,site", [("flux", "double.1.attn"), ("flux", "single.0"), ("sd3", "joint.1")])
def test_asyrp_sampler_strength_zero_is_euler_and_nothing_leaks(pack, request, family, site):
    import hspace_pack.nodes.samplers as nodes

    model, cond, cfg = _models(request)[family]
    sigmas = sigmas_of(model)
    plain = sample(model, euler(), sigmas, cond, cfg)
    run = lambda s: sample(model, nodes.AsyrpSampler.execute(direction(model, site), s, "percent", 500, 0.0, 0.6, 0,  # noqa: E731
                                                              allow_other_model=True).result[0], sigmas, cond, cfg)
    assert torch.equal(run(0.0), plain)
    edited = run(1.0)
    assert torch.isfinite(edited).all() and (edited - plain).abs().mean() > 0.05 * plain.abs().mean()
    assert torch.equal(sample(model, euler(), sigmas, cond, cfg), plain)  # the MODEL was never patched


def test_asyrp_sampler_edits_only_its_window(pack, flux):
    """The edit acts only in [start, end] percent: an early window's edit is not a late one's, and both edit."""
    import hspace_pack.nodes.samplers as nodes

    sigmas = sigmas_of(flux)
    run = lambda start, end: sample(flux, nodes.AsyrpSampler.execute(  # noqa: E731
        direction(flux, "double.1"), 1.0, "percent", 500, start, end, 0, allow_other_model=True).result[0],
        sigmas, flux_conditioning, 1.0)
    plain = sample(flux, euler(), sigmas, flux_conditioning, 1.0)
    early, late = run(0.0, 0.3), run(0.5, 0.8)
    assert not torch.equal(early, late) and not torch.equal(early, plain) and not torch.equal(late, plain)


def test_h_shift_patch_on_transformers(pack, flux, sd3):
    """H-Space Shift puts the dit patch on a clone: strength 0 is the plain model bit for bit, a shift changes
    the image, and the MODEL given is unchanged."""
    import hspace_pack.nodes.samplers as nodes

    for model, site, cond, cfg in [(flux, "double.0.attn", flux_conditioning, 1.0), (sd3, "joint.0", sd3_conditioning, 3.0)]:
        sigmas = sigmas_of(model, 4)
        plain = sample(model, euler(), sigmas, cond, cfg)
        shifted = lambda s: nodes.HShiftPatch.execute(model, direction(model, site), s, 0.0, 0.6,  # noqa: E731
                                                      allow_other_model=True).result[0]
        assert torch.equal(sample(shifted(0.0), euler(), sigmas, cond, cfg), plain)
        moved = sample(shifted(1.0), euler(), sigmas, cond, cfg)
        assert (moved - plain).abs().mean() > 0.05 * plain.abs().mean()
        assert "dit" not in model.model_options["transformer_options"].get("patches_replace", {})
        assert torch.equal(sample(model, euler(), sigmas, cond, cfg), plain)


def _psnr(a, b):
    return float(10 * torch.log10((b.max() - b.min()) ** 2 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_inversion_round_trip_in_db(pack, request, family):
    """x0 → x_T with the H-Space Inversion Sampler on flipped sigmas, then euler back: PSNR (dB) of the clean
    latent, without and with one fixed-point refinement (docs/transformers.md has the figures)."""
    import comfy.samplers
    import hspace_pack.nodes.samplers as nodes

    model, cond, cfg = _models(request)[family]
    x0 = sample(model, euler(), sigmas_of(model, 10), cond, cfg)  # a clean sample of this model
    sigmas = sigmas_of(model, 11)[1:]  # below σ = 1, which a flow LATENT cannot carry (x/(1 − σ))
    psnr = {}
    for refine in (0, 1):
        sampler, record = nodes.InversionSampler.execute(refine, "middle").result  # on a transformer: its default site
        x_T = sample(model, sampler, sigmas.flip(0).clamp(min=1e-4), cond, cfg, x=torch.zeros_like(x0), latent=x0)
        back = sample(model, euler(), sigmas, cond, cfg, x=torch.zeros_like(x0), latent=x_T)  # DisableNoise
        psnr[refine] = _psnr(back, x0)
        assert record.run.site == ("double.1.attn" if family == "flux" else "joint.1.attn")
        assert record.run.last_h.shape[-1] == SIZE // 2
    # measured here: flux 40.0 → 56.3 dB, sd3 34.9 → 50.0 dB
    assert psnr[1] > psnr[0] + 6 and psnr[0] > 25, psnr
    sampler = nodes.InversionSampler.execute(0, "middle").result[0]
    with pytest.raises(ValueError, match="end at σ = 1"):
        sample(model, sampler, sigmas_of(model, 4).flip(0).clamp(min=1e-4), cond, cfg, x=torch.zeros_like(x0),
               latent=x0)


# --- refusals ------------------------------------------------------------------------------------------------------

def test_refusals_name_what_to_set(pack, flux):
    import hspace_pack.nodes.samplers as nodes

    sigmas = sigmas_of(flux, 3)
    cases = [  # (sampler, what the message must say)
        (nodes.AsyrpSampler.execute(direction(flux, "middle"), 1.0, "percent", 500, 0.0, 0.6, 0,
                                    allow_other_model=True).result[0], "set site to 'middle'"),
        (nodes.AsyrpSampler.execute(direction(flux, "joint.1"), 1.0, "percent", 500, 0.0, 0.6, 0,
                                    allow_other_model=True).result[0], "double.0 … double.1"),
        (nodes.AsyrpSampler.execute(direction(flux, "double.7"), 1.0, "percent", 500, 0.0, 0.6, 0,
                                    allow_other_model=True).result[0], "not a block of this Flux"),
    ]
    for sampler, message in cases:
        with pytest.raises(ValueError, match=message):
            sample(flux, sampler, sigmas, flux_conditioning, 1.0)
    trajectory = HTrajectory((999,), torch.zeros(1, 1, 64, 8, 8), ("single",), "", "inversion", site="double.0")
    injector = nodes.ContentInjectionSampler.execute(trajectory, 0.5, -1.0, 1, "percent", 500, 0.0, 0.6, "slerp",
                                                     False, 0).result[0]
    with pytest.raises(ValueError, match="needs h at t = \\[9999, 6666\\].*sigmas the content was captured on"):
        sample(flux, injector, sigmas, flux_conditioning, 1.0)  # a trajectory of another grid
    levels = run_in_comfy(flux, torch.zeros(1, 16, SIZE, SIZE), lambda m, x: m.levels, positive=flux_conditioning(0))
    assert levels.parameterisation == "const" and levels.sigma_max == 1.0  # the body sees the model's own σ table


def invert_images(model, sigmas, site, seeds=(0, 1)):
    """The images euler makes on a Flux from ``noise(seed)`` (6 steps, cfg 1), inverted by the Inversion Sampler on ``sigmas``
    (decreasing, below σ = 1) at ``site``: H-Space Inverted x_T's (x_T LATENT, h trajectory) of each."""
    import hspace_pack.nodes.samplers as nodes

    zeros, inverted = torch.zeros(1, 16, SIZE, SIZE), []
    for seed in seeds:
        x0 = sample(model, euler(), sigmas_of(model, 6), flux_conditioning, 1.0, x=noise(seed))
        sampler, record = nodes.InversionSampler.execute(0, site).result
        out = sample(model, sampler, sigmas.flip(0).clamp(min=1e-4), flux_conditioning, 1.0, x=zeros, latent=x0)
        inverted.append(nodes.InvertedXT.execute(model, {"samples": out}, record).result)
    return inverted


def test_direction_from_inverted_examples_and_content_injection_on_flux(pack, flux):
    """The transformer chain of the SAMPLERs: invert two images (Inversion Sampler + Inverted x_T), Δh from their
    trajectories (Direction from Examples, at the default site), the Asyrp Sampler from one image's x_T (strength 0
    is euler from that x_T bit for bit, strength 1 edits), and InjectFusion's content injection of the other's h."""
    import hspace_pack.nodes.editing as editing
    import hspace_pack.nodes.samplers as nodes

    sigmas = sigmas_of(flux, 7)[1:]
    zeros = torch.zeros(1, 16, SIZE, SIZE)
    (x_T, content), (_, other) = invert_images(flux, sigmas, "middle")
    assert content.site == "double.1.attn" and content.timesteps == tuple(sorted(content.timesteps, reverse=True))
    d = editing.DirectionFromExamples.execute(content, other, "per_timestep", "d").result[0]
    assert d.site == "double.1.attn" and d.fingerprint == content.fingerprint
    start = x_T["samples"]
    plain = sample(flux, euler(), sigmas, flux_conditioning, 1.0, x=zeros, latent=start)
    asyrp = lambda s: sample(flux, nodes.AsyrpSampler.execute(d, s, "percent", 500, 0.0, 0.6, 0).result[0],  # noqa: E731
                             sigmas, flux_conditioning, 1.0, x=zeros, latent=start)
    assert torch.equal(asyrp(0.0), plain)
    assert (asyrp(1.0) - plain).abs().mean() > 0.01 * plain.abs().mean()
    inject = lambda g: sample(flux, nodes.ContentInjectionSampler.execute(  # noqa: E731
        other, g, -1.0, 1, "percent", 500, 0.0, 0.6, "slerp", False, 0).result[0], sigmas, flux_conditioning, 1.0,
        x=zeros, latent=start)
    mixed = inject(0.5)
    assert torch.isfinite(mixed).all() and (mixed - plain).abs().mean() > 0.01 * plain.abs().mean()


# --- FluxSpace ----------------------------------------------------------------------------------------------------

def test_fluxspace_projection_against_written_out_formula():
    from hspace_core.fluxspace import fluxspace_edit, orthogonal_part

    g = torch.Generator().manual_seed(5)
    base, edit, null = (torch.randn(2, 8, 3, 3, generator=g) for _ in range(3))
    perp = orthogonal_part(edit, null)
    for b, i, j in [(0, 0, 0), (1, 2, 1)]:
        a, n = edit[b, :, i, j], null[b, :, i, j]
        assert torch.allclose(perp[b, :, i, j], a - (a @ n) / (n @ n) * n, atol=1e-5)
    assert float((perp * null).sum(1).abs().max()) < 1e-5  # orthogonal to ℓ(x, ∅) at every token
    assert torch.allclose(fluxspace_edit(base, edit, null, 0.7), base + 0.7 * perp, atol=1e-6)
    half = fluxspace_edit(base.half(), edit.half(), null.half(), 0.7)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), base + 0.7 * perp, atol=1e-2)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_fluxspace_edit_node(pack, request, family):
    """λ = λ_coarse = 0 is the plain sampler bit for bit; λ > 0 changes the image; an edit prompt equal to the empty
    one has nothing orthogonal to add (ℓ⊥ = 0): the image is the plain one to float32 round-off; the MODEL given is
    never patched; a U-Net is refused."""
    import hspace_pack.nodes.fluxspace as fluxspace

    model, cond, cfg = _models(request)[family]
    sigmas = sigmas_of(model, 4)
    plain = sample(model, euler(), sigmas, cond, cfg)
    edit, empty = cond(5), cond(6)
    patched = lambda lam, coarse=0.0, e=edit, blocks="all": fluxspace.FluxSpaceEdit.execute(  # noqa: E731
        model, e, empty, lam, coarse, 0.0, 0.6, blocks).result[0]
    assert torch.equal(sample(patched(0.0), euler(), sigmas, cond, cfg), plain)
    for lam, coarse, blocks in [(1.0, 0.0, "all"), (1.0, 0.0, "middle"), (0.0, 2.0, "all")]:
        moved = sample(patched(lam, coarse, blocks=blocks), euler(), sigmas, cond, cfg)
        assert torch.isfinite(moved).all() and (moved - plain).abs().mean() > 0.01 * plain.abs().mean(), (lam, coarse)
    same = sample(patched(3.0, e=empty), euler(), sigmas, cond, cfg)
    assert torch.allclose(same, plain, atol=1e-4, rtol=1e-4)
    assert torch.equal(sample(model, euler(), sigmas, cond, cfg), plain)


def test_fluxspace_refuses_a_unet(pack):
    import hspace_pack.nodes.fluxspace as fluxspace
    from test_comfy_one_call import conditioning, tiny_sd

    positive, negative = conditioning()
    with pytest.raises(ValueError, match="not one of Flux.1 .* connect a Flux or SD3.x MODEL"):
        fluxspace.FluxSpaceEdit.execute(tiny_sd(), positive, negative, 1.0, 0.0, 0.0, 0.6)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_fluxspace_base_prompt(pack, request, family):
    """An optional base prompt takes the empty prompt's place in the projection: λ = 0 is still the plain sampler bit
    for bit; a base equal to the empty prompt is the empty-prompt edit bit for bit; another base changes the edit;
    an edit prompt equal to the base adds nothing (the plain image to float32 round-off); with neither empty nor
    base connected the node says to connect one."""
    import hspace_pack.nodes.fluxspace as fluxspace

    model, cond, cfg = _models(request)[family]
    sigmas = sigmas_of(model, 4)
    plain = sample(model, euler(), sigmas, cond, cfg)
    edit, empty, base = cond(5), cond(6), cond(7)
    run = lambda lam, coarse=0.0, e=edit, empty=empty, base=None: sample(  # noqa: E731
        fluxspace.FluxSpaceEdit.execute(model, e, empty, lam, coarse, 0.0, 0.6, "all", base=base).result[0],
        euler(), sigmas, cond, cfg)
    assert torch.equal(run(0.0, base=base), plain)
    with_empty = run(1.0, 0.5)
    assert torch.equal(run(1.0, 0.5, empty=None, base=empty), with_empty)
    with_base = run(1.0, 0.5, empty=None, base=base)
    assert (with_base - plain).abs().mean() > 0.01 * plain.abs().mean()
    assert (with_base - with_empty).abs().mean() > 0.01 * plain.abs().mean()
    assert torch.allclose(run(3.0, e=base, base=base), plain, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Connect empty .* or base"):
        fluxspace.FluxSpaceEdit.execute(model, edit, None, 1.0, 0.0, 0.0, 0.6)
    assert torch.equal(sample(model, euler(), sigmas, cond, cfg), plain)


def test_bfloat16_lane_on_flux(pack, flux):
    """Flux's native dtype: the tiny Flux in bfloat16 (same seed as the float32 one). The Asyrp Sampler at strength 0
    is euler bit for bit, an edit at the attention site lands near the float32 edit (its change
    against euler agrees in direction), and FluxSpace's λ = 0 is the plain sampler."""
    import hspace_pack.nodes.fluxspace as fluxspace
    import hspace_pack.nodes.samplers as nodes

    bf16 = tiny_flux(dtype=torch.bfloat16)
    assert bf16.get_model_object("diffusion_model").double_blocks[0].img_attn.proj.weight.dtype == torch.bfloat16
    sigmas = sigmas_of(bf16)
    d = direction(bf16, "double.1.attn")
    changes = {}
    for name, model in (("bf16", bf16), ("fp32", flux)):
        plain = sample(model, euler(), sigmas, flux_conditioning, 1.0)
        run = lambda s: sample(model, nodes.AsyrpSampler.execute(d, s, "percent", 500, 0.0, 0.6, 0,  # noqa: E731
                                                                  allow_other_model=True).result[0],
                               sigmas, flux_conditioning, 1.0)
        assert torch.equal(run(0.0), plain)
        changes[name] = (run(1.0) - plain).flatten()
        lam0 = fluxspace.FluxSpaceEdit.execute(model, flux_conditioning(5), flux_conditioning(6), 0.0, 0.0, 0.0,
                                               0.6).result[0]
        assert torch.equal(sample(lam0, euler(), sigmas, flux_conditioning, 1.0), plain)
    cosine = torch.nn.functional.cosine_similarity(changes["bf16"], changes["fp32"], dim=0)
    assert torch.isfinite(changes["bf16"]).all() and cosine > 0.7, float(cosine)  # measured here: 0.87


def test_other_transformers_are_refused_by_name(pack):
    """A transformer the pack has not tested (here Flux.2's globally modulated variant of ComfyUI's Flux class) is
    refused naming it and what works."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams
    from harness.tiny_dit import FLUX_DIT, _patcher

    import hspace_pack.nodes.comfy.checks as checks

    extra = {"txt_ids_dims": []} if "txt_ids_dims" in {f.name for f in dataclasses.fields(FluxParams)} else {}
    flux2 = _patcher("Flux", {**FLUX_DIT, **extra, "global_modulation": True}, 0)
    with pytest.raises(ValueError, match=r"Flux \(Flux.2: global modulation\)\) has no U-Net middle block .* Use SD1.x"
                                         r".*or Flux.1 \(dev, schnell\), Chroma and SD3"):
        checks.check_has_h_space(flux2)
