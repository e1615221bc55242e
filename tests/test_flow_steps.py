"""The σ-space steps on flow matching (ComfyUI's CONST: x = (1 − σ)·x0 + σ·ε) against their written-out formulas, on
a tiny network under ComfyUI's own ModelSamplingDiscreteFlow + CONST and that model's real SIGMAS (simple
scheduler, shift 3): with no edit the loop is ComfyUI's ``euler`` bit for bit (on VP too); the asymmetric step is
Euler + (1 − σ_next)·(D̃ − D), not VE's + (D̃ − D); the η step is DDIM's posterior on the flow path; the inverse
step is DDIM's (Euler from the clean input) and, refined, inverts the reverse step; style calibration is
InjectFusion's VP move carried to the flow path."""
import math

import pytest
import torch

from hspace_core.flow import flow_eta_sigma
from hspace_core.sampling import invert_sigmas, sample_h_edit

STEPS = 8


@pytest.fixture(scope="module")
def flow(pack):
    """(levels, D(x, σ, edited), sigmas) of a tiny CONST model: a seeded conv net read through ComfyUI's
    ``calculate_input`` / ``calculate_denoised``; the "edit" adds a fixed offset to the network's output."""
    import comfy.model_sampling as cms
    import comfy.samplers
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    return _model(type("ModelSampling", (cms.ModelSamplingDiscreteFlow, cms.CONST), {})(), levels_of_sampling,
                  comfy.samplers.simple_scheduler, shift=3.0)


@pytest.fixture(scope="module")
def vp(pack):
    import comfy.model_sampling as cms
    import comfy.samplers
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    return _model(type("ModelSampling", (cms.ModelSamplingDiscrete, cms.EPS), {})(), levels_of_sampling,
                  comfy.samplers.simple_scheduler)


