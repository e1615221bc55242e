"""The any-denoiser adapter on a tiny EDM-preconditioned U-Net: VP ↔ VE conversion, h hooks, inversion, edits."""
import math

import pytest
import torch

from harness.tiny import GaussianData, tiny_pixel_unet
from hspace_core import (Denoiser, Direction, EditSchedule, HSpaceModel, betas_linear, edit, fingerprint_of, generate,
                         inject, invert, normalized_slerp, schedule_from_betas, timestep_at_fraction, timestep_at_sigma)
from hspace_core.schedules import sigmas_of


class TinyEDM(torch.nn.Module):
    """D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise) (Karras et al. 2022, Table 1) around a tiny diffusers U-Net."""

    sigma_data = 0.5

    def __init__(self, seed=0):
        super().__init__()
        self.F = tiny_pixel_unet(seed)

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip, c_out = sd2 / (s**2 + sd2), s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd2).sqrt(), sigma.log() / 4
        return c_skip * x + c_out * self.F(c_in * x, c_noise).sample


SCHEDULE = schedule_from_betas(betas_linear(1000))
SIGMAS = sigmas_of(SCHEDULE.alphas_cumprod)


@pytest.fixture
def edm():
    return TinyEDM().eval()


def test_is_an_hspace_model_with_h_from_the_named_module(edm, images):
    model = Denoiser(edm, SIGMAS, "F.mid_block")
    assert isinstance(model, HSpaceModel) and model.branches == ("single",)
    with torch.no_grad():
        pred = model.predict(images, 500)
    assert pred.h.shape == (2, 32, 8, 8) and pred.eps_edited is None
    assert not edm.F.mid_block._forward_hooks


@torch.no_grad()
def test_eps_agrees_with_a_hand_conversion(edm, images):
    model = Denoiser(edm, SIGMAS, edm.F.mid_block)
    for t in (0, 250, 999):
        a = model.schedule.alpha_bar(t)
        sigma = math.sqrt((1 - a) / a)
        x = images / math.sqrt(a)
        hand = (x - edm(x, torch.full((2,), sigma))) / sigma
        assert torch.allclose(model.predict(images, t).eps, hand, atol=1e-5)


@torch.no_grad()
def test_the_sigma_view_calls_the_denoiser_at_sigma_itself(edm, images):
    """``hs.denoise_at`` on a Denoiser is fn(x, σ) at the σ it is given, off the table too (no VP round trip); the
    edit is looked up at the nearest timestep, and replacing h by itself changes nothing."""
    from hspace_core import denoise_at

    model, sigma, seen = Denoiser(edm, SIGMAS, "F.mid_block"), 1.2345, []
    plain, edited, h = denoise_at(model, images, sigma, lambda h_, t, b: seen.append(t) or h_)
    torch.testing.assert_close(plain, edm(images, torch.full((2,), sigma)))
    torch.testing.assert_close(edited, plain)
    assert h.shape == (2, 32, 8, 8) and seen == [model.levels.timestep(sigma)]


@torch.no_grad()
def test_conversion_is_exact_on_gaussian_data(images):
    """The optimal VE denoiser of N(μ, s²) data, D = μ + s²/(s² + σ²)·(x − μ), converts to the exact VP ε."""
    mu, s = torch.full((1, 3, 16, 16), 0.2), 0.5
    reference = GaussianData(mu, s)
    h_module = torch.nn.Identity()

    def denoise(x, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1).double()
        h_module(x)
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    model = Denoiser(denoise, reference.schedule, h_module, fingerprint="analytic")
    for t in (10, 400, 990):
        assert torch.allclose(model.predict(images.double(), t).eps, reference.eps(images.double(), t), atol=1e-7)
    eps_model = Denoiser(lambda x, sigma: h_module(reference.eps(x / (1 + sigma[0] ** 2) ** 0.5, 400)),
                         reference.schedule, h_module, output="eps", fingerprint="analytic-eps")
    assert torch.allclose(eps_model.predict(images, 400).eps, reference.eps(images, 400))


@torch.no_grad()
def test_inversion_round_trip(edm, images):
    model = Denoiser(edm, SIGMAS, "F.mid_block")
    inv = invert(model, images, 20, convention="diffusers", refine_iters=6)
    assert inv.report.psnr > 40, inv.report
    assert len(inv.report.psnr_per_image) == 2 and min(inv.report.psnr_per_image) > 40
    assert inv.trajectory.h.shape[1:] == (2, 32, 8, 8) and inv.trajectory.fingerprint == model.fingerprint


def _edm_eps(edm, x_t, t, h_map=None):
    """ε of the VP point x_t from the EDM network, written out: x = x_t/√ᾱ_t, σ = √((1−ᾱ_t)/ᾱ_t), ε = (x − D(x, σ))/σ;
    ``h_map`` replaces the mid block's output h by h_map(h) (a plain forward hook)."""
    a = SCHEDULE.alpha_bar(t)
    sigma = math.sqrt((1 - a) / a)
    x = x_t / math.sqrt(a)
    handle = edm.F.mid_block.register_forward_hook(lambda m, args, out: None if h_map is None else h_map(out))
    try:
        denoised = edm(x, torch.full((x.shape[0],), sigma))
    finally:
        handle.remove()
    return (x - denoised) / sigma


