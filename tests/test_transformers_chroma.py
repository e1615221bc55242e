"""Chroma (Flux's double and single blocks, each modulated by Chroma's approximator instead of a pooled vector) as a
transformer family (issue 38 item 1), on a tiny Chroma built from ComfyUI's own classes (harness/tiny_dit.py),
in-process, under real CFG (Chroma is sampled with a negative prompt): h read at block and attention outputs, the
one-call edited step against the two-call path (its modulation tuples split by rows), the Asyrp Sampler (strength 0
is ComfyUI's euler bit for bit), inversion round trips in dB, content injection, FluxSpace (fine edit; the coarse
one refused), StyleID, Block Vitality, the Jacobian through the in-place adds, a bfloat16 lane, and the transformers
still refused by name."""
import json

import pytest
import torch

from harness.tiny_dit import chroma_conditioning, tiny_chroma
from test_comfy_one_call import relative
from test_transformer_one_call import predictions
from test_transformers import MODULES, SIZE, _psnr, direction, euler, noise, sample, sigmas_of
from hspace_core.sites import tokens_to_spatial

CFG = 3.0
cond = chroma_conditioning


@pytest.fixture(scope="module")
def chroma(pack):
    return tiny_chroma()


def test_chroma_is_a_family_with_flux_block_sites(pack, chroma):
    import hspace_pack.nodes.comfy.checks as checks
    import hspace_pack.nodes.comfy.dit as dit

    dm = chroma.get_model_object("diffusion_model")
    assert dit.dit_family(dm) == "chroma" and dit.adds_in_place(dm)
    assert dit.block_counts(dm) == {"double": 2, "single": 2} and dit.default_site(dm) == "double.1.attn"
    assert checks.resolve_site(chroma, "middle") == "double.1.attn"
    checks.check_has_h_space(chroma)  # flow matching (model type FLUX): accepted
    with pytest.raises(ValueError, match="not a block of this Chroma: its sites are double.0 … double.1, "
                                         "single.0 .* 'joint.0' is a site of SD3"):
        dit.check_block_site(dm, "joint.0")


