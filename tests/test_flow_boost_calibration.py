"""Asyrp's quality boost and InjectFusion's style calibration on a flow transformer (issue 38 item 2), in-process on
the tiny Flux and SD3 (harness/tiny_dit.py) through the SAMPLER nodes: the boost's stochastic steps are the
written-out DDIM η step on the flow path (under SD3's CFG too), on the steps whose σ lies below
σ(boost_start_percent) as ComfyUI computes it, seeded; η = 0 is ComfyUI's ``euler`` bit for bit (bfloat16 Flux too);
ω = 0 is the uncalibrated injection bit for bit and ω > 0 pulls the mix toward the style image's reconstruction
(docs/transformers.md, "Quality boost and style calibration on flow matching")."""
import math

import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux
from test_transformers import direction, euler, invert_images, sample, sigmas_of


def boost(eta, seed, start_percent=0.5):
    import hspace_pack.nodes.injection as injection

    return injection.QualityBoost.execute(200, eta, seed, "percent", start_percent).result[0]


def asyrp(model, strength, boost_settings=None, end_percent=0.4):
    import hspace_pack.nodes.samplers as nodes

    site = "joint.1.attn" if hasattr(model.get_model_object("diffusion_model"), "joint_blocks") else "double.1.attn"
    return nodes.AsyrpSampler.execute(direction(model, site), strength, "percent", 500, 0.0, end_percent, 0,
                                      boost=boost_settings, allow_other_model=True).result[0]


def written_boost(eta: float, start_percent: float, seed: int):
    """The flow DDIM η step written out as a KSAMPLER over the guider's D: on the steps with σ < σ(start_percent)
    (ComfyUI's percent_to_sigma), x' = (1 − σ')·D + √(σ'² − s²)·(x − (1 − σ)·D)/σ + s·z with
    s = η·(σ'/σ)·√(σ² − ((1 − σ)/(1 − σ'))²·σ'²) and z drawn in step order from a CPU generator seeded ``seed``;
    elsewhere the same with s = 0 (Euler)."""
    import comfy.samplers

    def sample_fn(model, x, sigmas, extra_args=None, callback=None, disable=None):
        ms = model.inner_model.model_patcher.get_model_object("model_sampling")
        start = ms.percent_to_sigma(start_percent)
        generator, x, ones = torch.Generator().manual_seed(seed), x.double(), x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            d = model(x.float(), sigmas[i] * ones, **(extra_args or {})).double()
            std = 0.0
            if s < start and s_next > 0:
                std = eta * (s_next / s) * math.sqrt(s**2 - ((1 - s) / (1 - s_next)) ** 2 * s_next**2)
            z = torch.randn(x.shape, generator=generator).double() if std > 0 else 0.0
            x = (1 - s_next) * d + math.sqrt(s_next**2 - std**2) * (x - (1 - s) * d) / s + std * z
        return x.float()

    return comfy.samplers.KSAMPLER(sample_fn)


def _family(request, family):
    """(model, conditioning, cfg): the tiny Flux under its distilled guidance (cfg 1), the tiny SD3 under CFG 3."""
    return {"flux": (request.getfixturevalue("flux"), flux_conditioning, 1.0),
            "sd3": (request.getfixturevalue("sd3"), sd3_conditioning, 3.0)}[family]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_boost_is_the_written_flow_eta_step_on_its_sigma_window(pack, request, family):
    model, cond, cfg = _family(request, family)
    sigmas = sigmas_of(model, 8)
    start = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    stochastic = [float(s) < start for s in sigmas[:-2]]
    assert 0 < sum(stochastic) < len(stochastic)  # the window holds some steps, not all: it is tested
    run = lambda sampler: sample(model, sampler, sigmas, cond, cfg)  # noqa: E731
    got = run(asyrp(model, 0.0, boost(0.7, 5)))
    want = run(written_boost(0.7, 0.5, 5))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    plain = run(euler())
    assert (got - plain).abs().mean() > 0.05 * plain.abs().mean()  # η changed the image
    assert torch.equal(run(asyrp(model, 0.0, boost(0.7, 5))), got)  # seeded: reproducible
    assert not torch.equal(run(asyrp(model, 0.0, boost(0.7, 6))), got)  # the seed is the boost's
    assert not torch.allclose(run(asyrp(model, 0.0, boost(0.7, 5, 0.8))), got)  # a later start: fewer noisy steps
    # a t_boost widget names the entry at its fraction of the model's σ table (NoiseLevels.widget_timestep; Flux:
    # 10000 entries): the widget value nearest the entry the percent resolves to (boost_t_boost) is the same run
    from hspace_core import BoostSettings
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    levels = noise_levels(model)
    t_boost = levels.widget_t(levels.count_below(start))
    assert torch.equal(run(asyrp(model, 0.0, BoostSettings(t_boost, 0.7, 5))), got)


