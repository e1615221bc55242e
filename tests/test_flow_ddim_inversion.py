"""H-Space DDIM Inversion and H-Space Interpolate on flow transformers (issue 38): the tiny Flux and SD3 of
``harness.tiny_dit``, in-process.  The node inverts on the flipped sigmas of its DDIM grid on the model's own σ table,
which end at σ = 1 (x_T is the noise there); its x_T is the SAMPLER chain's (Inversion Sampler + Inverted x_T, which
stops below σ = 1) plus the written-out last Euler inversion step; its reconstruction is ComfyUI's ``euler`` from x_T;
round trips in dB with and without refinement (docs/transformers.md); SD3 under real CFG ('plain',
'negative_prompt'; 'null_text' refused by name); Interpolate's end frames are the ends' reconstructions."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning

from test_comfy_one_call import relative

SIZE, STEPS = 16, 8
# float32 round-off between the node and ComfyUI's own path (a LATENT's x/(1 − σ)·(1 − σ), the latent format's
# scale and shift, one-call [x; x] rows): measured ≤ 3.3e-7 relative here
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def nodes(pack):
    import hspace_pack.nodes as nodes

    return nodes


def _models(request):
    return {"flux": (request.getfixturevalue("flux"), flux_conditioning, 1.0),
            "sd3": (request.getfixturevalue("sd3"), sd3_conditioning, 3.0)}


def _sample(model, sampler, sigmas, cond, cfg, *, noise=None, latent=None, negative=None):
    import comfy.sample

    shape = (1, 16, SIZE, SIZE)
    noise = torch.zeros(shape) if noise is None else noise
    latent = torch.zeros(shape) if latent is None else latent
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, cond(0),
                                          cond(1) if negative is None else negative, latent, disable_pbar=True, seed=0)


def _euler():
    import comfy.samplers

    return comfy.samplers.sampler_object("euler")


def _image(model, cond, cfg, seed=0):
    """A clean latent of this model (LATENT space): euler from seeded noise."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 10)
    noise = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return _sample(model, _euler(), sigmas, cond, cfg, noise=noise)


def _invert(nodes, model, latent, cond, cfg, *, method="plain", refine_iters=0, h_source="inversion",
            convention="seed", steps=STEPS, latent_nudging=1.0):
    with torch.inference_mode():
        return nodes.inversion.DDIMInversion.execute(model, steps, cfg, "cond", refine_iters, method, convention,
                                                     h_source, latent={"samples": latent}, positive=cond(0),
                                                     negative=cond(1), latent_nudging=latent_nudging).result


def _psnr(model, reconstruction, x0, scale=1.0):
    """PSNR (dB) of a reconstruction LATENT against scale·x0 in model space, over the clean latent's range: the
    definition of the Inversion Sampler's figures (tests/test_transformers.py), not the node's output (range 2)."""
    with torch.inference_mode():
        back, clean = (model.model.process_latent_in(v) for v in (reconstruction["samples"], x0))
    reference = scale * clean
    return float(10 * torch.log10((reference.max() - reference.min()) ** 2 / ((back - reference) ** 2).mean()))