@pytest.mark.parametrize("site", ["double.0", "double.1.attn", "single.1"])
def test_h_is_the_blocks_image_tokens(pack, chroma, site):
    """h through the dit patch equals the image tokens the block (or its attention's output projection) produced
    in the same forward (a forward hook), both CFG rows of ComfyUI's batched call."""
    import comfy.samplers

    comfy_model, _ = pack
    dm = chroma.get_model_object("diffusion_model")
    module, take = MODULES[site]
    seen, found = [], {}
    hook = module(dm).register_forward_hook(
        lambda m, i, out: seen.append(tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()))

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        found["h"] = comfy_model.ComfyHSpaceModel.for_guider(denoiser, extra_args, chroma, "cond", site).denoised(
            x, sigmas[0], t=999)[2]
        return x

    try:
        sample(chroma, comfy.samplers.KSAMPLER(body), sigmas_of(chroma, 2), cond, CFG)
    finally:
        hook.remove()
    expected = torch.cat([tokens_to_spatial(take(out, 7), (SIZE // 2, SIZE // 2)) for out in seen])
    assert len(seen) == 1 and found["h"].shape == (2, dm.hidden_size, SIZE // 2, SIZE // 2)
    assert torch.equal(found["h"], expected)


@pytest.mark.parametrize("site,block_rows", [("double.1.attn", [2, 4, 3, 3]), ("single.0", [2, 2, 2, 3])])
def test_one_call_matches_two_calls(pack, chroma, site, block_rows):
    """The edited step as one call on [x; x]: the blocks that run only some rows take Chroma's per-block modulations
    (tuples of ModulationOut) at those rows, and the predictions equal the two-call path to float rounding."""
    comfy_model, _ = pack
    seen = []
    for (plain, edited, h), (plain2, edited2, h2), unedited, fast_calls, slow_calls in predictions(
            comfy_model, chroma, cond, CFG, site, "cond", 1, seen):
        assert (fast_calls, slow_calls) == (1, 2)
        assert relative(plain, plain2) < 1e-5 and relative(edited, edited2) < 1e-5
        assert relative(plain, unedited) < 1e-5 and relative(h, h2) < 1e-5
        assert relative(edited, plain) > 1e-3, "the edit shows"
    assert seen == list(enumerate(block_rows)) * 2, seen


@pytest.mark.parametrize("site", ["double.1.attn", "single.0"])
def test_asyrp_sampler_strength_zero_is_euler_and_nothing_leaks(pack, chroma, site):
    import hspace_pack.nodes.samplers as nodes

    sigmas = sigmas_of(chroma)
    plain = sample(chroma, euler(), sigmas, cond, CFG)
    run = lambda s: sample(chroma, nodes.AsyrpSampler.execute(  # noqa: E731
        direction(chroma, site), s, "percent", 500, 0.0, 0.6, 0, allow_other_model=True).result[0], sigmas, cond, CFG)
    assert torch.equal(run(0.0), plain)
    edited = run(1.0)
    assert torch.isfinite(edited).all() and (edited - plain).abs().mean() > 0.05 * plain.abs().mean()
    assert torch.equal(sample(chroma, euler(), sigmas, cond, CFG), plain)  # the MODEL was never patched


def test_inversion_round_trip_in_db_and_content_injection(pack, chroma):
    """x0 → x_T with the Inversion Sampler on flipped sigmas, euler back: PSNR of the clean latent without and with
    one fixed-point refinement (docs/transformers.md has the figures); then InjectFusion's Slerp of another image's
    h trajectory from the first image's x_T: 0 is euler from x_T bit for bit, 0.5 changes the image."""
    import hspace_pack.nodes.samplers as nodes

    sigmas = sigmas_of(chroma, 11)[1:]  # below σ = 1, which a flow LATENT cannot carry
    zeros = torch.zeros(1, 16, SIZE, SIZE)
    x0s = [sample(chroma, euler(), sigmas_of(chroma, 10), cond, CFG, x=noise(seed)) for seed in (0, 1)]
    psnr, inverted = {}, []
    for refine, x0 in ((0, x0s[0]), (1, x0s[0]), (0, x0s[1])):
        sampler, record = nodes.InversionSampler.execute(refine, "middle").result
        x_T = sample(chroma, sampler, sigmas.flip(0).clamp(min=1e-4), cond, CFG, x=zeros, latent=x0)
        inverted.append(nodes.InvertedXT.execute(chroma, {"samples": x_T}, record).result)
        psnr.setdefault(refine, _psnr(sample(chroma, euler(), sigmas, cond, CFG, x=zeros, latent=x_T), x0))
        assert record.run.site == "double.1.attn"
    # measured here (ComfyUI 0.3.75 and 0.33.0 alike): 38.4 → 55.1 dB
    assert psnr[1] > psnr[0] + 6 and psnr[0] > 25, psnr
    start, other = inverted[0][0]["samples"], inverted[2][1]
    plain = sample(chroma, euler(), sigmas, cond, CFG, x=zeros, latent=start)
    inject = lambda g: sample(chroma, nodes.ContentInjectionSampler.execute(  # noqa: E731
        other, g, -1.0, 1, "percent", 500, 0.0, 0.6, "slerp", False, 0).result[0], sigmas, cond, CFG, x=zeros,
        latent=start)
    assert torch.equal(inject(0.0), plain)
    mixed = inject(0.5)
    assert torch.isfinite(mixed).all() and (mixed - plain).abs().mean() > 0.01 * plain.abs().mean()


def test_fluxspace_fine_edit_and_the_coarse_edit_refused(pack, chroma):
    """λ = 0 is the plain sampler bit for bit, λ > 0 changes the image, an edit prompt equal to the empty one adds
    nothing; λ_coarse (the pooled embedding Chroma lacks) is refused naming the widget."""
    import hspace_pack.nodes.fluxspace as fluxspace

    sigmas = sigmas_of(chroma, 4)
    plain = sample(chroma, euler(), sigmas, cond, CFG)
    patched = lambda lam, e=cond(5), coarse=0.0: fluxspace.FluxSpaceEdit.execute(  # noqa: E731
        chroma, e, cond(6), lam, coarse, 0.0, 0.6, "all").result[0]
    assert torch.equal(sample(patched(0.0), euler(), sigmas, cond, CFG), plain)
    moved = sample(patched(1.0), euler(), sigmas, cond, CFG)
    assert torch.isfinite(moved).all() and (moved - plain).abs().mean() > 0.01 * plain.abs().mean()
    assert torch.allclose(sample(patched(3.0, e=cond(6)), euler(), sigmas, cond, CFG), plain, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="lam_coarse moves the pooled text embedding, and Chroma has none.*set "
                                         "lam_coarse to 0"):
        patched(1.0, coarse=0.5)
    assert torch.equal(sample(chroma, euler(), sigmas, cond, CFG), plain)


def test_styleid_on_chroma(pack, chroma):
    """StyleID's K/V injection at every block (Chroma's default: no paper names its vital layers): the image's own
    features give euler from its x_T bit for bit; another image's K/V change the generation."""
    from harness.inprocess import node_module
    from hspace_core.flow_styleid import flow_styleid, record_flow_features
    from hspace_core.styleid import StyleIDSettings

    from test_styleid_transformers import euler_from, latent

    da = node_module("nodes.comfy.dit_attention")
    dm = chroma.get_model_object("diffusion_model")
    layers = da.transformer_layers(dm, da.DEFAULT_UNET_PRESET, "", "N")
    assert layers == ("double.0", "double.1", "single.0", "single.1")
    sigmas, timesteps = da.flow_grid(chroma, 5)

    def body(denoise, sigmas, timesteps):
        window = (max(timesteps), 0)
        x_T, _, feats, _ = record_flow_features(denoise, latent(0), sigmas, timesteps, layers, ("q", "k", "v"),
                                             window=window, source="reconstruction")
        settings = StyleIDSettings(layers, 0.5, 1.0, window, "content")
        own = flow_styleid(denoise, x_T, x_T, feats, settings, sigmas, timesteps, content_q=feats)
        s_T, _, s_kv, _ = record_flow_features(denoise, 3 * latent(1), sigmas, timesteps, layers, ("k", "v"),
                                            window=window)
        styled = flow_styleid(denoise, x_T, s_T, s_kv, settings, sigmas, timesteps, content_q=feats)
        return x_T, own, styled

    x_T, own, styled = da.run_on_transformer(
        chroma, torch.zeros(1, 16, SIZE, SIZE),
        lambda d, x: body(da.sigma_denoise(d, sigmas, timesteps), sigmas, timesteps), positive=cond(0), sigmas=sigmas,
        layers=layers)
    before = euler_from(chroma, cond, x_T, sigmas)
    assert torch.equal(chroma.model.process_latent_out(own), before)
    assert (styled - own).std() > 0.05 * own.std()


def test_block_vitality_on_chroma(pack, chroma):
    """Every one of the tiny Chroma's blocks, bypassed, changes the generation; the MODEL is left alone."""
    import hspace_pack.nodes.vitality as vitality

    sigmas = sigmas_of(chroma, 3)
    before = sample(chroma, euler(), sigmas, cond, CFG)
    _, text, vital = vitality.BlockVitality.execute(chroma, cond(0), {"samples": torch.zeros(1, 16, SIZE, SIZE)},
                                                    sigmas, 7, negative=cond(1), cfg=CFG, vital_count=1).result
    report = json.loads(text)
    assert [b["site"] for b in report["blocks"]] == ["double.0", "double.1", "single.0", "single.1"]
    assert all(b["change"] > 1e-3 for b in report["blocks"]), report
    assert torch.equal(sample(chroma, euler(), sigmas, cond, CFG), before)


def test_chroma_radiance_and_qwen_image_are_refused_by_name(pack):
    """The dit-patch transformers the pack has not tested, built tiny from ComfyUI's classes, are refused naming
    the class and what works."""
    import dataclasses

    from comfy.ldm.chroma_radiance.model import ChromaRadianceParams
    from harness.tiny_dit import _patcher

    import hspace_pack.nodes.comfy.checks as checks

    nerf = dict(image_model="chroma_radiance", in_channels=3, out_channels=3, patch_size=16, nerf_hidden_size=16,
                nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4, nerf_tile_size=0, nerf_final_head_type="linear",
                nerf_embedder_dtype=None, use_x0=False, use_sequential_txt_ids=False)  # the last two: 0.33.0's
    fields = {f.name for f in dataclasses.fields(ChromaRadianceParams)}
    radiance = tiny_chroma(family="ChromaRadiance",
                           **{k: v for k, v in nerf.items() if k in fields or k == "image_model"})
    qwen = _patcher("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                      num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                      joint_attention_dim=32, axes_dims_rope=(8, 12, 12)), 0)
    for model, name in ((radiance, "ChromaRadiance"), (qwen, "QwenImageTransformer2DModel")):
        with pytest.raises(ValueError, match=rf"\({name}\) has no U-Net middle block .* or Flux.1 \(dev, schnell\), "
                                             r"Chroma and SD3"):
            checks.check_has_h_space(model)


@pytest.mark.parametrize("site", ["double.0", "single.0"])
def test_jacobian_through_chromas_in_place_adds(pack, chroma, site):
    """H-Space Jacobian Directions at a block output: gradients run through every later block's in-place residual adds
    (Flux's blocks: ``dit.adds_in_place``), under CFG; finite directions carrying the site."""
    from test_transformer_directions import _jacobian

    with torch.inference_mode():
        directions = _jacobian(chroma, cond, CFG, site=site, k=1, iterations=2, output="eps")[0]
    assert directions[0].site == site and torch.isfinite(directions[0].delta).all()
    assert directions[0].metadata["singular_value"] > 0


def test_implicit_f_t_is_refused_by_name(pack, chroma):
    """Asyrp's implicit f_t joins h to the network's time embedding, which Chroma folds into its approximator."""
    comfy_model, _ = pack
    with pytest.raises(ValueError, match="Chroma has no timestep embedding .* Use the global or per_timestep form"):
        comfy_model.time_embedding_of(chroma)


def test_bfloat16_lane(pack):
    """Chroma's native dtype: the tiny Chroma in bfloat16 under CFG; the Asyrp Sampler at strength 0 is euler bit for
    bit and an edit at the attention site changes the image, finite."""
    import hspace_pack.nodes.samplers as nodes

    bf16 = tiny_chroma(dtype=torch.bfloat16)
    assert bf16.get_model_object("diffusion_model").double_blocks[0].img_attn.proj.weight.dtype == torch.bfloat16
    sigmas = sigmas_of(bf16)
    plain = sample(bf16, euler(), sigmas, cond, CFG)
    run = lambda s: sample(bf16, nodes.AsyrpSampler.execute(  # noqa: E731
        direction(bf16, "double.1.attn"), s, "percent", 500, 0.0, 0.6, 0, allow_other_model=True).result[0], sigmas,
        cond, CFG)
    assert torch.equal(run(0.0), plain)
    edited = run(1.0)
    assert torch.isfinite(edited).all() and (edited - plain).abs().mean() > 0.05 * plain.abs().mean()