@pytest.mark.parametrize("family", ["flux", "sd3", "flux_bf16"])
def test_boost_eta_zero_is_euler_bit_for_bit_and_leaves_the_edit_as_it_is(pack, request, family):
    model, cond, cfg = (tiny_flux(dtype=torch.bfloat16), flux_conditioning, 1.0) if family == "flux_bf16" else \
        _family(request, family)
    sigmas = sigmas_of(model, 6)
    run = lambda sampler: sample(model, sampler, sigmas, cond, cfg)  # noqa: E731
    assert torch.equal(run(asyrp(model, 0.0, boost(0.0, 3))), run(euler()))
    edited = run(asyrp(model, 1.0))
    assert torch.equal(run(asyrp(model, 1.0, boost(0.0, 3))), edited)
    boosted = run(asyrp(model, 1.0, boost(1.0, 3)))
    assert torch.isfinite(boosted).all() and not torch.equal(boosted, edited)


def test_a_boost_that_makes_no_step_stochastic_is_logged(pack, flux, caplog):
    """On 4 steps of Flux's simple schedule a start at 0.95 leaves only the step to σ = 0, which has no noise: the run
    is the plain one, and the log says so (nothing silent); a start at 0.4 (σ 0.83: the step from 0.76) boosts and
    logs nothing."""
    import logging

    sigmas = sigmas_of(flux, 4)
    run = lambda sampler: sample(flux, sampler, sigmas, flux_conditioning, 1.0)  # noqa: E731
    with caplog.at_level(logging.INFO, logger="hspace"):
        assert torch.equal(run(asyrp(flux, 0.0, boost(1.0, 3, 0.95))), run(euler()))
        assert any("makes none of these 4 steps stochastic" in r.getMessage() for r in caplog.records)
        caplog.clear()
        assert not torch.equal(run(asyrp(flux, 0.0, boost(1.0, 3, 0.4))), run(euler()))
        assert not any("stochastic" in r.getMessage() for r in caplog.records)


def test_boost_window_below_the_edit_window_is_refused_on_flux(pack, flux):
    with pytest.raises(ValueError, match="below the quality boost's start"):
        sample(flux, asyrp(flux, 1.0, boost(1.0, 3, 0.3), end_percent=0.6), sigmas_of(flux, 6), flux_conditioning,
               1.0)


@pytest.fixture(scope="module")
def inverted(pack, flux):
    """(style x_T, content trajectory, sigmas) on the tiny Flux: two generated images inverted by the Inversion
    Sampler below σ = 1 (docs/transformers.md, "σ = 1 and LATENTs")."""
    sigmas = sigmas_of(flux, 9)[1:]
    (style, _), (_, content) = invert_images(flux, sigmas, "double.1")
    return style["samples"], content, sigmas


def test_calibration_on_flux_pulls_the_mix_toward_the_style_reconstruction(pack, flux, inverted):
    """Distances (RMS of the latent) of the mix to the style image's reconstruction at ω = 0 / 0.3 / 1: ω = 0 is the
    plain injection bit for bit; the distance falls with ω (docs/transformers.md has the figures)."""
    import hspace_pack.nodes.injection as injection
    import hspace_pack.nodes.samplers as nodes

    style, content, sigmas = inverted
    zeros = torch.zeros_like(style)
    run = lambda sampler: sample(flux, sampler, sigmas, flux_conditioning, 1.0, x=zeros, latent=style)  # noqa: E731

    def inject(omega=None):
        calibration = None if omega is None else injection.StyleCalibrate.execute(omega).result[0]
        return run(nodes.ContentInjectionSampler.execute(content, 1.0, -1.0, 1, "percent", 500, 0.0, 0.7, "slerp",
                                                         False, 0, calibration=calibration).result[0])

    reconstruction = run(euler())
    plain = inject()
    assert torch.equal(inject(0.0), plain)
    rms = lambda mix: float((mix - reconstruction).detach().pow(2).mean().sqrt())  # noqa: E731
    distance = {0.0: rms(plain), 0.3: rms(inject(0.3)), 1.0: rms(inject(1.0))}
    print("distance to the style reconstruction (RMS) at ω = 0 / 0.3 / 1:",
          " / ".join(f"{distance[w]:.4f}" for w in (0.0, 0.3, 1.0)))
    assert distance[0.0] > distance[0.3] > distance[1.0] > 0, distance


def test_calibration_in_bfloat16_on_flux(pack):
    """Flux's native dtype: ω = 0 is the plain injection bit for bit, ω = 1 is finite and moves the mix (the step
    math runs in float32, ``devices.step_dtype``)."""
    import hspace_pack.nodes.injection as injection
    import hspace_pack.nodes.samplers as nodes

    model = tiny_flux(dtype=torch.bfloat16)
    sigmas = sigmas_of(model, 7)[1:]
    (style, _), (_, content) = invert_images(model, sigmas, "double.1")

    def inject(omega=None):
        calibration = None if omega is None else injection.StyleCalibrate.execute(omega).result[0]
        sampler = nodes.ContentInjectionSampler.execute(content, 1.0, -1.0, 1, "percent", 500, 0.0, 0.7, "slerp",
                                                        False, 0, calibration=calibration).result[0]
        return sample(model, sampler, sigmas, flux_conditioning, 1.0, x=torch.zeros_like(style["samples"]),
                      latent=style["samples"])

    plain = inject()
    assert torch.equal(inject(0.0), plain)
    calibrated = inject(1.0)
    assert torch.isfinite(calibrated).all() and not torch.equal(calibrated, plain)