def _grid_sigmas(model, steps=STEPS):
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    return noise_levels(model).grid_sigmas(steps).float()


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_the_nodes_x_T_is_the_sampler_chains_and_its_reconstruction_is_euler(nodes, request, family):
    """On the node's grid: the SAMPLER chain (Inversion Sampler on the flipped sigmas below σ = 1, Inverted x_T),
    then the last Euler inversion step written out, x_T = x + (1 − σ)·(x − D(x, σ))/σ, gives the node's x_T; the
    trajectories are equal at every timestep the chain evaluates; the node's reconstruction is ComfyUI's euler from x_T at σ = 1."""
    import comfy.samplers

    model, cond, _ = _models(request)[family]
    x0 = _image(model, cond, 1.0)
    x_T, trajectory, reconstruction, _ = _invert(nodes, model, x0, cond, 1.0)
    sigmas = _grid_sigmas(model)
    assert float(sigmas[0]) == 1.0  # the flow grid starts at σ = 1
    flipped = sigmas.flip(0)[:-1]  # 0, σ_0 … σ_{t_1}: the chain stops below σ = 1
    sampler, record = nodes.samplers.InversionSampler.execute(0, "middle").result
    chain = _sample(model, sampler, flipped, cond, 1.0, latent=x0)
    with torch.inference_mode():
        chain_x_T, chain_trajectory = nodes.samplers.InvertedXT.execute(model, {"samples": chain}, record).result

    def last_step(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):  # the step written out
        sigma = sigmas[0]
        d = denoiser(x, sigma * x.new_ones(x.shape[0]), **(extra_args or {}))
        return x + (1 - sigma) * (x - d) / sigma

    sigma_last = flipped[-1:]
    probe = comfy.samplers.KSAMPLER(last_step)
    written = _sample(model, probe, torch.cat([sigma_last, sigma_last.new_zeros(1)]), cond, 1.0,
                      latent=chain_x_T["samples"])
    assert relative(written, x_T["samples"]) < ROUNDING
    below = trajectory.timesteps[1:]
    assert chain_trajectory.timesteps == below and trajectory.site == chain_trajectory.site
    # h at the chain's top timestep is its last evaluation's (the seed convention never evaluates at its end)
    assert torch.equal(chain_trajectory.h[1:], trajectory.h[2:])  # one code path: bit for bit
    with torch.inference_mode():
        start = model.model.process_latent_in(x_T["samples"])  # x_T is the noise: ComfyUI's start σ·n at σ = 1
    euler = _sample(model, _euler(), sigmas, cond, 1.0, noise=start)
    assert relative(euler, reconstruction["samples"]) < ROUNDING


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_round_trip_in_db_with_and_without_refinement(nodes, request, family):
    """x0 → x_T (σ = 1) → x0 on the node's 8-step grid: the node's PSNR (latent space) rises with one fixed-point
    refinement; h_source 'reconstruction' reads h along the reconstruction (same grid, other h), same x_T."""
    model, cond, _ = _models(request)[family]
    x0 = _image(model, cond, 1.0)
    psnr, node_psnr = {}, {}
    for refine in (0, 1):
        x_T, along_inversion, reconstruction, node_psnr[refine] = _invert(nodes, model, x0, cond, 1.0,
                                                                          refine_iters=refine)
        psnr[refine] = _psnr(model, reconstruction, x0)
        x_T_r, along_reconstruction, _, psnr_r = _invert(nodes, model, x0, cond, 1.0, refine_iters=refine,
                                                        h_source="reconstruction")
        assert torch.equal(x_T["samples"], x_T_r["samples"]) and psnr_r == node_psnr[refine]
        assert along_reconstruction.timesteps == along_inversion.timesteps
        assert along_reconstruction.source == "reconstruction" and along_inversion.source == "inversion"
        assert not torch.equal(along_reconstruction.h, along_inversion.h)
        assert relative(reconstruction["samples"], x0) < 0.5
    print(f"{family}: {psnr[0]:.1f} dB plain, {psnr[1]:.1f} dB with 1 refinement")
    # measured here: flux 33.6 → 44.7 dB, sd3 32.4 → 44.6 dB (docs/transformers.md); the node's own output (range 2)
    # read 19.4 → 30.5 and 18.3 → 30.5
    assert psnr[1] > psnr[0] + 6 and psnr[0] > 25, psnr
    assert node_psnr[1] > node_psnr[0] + 6, node_psnr