def _model(ms, levels_of, scheduler, **params):
    if params:
        ms.set_parameters(**params)
    torch.manual_seed(0)  # the tiny network's weights only; the samples below use their own generators
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 3, padding=1))
    offset = 0.3 * torch.randn(1, 4, 1, 1, generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def denoised(x, sigma, edited=False):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(1)
        t = ms.timestep(sigma)
        out = net(ms.calculate_input(sigma, x)) * (1 + t.reshape(-1, 1, 1, 1) / 1000) + (offset if edited else 0)
        return ms.calculate_denoised(sigma, out, x)

    return levels_of(ms), denoised, scheduler(ms, STEPS)


def _x(seed=2):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _loop_denoise(denoised, sigmas):
    def denoise(x, i, edit):
        return denoised(x, sigmas[i]), (denoised(x, sigmas[i], True) if edit else None)

    return denoise


@pytest.mark.parametrize("which", ["flow", "vp"])
def test_no_edit_is_comfyuis_euler_bit_for_bit(pack, request, which):
    import comfy.k_diffusion.sampling as k

    levels, denoised, sigmas = request.getfixturevalue(which)
    x = _x() * float(sigmas[0])
    ours = sample_h_edit(_loop_denoise(denoised, sigmas), x, sigmas, [False] * STEPS, levels=levels)
    theirs = k.sample_euler(lambda x, s, **_: denoised(x, s[0]), x, sigmas, disable=True)
    assert torch.equal(ours, theirs)


def test_asymmetric_flow_step_is_the_written_formula(flow):
    levels, denoised, sigmas = flow
    edits = [True] * 4 + [False] * (STEPS - 4)
    x = _x()
    got = sample_h_edit(_loop_denoise(denoised, sigmas), x, sigmas, edits, levels=levels)
    want, ve = x.double(), x.double()
    for i, edit in enumerate(edits):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        for name in ("want", "ve"):
            y = want if name == "want" else ve
            d = denoised(y.float(), sigmas[i]).double()
            d_edit = denoised(y.float(), sigmas[i], True).double() if edit else d
            if name == "want":  # x_next = (1 − σ_next)·D(x | h̃) + σ_next·(x − (1 − σ)·D(x | h))/σ
                want = (1 - s_next) * d_edit + s_next * (y - (1 - s) * d) / s
            else:  # the VE formula: Euler + (D̃ − D)
                ve = y + (s_next - s) * (y - d) / s + (d_edit - d)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    assert (got.double() - ve).abs().max() > 1e-2  # the VE formula is another process


def test_flow_eta_sigma_is_the_gaussian_posterior_std():
    # Var(x_s | x_t, x0) on x = (1 − σ)·x0 + σ·ε: x_t = (α_t/α_s)·x_s + noise, so Var = σ_s² − Cov²/σ_t²,
    # Cov = (α_t/α_s)·σ_s² (Gaussian conditioning, written independently of flow_eta_sigma's form)
    for s_t, s_s in [(0.9, 0.7), (0.5, 0.2), (0.3, 0.299), (1.0, 0.5)]:
        ratio = (1 - s_t) / (1 - s_s)
        var = s_s**2 - (ratio * s_s**2) ** 2 / s_t**2
        assert flow_eta_sigma(s_t, s_s, 1.0) == pytest.approx(math.sqrt(var), rel=1e-12)
        assert flow_eta_sigma(s_t, s_s, 0.5) == pytest.approx(0.5 * math.sqrt(var), rel=1e-12)
    assert flow_eta_sigma(0.4, 0.0, 1.0) == 0.0


def test_flow_boost_step_is_the_written_formula(flow):
    levels, denoised, sigmas = flow
    edits = [True] * 3 + [False] * (STEPS - 3)
    etas = [0.0] * 5 + [0.8] * (STEPS - 5)
    x = _x()
    got = sample_h_edit(_loop_denoise(denoised, sigmas), x, sigmas, edits, etas=etas, seed=7, levels=levels)
    plain = sample_h_edit(_loop_denoise(denoised, sigmas), x, sigmas, edits, levels=levels)
    generator, want = torch.Generator().manual_seed(7), x.double()
    for i, edit in enumerate(edits):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoised(want.float(), sigmas[i]).double()
        p = denoised(want.float(), sigmas[i], True).double() if edit else d
        noise_std = flow_eta_sigma(s, s_next, etas[i])
        z = torch.randn(x.shape, generator=generator).double() if noise_std > 0 else 0.0
        # x_next = (1 − σ_next)·P + √(σ_next² − s²)·(x − (1 − σ)·D)/σ + s·z
        want = (1 - s_next) * p + math.sqrt(s_next**2 - noise_std**2) * (want - (1 - s) * d) / s + noise_std * z
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # η changed the run


def test_flow_inversion_is_the_written_inverse_step_and_inverts_the_reverse_step(flow):
    levels, denoised, sigmas = flow
    up = sigmas.flip(0)  # FlipSigmas: 0 (the clean input) … 1
    x0 = _x(3).clamp(-1, 1)
    got = invert_sigmas(lambda x, k: denoised(x, up[k]), x0, up, clean_start=True, clean_step=True, levels=levels)
    want = x0.double()
    for k in range(STEPS):
        s, s_next = float(up[k]), float(up[k + 1])
        at = k + 1 if k == 0 else k  # the seed convention: D at the current point; from x0, at σ_1
        d = denoised(want.float(), up[at]).double()
        if k:  # DDIM's inverse step on the flow path: x' = (1 − σ')·D + σ'·ε̂, ε̂ = (x − (1 − σ)·D)/σ
            want = (1 - s_next) * d + s_next * (want - (1 - s) * d) / s
        else:  # from the clean input: the Euler step with v = (x0 − D(x0, σ_1))/σ_1
            want = want + s_next * (want - d) / s_next
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    # refined (fixed-point) inversion is the exact inverse of the reverse step: back to x0
    refined = invert_sigmas(lambda x, k: denoised(x, up[k]), x0, up, clean_start=True, clean_step=True,
                            refine_iters=30, levels=levels)
    back = sample_h_edit(_loop_denoise(denoised, sigmas), refined, sigmas, [False] * STEPS, levels=levels)
    plain_back = sample_h_edit(_loop_denoise(denoised, sigmas), got, sigmas, [False] * STEPS, levels=levels)
    err, plain_err = (back - x0).abs().max().item(), (plain_back - x0).abs().max().item()
    assert err < 1e-4 < plain_err, (err, plain_err)


def test_flow_style_calibration_is_the_written_formula_and_the_vp_move(flow):
    """InjectFusion's calibration on the flow path: x' = x + (1 − σ)·((P̂' − D) − ω·(D' − D)), then the plain step
    (here with η on some steps) with D(x'); the move is ``ddim.calibrated_x_t``'s VP move on x_vp = x/√(a² + σ²)
    carried back; ω = 0 is the uncalibrated injection bit for bit."""
    from hspace_core.ddim import calibrated_x_t, std_matched
    from hspace_core.flow import flow_eps

    levels, denoised, sigmas = flow
    edits = [True] * 5 + [False] * (STEPS - 5)
    etas = [0.0] * 3 + [0.6] * (STEPS - 3)
    x, omega = _x(), 0.3
    got = sample_h_edit(_loop_denoise(denoised, sigmas), x, sigmas, edits, etas=etas, omega=omega, seed=4,
                        levels=levels)
    generator, want = torch.Generator().manual_seed(4), x.double()
    for i, edit in enumerate(edits):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        a = 1 - s
        noise_std = flow_eta_sigma(s, s_next, etas[i])
        z = torch.randn(x.shape, generator=generator).double() if noise_std > 0 else 0.0
        if edit:
            d, d_inj = denoised(want.float(), sigmas[i]).double(), denoised(want.float(), sigmas[i], True).double()
            moved = want + a * ((std_matched(d_inj, d) - d) - omega * (d_inj - d))
            if a > 0:  # the same move through the VP sample x_vp = x/r, √ᾱ = a/r (at σ = 1, ᾱ = 0: no P, no move)
                r = math.sqrt(a * a + s * s)
                vp = calibrated_x_t(want / r, flow_eps(want, d, s), flow_eps(want, d_inj, s), (a / r) ** 2, omega) * r
                assert torch.allclose(vp, moved, rtol=1e-9, atol=1e-9)
            else:
                assert torch.equal(moved, want)
            want = moved
        d = denoised(want.float(), sigmas[i]).double()
        want = (1 - s_next) * d + math.sqrt(s_next**2 - noise_std**2) * (want - (1 - s) * d) / s + noise_std * z
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    loop = _loop_denoise(denoised, sigmas)
    plain_injection = sample_h_edit(loop, x, sigmas, edits, etas=etas, seed=4, levels=levels)
    assert torch.equal(sample_h_edit(loop, x, sigmas, edits, etas=etas, omega=0.0, seed=4, levels=levels),
                       plain_injection)
    assert (got - plain_injection).abs().max() > 1e-2  # ω changed the run
