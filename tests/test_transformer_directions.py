"""H-Space Jacobian Directions and H-Space Train Asyrp Direction on a tiny Flux and a tiny SD3 (ComfyUI's own classes,
random weights, in-process): the directions carry the transformer site, the flow-matching Jacobian's ε / x0 relation
and the `t` widget's reading on a flow table, and H-Space Asyrp Edit with them (strength 0 is ComfyUI's euler)."""
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


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_jacobian_directions_on_a_transformer_feed_asyrp_edit(pack, request, family, caplog):
    """The directions are h's shape at the transformer's default site, orthogonal, of norm relative_norm·‖h‖; their
    singular values are ‖J v‖ (a jvp through the DiT, written out here) and the ε ones are a(σ)/σ = (1 − σ)/σ times
    the x0 ones (ε = (x − (1 − σ)·D)/σ); H-Space Asyrp Edit with one is euler at strength 0 and moves the image at 3."""
    from hspace_pack.nodes.comfy.noise_levels import noise_levels
    from hspace_pack.nodes.editing import AsyrpEdit

    model, cond, cfg = _models(request)[family]
    levels = noise_levels(model)
    with caplog.at_level(logging.INFO, logger="hspace"), torch.inference_mode():
        directions, first, info = _jacobian(model, cond, cfg)
        eps = _jacobian(model, cond, cfg, output="eps")[0]
    site = "double.1.attn" if family == "flux" else "joint.1.attn"
    assert [d.site for d in directions] == [site, site] and first is directions[0]
    assert "reads as percent 0.499" in caplog.text and str(levels.num_timesteps) in caplog.text
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
    x_T = _x_T()
    with torch.inference_mode():
        out = AsyrpEdit.execute(model, x_T, first, 0.0, STEPS, 400, 0, cfg, "cond", "0, 3", None, False, cond(0),
                                cond(1) if cfg != 1.0 else None, "percent", 0.0, 0.6).result[0]["samples"]
        plain = _euler(model, x_T, cond, cfg)
    assert torch.equal(out[:1], plain)
    assert (out[1:] - plain).abs().mean() > 0.01 * plain.abs().mean()


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