def test_sd3_under_real_cfg(nodes, sd3):
    """SD3 at cfg 3: 'plain' inverts with the guided prediction; 'negative_prompt' inverts at cfg 1 and its
    reconstruction is euler at cfg 3 with the positive as the negative (and beats 'plain'); 'null_text' and the
    diffusers convention are refused by name."""
    x0 = _image(sd3, sd3_conditioning, 3.0)
    plain_recon = _invert(nodes, sd3, x0, sd3_conditioning, 3.0, method="plain", refine_iters=1)[2]
    x_T, _, recon, _ = _invert(nodes, sd3, x0, sd3_conditioning, 3.0, method="negative_prompt", refine_iters=1)
    plain, negative_prompt = _psnr(sd3, plain_recon, x0), _psnr(sd3, recon, x0)
    print(f"sd3 at cfg 3: {plain:.1f} dB plain, {negative_prompt:.1f} dB negative-prompt")
    assert x_T["hspace_origin"].guidance == "negative_prompt"
    with torch.inference_mode():
        start = sd3.model.process_latent_in(x_T["samples"])
    euler = _sample(sd3, _euler(), _grid_sigmas(sd3), sd3_conditioning, 3.0, noise=start, negative=sd3_conditioning(0))
    assert relative(euler, recon["samples"]) < ROUNDING
    assert negative_prompt > plain + 3, (plain, negative_prompt)  # measured: 41.8 / 53.9 dB
    with pytest.raises(ValueError, match="'null_text'.*flow matching.*'negative_prompt'"):
        _invert(nodes, sd3, x0, sd3_conditioning, 3.0, method="null_text")
    with pytest.raises(ValueError, match="H-Space DDIM Inversion: convention 'diffusers'.*set convention to 'seed'"):
        _invert(nodes, sd3, x0, sd3_conditioning, 1.0, convention="diffusers")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_interpolate_on_a_transformer(nodes, request, family):
    """Two images inverted by the node, Interpolate over a percent window at the default site (SD3 at cfg 3 from
    negative-prompt inversions): frames 0 and 2 are each end's reconstruction, the middle frame is neither."""
    model, cond, cfg = _models(request)[family]
    method = "plain" if cfg == 1 else "negative_prompt"
    ends = [_invert(nodes, model, _image(model, cond, cfg, seed), cond, cfg, method=method, refine_iters=1)
            for seed in (0, 1)]
    with torch.inference_mode():
        frames = nodes.injection.Interpolate.execute(model, ends[0][0], ends[1][0], 3, STEPS, 200, cfg, "cond",
                                                     positive=cond(0), negative=cond(1), window="percent",
                                                     start_percent=0.0, end_percent=0.6).result[0]["samples"]
    a, b = ends[0][2]["samples"], ends[1][2]["samples"]
    assert relative(frames[:1], a) < ROUNDING and relative(frames[2:], b) < ROUNDING  # measured ≤ 3.3e-7
    assert relative(frames[1:2], a) > 0.1 and relative(frames[1:2], b) > 0.1  # measured 0.6–0.8


def test_latent_nudging_on_the_node(nodes, flux):
    """The Inversion Sampler's latent nudging as the node's advanced widget (one home: ``inversion_sampler``): with
    λ = 1.15 the reconstruction lands on λ·x0 (model space), closer to it than to x0, as in Stable Flow; λ = 1 is
    the node without it."""
    x0 = _image(flux, flux_conditioning, 1.0)
    plain = _invert(nodes, flux, x0, flux_conditioning, 1.0, refine_iters=1)
    assert torch.equal(plain[0]["samples"], _invert(nodes, flux, x0, flux_conditioning, 1.0, refine_iters=1,
                                                    latent_nudging=1.0)[0]["samples"])
    x_T, _, reconstruction, psnr = _invert(nodes, flux, x0, flux_conditioning, 1.0, refine_iters=1, latent_nudging=1.15)
    assert not torch.equal(x_T["samples"], plain[0]["samples"])
    # measured here: 48.3 dB against λ·x0, 33.3 against x0 (without nudging: 44.7 against x0)
    assert _psnr(flux, reconstruction, x0, 1.15) > _psnr(flux, reconstruction, x0) + 10
    assert _psnr(flux, reconstruction, x0, 1.15) > _psnr(flux, plain[2], x0)
    assert psnr < plain[3]  # the node's PSNR is against the input, which nudging does not land on


