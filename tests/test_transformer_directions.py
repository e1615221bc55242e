"""H-Space Jacobian Directions and H-Space Train Asyrp Direction on a tiny Flux and a tiny SD3 (ComfyUI's own classes,
random weights, in-process): the directions carry the transformer site; the flow-matching Jacobian's ε / x0 relation
and the `t` widget's reading on a flow table; CLIP training through the DiT lowers its loss; H-Space Asyrp Edit with
either direction is ComfyUI's euler at strength 0 and changes the image otherwise."""
import logging

import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning

SIZE = 8  # latent 8×8 → a 4×4 patch grid (h: (C, 4, 4))
STEPS = 4


def _models(request):
    return {"flux": (request.getfixturevalue("flux"), flux_conditioning, 1.0),
            "sd3": (request.getfixturevalue("sd3"), sd3_conditioning, 3.0)}


def _x_T(seed=0):
    return {"samples": torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))}


def _jacobian(model, cond, cfg, **knobs):
    from hspace_pack.nodes.discovery import JacobianDirections

    inputs = dict(model=model, x_T=_x_T(), steps=STEPS, t=500, k=2, component=0, output="x0", relative_norm=0.1,
                  iterations=4, seed=0, cfg=cfg, edit_branches="cond", positive=cond(0),
                  negative=cond(1) if cfg != 1.0 else None, site="middle")
    return JacobianDirections.execute(**{**inputs, **knobs}).result


def _euler(model, x_T, cond, cfg, steps=STEPS):
    """ComfyUI's euler from x_T on the DDIM grid's sigmas of ``steps`` (flow: x_T is the point at σ = 1)."""
    import comfy.sample
    import comfy.samplers

    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    sigmas = noise_levels(model).grid_sigmas(steps).float()
    noise = model.model.process_latent_in(x_T["samples"])
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, cond(0),
                                      cond(1), torch.zeros_like(noise), disable_pbar=True, seed=0)


def _check_asyrp_edit(model, cond, cfg, direction, strength):
    """H-Space Asyrp Edit with ``direction`` (percent window 0–0.6): strength 0 is euler from x_T bit for bit, and
    ``strength`` moves the latent by more than 1 % of its mean magnitude."""
    from hspace_pack.nodes.editing import AsyrpEdit

    x_T = _x_T(1)
    with torch.inference_mode():
        out = AsyrpEdit.execute(model, x_T, direction, 0.0, STEPS, 400, 0, cfg, "cond", f"0, {strength}", None, False,
                                cond(0), cond(1) if cfg != 1.0 else None, "percent", 0.0, 0.6).result[0]["samples"]
        plain = _euler(model, x_T, cond, cfg)
    assert torch.equal(out[:1], plain)
    assert (out[1:] - plain).abs().mean() > 0.01 * plain.abs().mean()


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_jacobian_directions_on_a_transformer_feed_asyrp_edit(pack, request, family, caplog):
    """The directions are h's shape at the transformer's default site, orthogonal, of norm relative_norm·‖h‖; their
    singular values are ‖J v‖ (a jvp through the DiT, written out here) and the ε ones are a(σ)/σ = (1 − σ)/σ times
    the x0 ones (ε = (x − (1 − σ)·D)/σ); H-Space Asyrp Edit with one is euler at strength 0 and moves the image at 3."""
    from hspace_pack.nodes.comfy.noise_levels import noise_levels
    model, cond, cfg = _models(request)[family]
    levels = noise_levels(model)
    with caplog.at_level(logging.INFO, logger="hspace"), torch.inference_mode():
        directions, first, info = _jacobian(model, cond, cfg)
        eps = _jacobian(model, cond, cfg, output="eps")[0]
    site = "double.1.attn" if family == "flux" else "joint.1.attn"
    assert [d.site for d in directions] == [site, site] and first is directions[0]
    # the t widget names the entry at its fraction of the table (NoiseLevels.widget_timestep): logged on Flux's 10000
    # entries; on SD3's 1000 it is t itself, no conversion
    assert ("t = 500 names entry 5005 of this model's 10000-entry σ table" in caplog.text) == (family == "flux")
    t = directions[0].metadata["t"]
    sigma = levels.sigma(t)
    assert directions[0].metadata["sigma"] == sigma and 0.2 < sigma < 0.9  # the middle of the schedule, not its end
    a, b = (d.delta.flatten().double() for d in directions)
    assert abs(float(a @ b)) < 1e-3 * float(a.norm() * b.norm())
    assert float(a.norm()) == pytest.approx(float(b.norm()), rel=1e-5)
    for x0_dir, eps_dir in zip(directions, eps):
        ratio = eps_dir.metadata["singular_value"] / x0_dir.metadata["singular_value"]
        assert ratio == pytest.approx((1 - sigma) / sigma, rel=2e-2)
        assert abs(float(x0_dir.delta.flatten() @ eps_dir.delta.flatten())) > 0.95 * float(x0_dir.delta.norm()) ** 2
    assert directions[0].metadata["singular_value"] >= directions[1].metadata["singular_value"] > 0
    _check_asyrp_edit(model, cond, cfg, first, 3.0)