def _asymmetric_by_hand(edm, x_T, sched, h_map):
    """Asyrp's process (eq. 4, η = 0): P_t from the edited ε over [T, t_edit], D_t from the original; plain below."""
    x = x_T
    for t, t_prev in zip(sched.timesteps(), (*sched.timesteps()[1:], -1)):
        a, a_prev = SCHEDULE.alpha_bar(t), SCHEDULE.alpha_bar(t_prev)
        e = _edm_eps(edm, x, t)
        e_p = _edm_eps(edm, x, t, lambda h, t=t: h_map(h, t)) if t >= sched.t_edit else e
        x = math.sqrt(a_prev) * (x - math.sqrt(1 - a) * e_p) / math.sqrt(a) + math.sqrt(1 - a_prev) * e
    return x


@torch.no_grad()
def test_edit_and_inject_equal_the_processes_written_out_on_the_network(edm, images):
    model = Denoiser(edm, SIGMAS, "F.mid_block")
    inv = invert(model, images, 10, report=False)
    sched = EditSchedule(10, t_edit=timestep_at_fraction(model.schedule, 0.5))
    delta = torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(0))
    edited = edit(model, inv.x_T, Direction("global", delta), 0.5, sched)
    assert torch.allclose(edited, _asymmetric_by_hand(edm, inv.x_T, sched, lambda h, t: h + 0.5 * delta), atol=1e-4)
    assert (edited - generate(model, inv.x_T, sched)).abs().max() > 0.05  # the edit is large against the tolerance
    style = inv.x_T.flip(0)
    mixed = inject(model, style, inv.trajectory, 0.5, sched)
    by_hand = _asymmetric_by_hand(edm, style, sched, lambda h, t: normalized_slerp(h, inv.trajectory.at(t), 0.5))
    assert torch.allclose(mixed, by_hand, atol=1e-4)
    assert (mixed - generate(model, style, sched)).abs().max() > 0.05
    identity = model.predict(images, 700, lambda h, t, b: h)
    assert torch.equal(identity.eps_edited, identity.eps)
    assert not edm.F.mid_block._forward_hooks


def test_hook_comes_off_when_the_edit_raises(edm, images):
    model = Denoiser(edm, SIGMAS, "F.mid_block")

    def broken(h, t, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.predict(images, 300, broken)
    assert not edm.F.mid_block._forward_hooks


def test_bad_input_is_refused_with_what_to_change(edm, images):
    with pytest.raises(ValueError, match="no submodule 'F.middle'"):
        Denoiser(edm, SIGMAS, "F.middle")
    with pytest.raises(ValueError, match="pass fingerprint="):
        Denoiser(lambda x, s: x, SIGMAS, torch.nn.Identity())
    with pytest.raises(ValueError, match="output must be one of"):
        Denoiser(edm, SIGMAS, "F.mid_block", output="v")
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        Denoiser(edm, SIGMAS, "F.mid_block").predict(images, -1)


def test_fingerprint_of_any_tensors_or_bytes(edm):
    arch = {"name": "edm"}
    assert fingerprint_of(arch, edm.state_dict()) == fingerprint_of(arch, list(edm.state_dict().values()))
    assert fingerprint_of(arch, b"abc") != fingerprint_of(arch, b"abd")
    assert Denoiser(edm, SIGMAS, "F.mid_block").fingerprint != Denoiser(TinyEDM(1), SIGMAS, "F.mid_block").fingerprint
    with pytest.raises(ValueError, match="'w' is a str"):
        fingerprint_of(arch, {"w": "not a tensor"})


def test_schedule_aware_timesteps():
    linear = schedule_from_betas(betas_linear(1000))
    assert timestep_at_fraction(linear, 0.4) == 400 and timestep_at_fraction(linear, 1.0) == 999
    assert timestep_at_sigma(linear, linear.sigma(400)) == 400 and timestep_at_sigma(linear, 0.0) == 0
    coarse = schedule_from_betas(betas_linear(100, 1e-3, 0.2))  # another schedule: the same noise level
    t = timestep_at_sigma(coarse, linear.sigma(400))
    assert abs(math.log(coarse.sigma(t) / linear.sigma(400))) < 0.1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        timestep_at_fraction(linear, 1.5)


def test_site_labels_what_the_named_module_is(edm, images):
    up1 = Denoiser(edm, SIGMAS, "F.up_blocks.0", site="up1")
    with torch.no_grad():
        inv = invert(up1, images, 4, report=False)
    assert inv.trajectory.site == "up1" and inv.trajectory.h_shape == (32, 16, 16)
    with pytest.raises(ValueError, match="set site to 'up1'"):
        edit(Denoiser(edm, SIGMAS, "F.mid_block"), inv.x_T, Direction("global", torch.ones(32, 16, 16), site="up1"),
             1.0, EditSchedule(4, t_edit=500))
    with pytest.raises(ValueError, match="unknown"):
        Denoiser(edm, SIGMAS, "F.mid_block", site="bottleneck")