def test_bfloat16_flux(nodes, flux):
    """Flux's native dtype: the tiny Flux in bfloat16 inverts through σ = 1 (finite x_T, refinement helps) and
    Interpolate's end frames are the ends' reconstructions up to bfloat16's rounding (the edited frames run the
    one-call [x; x] rows, whose bfloat16 kernels round otherwise than the plain run's) while the middle frame is
    neither."""
    from harness.tiny_dit import tiny_flux

    bf16 = tiny_flux(dtype=torch.bfloat16)
    x0s = [_image(flux, flux_conditioning, 1.0, seed) for seed in (0, 1)]  # the float32 model's clean latents
    psnr = {r: _psnr(bf16, _invert(nodes, bf16, x0s[0], flux_conditioning, 1.0, refine_iters=r)[2], x0s[0])
            for r in (0, 1)}
    print(f"bfloat16 flux: {psnr[0]:.1f} dB plain, {psnr[1]:.1f} dB with 1 refinement")
    assert psnr[1] > psnr[0] and psnr[0] > 15, psnr  # measured here: 33.1 → 44.5 dB (float32: 33.6 → 44.7)
    ends = [_invert(nodes, bf16, x0, flux_conditioning, 1.0, refine_iters=1) for x0 in x0s]
    assert all(torch.isfinite(end[0]["samples"]).all() for end in ends)
    with torch.inference_mode():
        frames = nodes.injection.Interpolate.execute(bf16, ends[0][0], ends[1][0], 3, STEPS, 200, 1.0, "cond",
                                                     positive=flux_conditioning(0), window="percent",
                                                     start_percent=0.0, end_percent=0.6).result[0]["samples"]
    a, b = ends[0][2]["samples"], ends[1][2]["samples"]
    assert relative(frames[:1], a) < 1e-2 and relative(frames[2:], b) < 1e-2  # measured 2.7e-3, 3.0e-3
    assert relative(frames[1:2], a) > 0.1 and relative(frames[1:2], b) > 0.1


def test_the_process_nodes_take_its_x_T_and_trajectory(nodes, flux):
    """What the node makes feeds the process nodes on Flux: Direction from Examples from two inversions'
    trajectories, H-Space Asyrp Edit from one x_T (strength 0 is the node's reconstruction, 20 edits) and Slerp
    Content Inject of the other's h (γ 1 changes it); x_T's grid passes their check on the model's own table."""
    ends = [_invert(nodes, flux, _image(flux, flux_conditioning, 1.0, seed), flux_conditioning, 1.0, refine_iters=1)
            for seed in (0, 1)]
    (x_T, content, reconstruction, _), (_, other, _, _) = ends
    window = dict(window="percent", start_percent=0.0, end_percent=0.6)
    with torch.inference_mode():
        d = nodes.editing.DirectionFromExamples.execute(content, other, "per_timestep", "d").result[0]
        zero, twenty = nodes.editing.AsyrpEdit.execute(flux, x_T, d, 0.0, STEPS, 400, 0, 1.0, "cond",
                                                       strength_sweep="0, 20", positive=flux_conditioning(0),
                                                       **window).result[0]["samples"]
        mixed = nodes.injection.SlerpContentInject.execute(flux, x_T, other, 1.0, -1.0, 1, STEPS, 400, "slerp", False,
                                                           0, 1.0, "cond", positive=flux_conditioning(0),
                                                           **window).result[0]["samples"]
    assert relative(zero[None], reconstruction["samples"]) < ROUNDING  # measured 1.9e-7
    assert relative(twenty[None], reconstruction["samples"]) > 0.01  # measured 0.41
    assert relative(mixed, reconstruction["samples"]) > 0.01  # measured 0.032
    with pytest.raises(ValueError, match="inverted at 8 steps \\(t = 9999 … 0\\).*set steps to 8"):  # another grid
        nodes.editing.AsyrpEdit.execute(flux, x_T, d, 0.0, STEPS + 1, 400, 0, 1.0, "cond",
                                        positive=flux_conditioning(0), **window)


@pytest.mark.parametrize("refine_iters, h_source", [(0, "inversion"), (1, "reconstruction")])
def test_the_progress_bar_ends_at_its_total(nodes, flux, monkeypatch, refine_iters, h_source):
    """A flow inversion steps from the clean input (one step more than the U-Nets' seed convention): the node's bar
    counts it, so every step moves it forward and it ends exactly at its total."""
    import hspace_pack.nodes.inversion as inversion

    seen, bar = [], inversion.progress_bar
    monkeypatch.setattr(inversion, "progress_bar", lambda total, model=None: (
        lambda done, total_now, x0=None: seen.append((done, total_now, total))))
    _invert(nodes, flux, _image(flux, flux_conditioning, 1.0), flux_conditioning, 1.0, refine_iters=refine_iters,
            h_source=h_source)
    done = [d for d, _, _ in seen]
    assert bar is not inversion.progress_bar and all(total_now == total for _, total_now, total in seen), seen
    # before the flow step was counted: 1 … 8, 8 … 15 of 15 (refined: … 16, 15 … of 22)
    assert done == sorted(set(done)) and done[-1] == seen[-1][1], seen