def test_jacobian_singular_value_is_the_norm_of_j_v_on_flux(pack, flux):
    """The leading singular value is ‖J v₁‖ for its unit vector, J v from a jvp of D(x | h) at the site written out
    here (``torch.func.jvp`` through ``denoise_at``), and it exceeds ‖J r‖ of random unit vectors."""
    from hspace_core import latent_at
    from hspace_core.adapters.base import denoise_at
    from hspace_pack.nodes.comfy.run import run_in_comfy

    with torch.inference_mode():
        directions = _jacobian(flux, flux_conditioning, 1.0, k=1, iterations=12)[0]
    v = directions[0].delta / directions[0].delta.norm()
    t = directions[0].metadata["t"]

    def body(m, x):
        x_t, found = latent_at(m, x, t, STEPS)
        sigma = m.levels.sigma(found)
        x = x_t * m.levels.unit_scale(sigma)
        with torch.inference_mode(False), torch.enable_grad(), m.autograd_ready():
            h0 = denoise_at(m, x, sigma, t=found)[2].clone()
            f = lambda h: denoise_at(m, x, sigma, lambda *_: h, t=found)[1]  # noqa: E731
            g = torch.Generator().manual_seed(5)
            probes = [v] + [(r := torch.randn(v.shape, generator=g)) / r.norm() for _ in range(3)]
            return [float(torch.func.jvp(f, (h0,), (p[None].to(h0),))[1].norm()) for p in probes]

    with torch.inference_mode():
        norms = run_in_comfy(flux, _x_T()["samples"], body, positive=flux_conditioning(0), steps=STEPS)
    assert norms[0] == pytest.approx(directions[0].metadata["singular_value"], rel=1e-3)
    assert all(norms[0] > n for n in norms[1:])


def test_jacobian_t_widget_on_flux_reads_the_schedule(pack, flux):
    """t = 999 is σ = 1 on a flow model (the noise): x0 has a Jacobian there, ε = x does not (refused, naming
    output); t = 0 is the last step of the grid."""
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    levels = noise_levels(flux)
    with torch.inference_mode():
        top = _jacobian(flux, flux_conditioning, 1.0, t=999, k=1, iterations=1)[0][0]
        assert top.metadata["t"] == levels.num_timesteps - 1 and top.metadata["sigma"] == 1.0
        with pytest.raises(ValueError, match="H-Space Jacobian Directions.*ε is x itself.*set output to 'x0'"):
            _jacobian(flux, flux_conditioning, 1.0, t=999, k=1, iterations=1, output="eps")
        low = _jacobian(flux, flux_conditioning, 1.0, t=0, k=1, iterations=1)[0][0]
    assert low.metadata["t"] == min(levels.grid(STEPS))


def _train(model, cond, cfg, monkeypatch, **knobs):
    import hspace_pack.nodes.clip_training as clip_training
    from harness.tiny import tiny_clip
    from harness.tiny_dit import tiny_vae16

    scorer = tiny_clip()  # made outside inference mode, as clip_scorer makes open_clip's
    monkeypatch.setattr(clip_training, "clip_scorer", lambda *_: scorer)
    images = torch.rand(2, SIZE * 8, SIZE * 8, 3, generator=torch.Generator().manual_seed(9))
    inputs = dict(model=model, images=images, vae=tiny_vae16(), source_text="a photo", target_text="a red photo",
                  form="global", epochs=2, lr=0.5, steps=STEPS, t_edit=-1, inversion_steps=STEPS, batch_size=2,
                  clip_weight=1.0, recon_weight=3.0, lr_step_epochs=3, lr_gamma=0.1,
                  clip_reference="source_prediction", log_clip_loss=True, init_scale=0.2, clip_model="tiny",
                  clip_pretrained="", seed=0, cfg=cfg, edit_branches="cond", positive=cond(0),
                  negative=cond(1) if cfg != 1.0 else None, window="percent", start_percent=0.0, end_percent=0.6)
    with torch.inference_mode():
        return clip_training.TrainAsyrpDirection.execute(**{**inputs, **knobs}).result


@pytest.mark.parametrize("family, form", [("flux", "global"), ("sd3", "per_timestep")])
def test_clip_training_on_a_transformer(pack, request, monkeypatch, tmp_path, family, form):
    """Train Asyrp Direction through the DiT (the dit patch's h, flow-matching steps, CFG on SD3): more epochs lower
    the CLIP loss, zero loss weights leave the seeded start untouched (only the gradient moves it), the direction
    carries the transformer site and its window (saved and loaded back), and H-Space Asyrp Edit with it is euler at
    strength 0 and moves the image at strength 1."""
    from hspace_core import Direction
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    model, cond, cfg = _models(request)[family]
    site = "double.1.attn" if family == "flux" else "joint.1.attn"
    grid = noise_levels(model).grid(STEPS)
    one, t_edit, loss_one = _train(model, cond, cfg, monkeypatch, form=form, epochs=1)
    four, _, loss_four = _train(model, cond, cfg, monkeypatch, form=form, epochs=4)
    still = _train(model, cond, cfg, monkeypatch, form=form, epochs=1, clip_weight=0.0, recon_weight=0.0)[0]
    assert loss_four < 0.8 * loss_one, (loss_one, loss_four)
    start = torch.randn(still.delta.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    assert torch.equal(still.delta, start) and (one.delta - start).abs().max() > 1e-3 * start.abs().max()
    assert t_edit == grid[1] and one.made_with == f"percent 0.00–0.60, trained on {STEPS} steps"
    assert one.site == site and one.delta.shape[-2:] == (SIZE // 2, SIZE // 2)
    if form == "per_timestep":
        assert one.timesteps == tuple(grid[:2])
    one.save(str(tmp_path / "d.safetensors"))
    back = Direction.load(str(tmp_path / "d.safetensors"))
    assert back.site == site and torch.equal(back.delta, one.delta)
    _check_asyrp_edit(model, cond, cfg, back, 1.0)


def test_clip_training_refuses_what_a_transformer_has_not(pack, flux, monkeypatch):
    """A t_edit window (a U-Net's 1000 DDPM steps, the LPIPS rule) is refused by name on a flow-matching transformer,
    saying what to set (the implicit f_t trains there: tests/test_transformer_implicit.py)."""
    with pytest.raises(ValueError, match="Train Asyrp Direction: on a flow-matching transformer t_edit.*set window "
                                         "to 'percent'"):
        _train(flux, flux_conditioning, 1.0, monkeypatch, window="t_edit", t_edit=400)


def test_bfloat16_lane_on_flux(pack, flux, monkeypatch):
    """Flux's native dtype: the tiny Flux built in bfloat16 gives finite Jacobian directions whose leading singular
    value is within 15 % of the float32 model's (measured 8 %: bfloat16's rounding through the blocks; the vectors of
    this random model's close singular values turn with it), and CLIP training in bfloat16 lowers its loss."""
    from harness.tiny_dit import tiny_flux

    model = tiny_flux(dtype=torch.bfloat16)
    with torch.inference_mode():
        half = _jacobian(model, flux_conditioning, 1.0, k=1, iterations=6)[0][0]
        full = _jacobian(flux, flux_conditioning, 1.0, k=1, iterations=6)[0][0]
    assert torch.isfinite(half.delta).all() and half.delta.dtype == torch.float32
    assert half.metadata["singular_value"] == pytest.approx(full.metadata["singular_value"], rel=0.15)
    one, _, loss_one = _train(model, flux_conditioning, 1.0, monkeypatch, epochs=1)
    four, _, loss_four = _train(model, flux_conditioning, 1.0, monkeypatch, epochs=4)
    assert torch.isfinite(four.delta).all() and loss_four < 0.8 * loss_one, (loss_one, loss_four)


@pytest.mark.parametrize("family, site", [("flux", "double.0"), ("flux", "single.0"), ("sd3", "joint.0")])
def test_jacobian_at_block_output_sites(pack, request, family, site):
    """h at a block's output (the residual stream; gradients then run through the in-place adds of every later Flux
    block, single-stream ones included, and SD3's checkpointed joint blocks): finite directions at that site."""
    model, cond, cfg = _models(request)[family]
    with torch.inference_mode():
        directions = _jacobian(model, cond, cfg, site=site, k=1, iterations=2, output="eps")[0]
    assert directions[0].site == site and torch.isfinite(directions[0].delta).all()
    assert directions[0].metadata["singular_value"] > 0
