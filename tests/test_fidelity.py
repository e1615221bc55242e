"""The processes assembled as the seeds assemble them: inversion conventions, content-h source, local mixing,
the official grid, official checkpoints' step count, calibration's ends, Slerp near antipodal h, grids as data."""
import math

import numpy as np
import pytest
import torch

from harness.tiny import GaussianData
from hspace_core import (EditSchedule, HTrajectory, capture, generate, inject, invert, load_official_asyrp,
                         masked_normalized_slerp, normalized_slerp, predicted_x0, slerp, timestep_grid)
from hspace_core.hmath import _rotate_toward
from hspace_core.implicit import TimeEmbedding


@pytest.fixture
def analytic():
    g = torch.Generator().manual_seed(5)
    return GaussianData(mu=torch.randn(1, 3, 8, 8, generator=g).double() * 0.3, s=0.5)


@pytest.fixture
def x0():
    g = torch.Generator().manual_seed(6)
    return (torch.randn(2, 3, 8, 8, generator=g) * 0.5).clamp(-1, 1).double()


def _inverse_step(x, eps, a_here, a_next):
    p = (x - math.sqrt(1 - a_here) * eps) / math.sqrt(a_here)
    return math.sqrt(a_next) * p + math.sqrt(1 - a_next) * eps


def test_seed_convention_is_the_official_loop(analytic, x0):
    """Asyrp / InjectFusion: seq = int(linspace(0, 1, N)·999 + 1e-6); the image is x at t = 0; step i → i+1
    takes ε(x_i, t_i); N points, N − 1 steps."""
    n = 12
    seq = [int(s + 1e-6) for s in np.linspace(0, 1, n) * 999]
    ab = analytic.schedule.alpha_bar
    x = x0.clone()
    for t, t_next in zip(seq[:-1], seq[1:]):
        x = _inverse_step(x, analytic.eps(x, t), ab(t), ab(t_next))
    inv = invert(analytic, x0, n, report=False)
    assert inv.convention == "seed"
    assert torch.allclose(inv.x_T, x, atol=1e-12, rtol=0)
    assert analytic.calls == n - 1


def test_diffusers_convention_is_the_inverse_scheduler_loop(analytic, x0):
    """diffusers' DDIMInverseScheduler: from ᾱ = 1, each step to t takes ε(x_prev, t)."""
    n = 12
    seq = list(reversed(timestep_grid(n)))
    ab = analytic.schedule.alpha_bar
    x = x0.clone()
    for t_prev, t in zip([-1, *seq[:-1]], seq):
        x = _inverse_step(x, analytic.eps(x, t), ab(t_prev), ab(t))
    inv = invert(analytic, x0, n, convention="diffusers", report=False)
    assert torch.allclose(inv.x_T, x, atol=1e-12, rtol=0)
    assert analytic.calls == n


def test_refinement_solves_the_exact_inverse_for_both_conventions(analytic, x0):
    diffusers = invert(analytic, x0, 50, convention="diffusers", refine_iters=8)
    assert diffusers.report.max_abs_error < 1e-8
    seed = invert(analytic, x0, 50, refine_iters=8)
    # the seed convention starts at x_0 = the image: everything but the last reverse step (0 → −1) is inverted
    last = predicted_x0(x0, analytic.eps(x0, 0), analytic.schedule.alpha_bar(0))
    assert (seed.reconstruction - last).abs().max() < 1e-8
    plain = invert(analytic, x0, 50)
    assert plain.report.mse > 100 * seed.report.mse
    assert diffusers.latents.shape == (51, 2, 3, 8, 8)  # the input, then x_t at each of the 50 grid points
    # naive inversion is a first-order method: its error shrinks with more steps
    assert invert(analytic, x0, 100).report.mse < invert(analytic, x0, 20).report.mse


def test_content_h_from_the_inversion_pass_is_read_where_the_model_was_evaluated(analytic, x0):
    n = 10
    inv = invert(analytic, x0, n)
    assert inv.trajectory.source == "inversion"
    grid_up = list(reversed(inv.timesteps))
    for k, t in enumerate(grid_up[:-1]):  # h_t = h(x_t, t) along the inversion (GaussianData: h = avgpool(x))
        assert torch.allclose(inv.trajectory.at(t), analytic.predict(inv.latents[k + 1], t).h.float())
    # at T the official code's nearest-timestep lookup gives the last inversion step's h
    assert torch.equal(inv.trajectory.at(grid_up[-1]), inv.trajectory.at(grid_up[-2]))
    recon = invert(analytic, x0, n, h_source="reconstruction")
    assert recon.trajectory.source == "reconstruction"
    assert torch.equal(recon.trajectory.h, capture(analytic, inv.x_T, n).h)
    assert not torch.allclose(recon.trajectory.h, inv.trajectory.h)


def test_unknown_convention_or_source_is_refused(analytic, x0):
    with pytest.raises(ValueError, match="convention 'ddpm' is unknown"):
        invert(analytic, x0, 5, convention="ddpm")
    with pytest.raises(ValueError, match="h_source"):
        invert(analytic, x0, 5, h_source="noise")


def test_official_grid_truncates_like_the_official_code():
    for n in (2, 7, 20, 40, 50, 100, 1000):
        official = [int(s + 1e-6) for s in np.linspace(0, 1, n) * 999]
        assert timestep_grid(n) == tuple(reversed(official))
    rounded = np.linspace(0, 999, 20).round().astype(int)[::-1]
    assert sum(a != b for a, b in zip(timestep_grid(20), rounded)) == 9


def test_masked_injection_masks_before_the_slerp():
    g = torch.Generator().manual_seed(3)
    h, h_c = torch.randn(2, 8, 4, 4, generator=g).double(), torch.randn(2, 8, 4, 4, generator=g).double() * 3
    m = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    m[..., :, :2] = 1
    gamma = 0.4
    out = masked_normalized_slerp(h, h_c, gamma, m)
    for b in range(2):  # by hand: the masked region's own norms and angle, pasted into the original map
        a, c = (h[b] * m[0]).flatten(), (h_c[b] * m[0]).flatten()
        c = c * a.norm() / c.norm()
        theta = torch.arccos(torch.dot(a, c) / (a.norm() * c.norm()))
        mixed = (torch.sin((1 - gamma) * theta) * a + torch.sin(gamma * theta) * c) / torch.sin(theta)
        expected = mixed.reshape(8, 4, 4) + h[b] * (1 - m[0])
        assert torch.allclose(out[b], expected, atol=1e-12)
    assert torch.equal(out[..., 2:], h[..., 2:])  # untouched outside the mask
    # differs from slerping everything and blending afterwards (the previous order)
    blended = h + m * (normalized_slerp(h, h_c, gamma) - h)
    assert (out - blended).abs().max() > 1e-2
    # a mask of ones is the plain normalised Slerp
    assert torch.allclose(masked_normalized_slerp(h, h_c, gamma, torch.ones(1, 1, 4, 4).double()),
                          normalized_slerp(h, h_c, gamma), atol=1e-12)


def test_masked_injection_equals_a_hand_written_masked_slerp_loop(analytic, x0):
    sched = EditSchedule(num_steps=8, t_edit=300)
    content = invert(analytic, x0[:1], 8, report=False).trajectory
    style_x_T = invert(analytic, x0[1:], 8, report=False).x_T
    mask = torch.zeros(8, 8)
    mask[:4] = 1  # top half; h (avg-pooled by 2) sees its top two rows
    out = inject(analytic, style_x_T, content, 0.6, sched, mask=mask)
    ab = analytic.schedule.alpha_bar
    m = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    m[..., :2, :] = 1
    x = style_x_T.clone()
    for t, t_prev in zip(sched.timesteps(), [*sched.timesteps()[1:], -1]):
        eps = analytic.eps(x, t)
        if t >= sched.t_edit:
            h = torch.nn.functional.avg_pool2d(x, 2)
            h_c = content.at(t).double()
            hm, cm = h * m, h_c * m
            cm = cm * hm.flatten(1).norm(dim=1)[:, None, None, None] / cm.flatten(1).norm(dim=1)[:, None, None, None]
            cos = (hm * cm).flatten(1).sum(1) / (hm.flatten(1).norm(dim=1) * cm.flatten(1).norm(dim=1))
            th = torch.arccos(cos)[:, None, None, None]
            h_new = (torch.sin(0.4 * th) * hm + torch.sin(0.6 * th) * cm) / torch.sin(th) + h * (1 - m)
            eps_edit = eps + torch.nn.functional.interpolate(h_new - h, scale_factor=2)
            p = (x - math.sqrt(1 - ab(t)) * eps_edit) / math.sqrt(ab(t))
        else:
            p = (x - math.sqrt(1 - ab(t)) * eps) / math.sqrt(ab(t))
        x = math.sqrt(ab(t_prev)) * p + math.sqrt(1 - ab(t_prev)) * eps
    assert torch.allclose(out, x, atol=1e-10)


def test_calibration_omega_zero_is_off_and_one_stays_near_the_style(analytic, x0):
    sched = EditSchedule(num_steps=8, t_edit=300)
    content = invert(analytic, x0[:1], 8, report=False).trajectory
    style_x_T = invert(analytic, x0[1:], 8, report=False).x_T
    plain = inject(analytic, style_x_T, content, 0.7, sched)
    assert torch.equal(inject(analytic, style_x_T, content, 0.7, sched, omega=0.0), plain)
    style = generate(analytic, style_x_T, sched)
    calibrated = inject(analytic, style_x_T, content, 0.7, sched, omega=1.0)
    assert (calibrated - style).pow(2).mean() < (plain - style).pow(2).mean()
    assert not torch.equal(calibrated, style)


def test_slerp_keeps_the_norm_near_antipodal_h():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 16, 4, 4, generator=g).double()
    for opposite in (-h, -h + 1e-7 * torch.randn(3, 16, 4, 4, generator=g).double()):
        for gamma in (0.0, 0.25, 0.5, 0.75, 1.0):
            out = normalized_slerp(h, opposite, gamma)
            assert torch.allclose(out.flatten(1).norm(dim=1), h.flatten(1).norm(dim=1), rtol=1e-7)
        assert torch.allclose(normalized_slerp(h, opposite, 0.0), h)
        assert torch.allclose(normalized_slerp(h, opposite, 1.0), opposite, atol=1e-6)
    # the antipodal branch is the same Slerp written in the (â, û) plane: it agrees with the textbook formula
    # where both are well conditioned
    b = -h + 1e-2 * torch.randn(3, 16, 4, 4, generator=g).double()
    b = b * (h.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).reshape(3, 1, 1, 1)
    af, bf = h.flatten(1), b.flatten(1)
    na, nb = af.norm(dim=1, keepdim=True), bf.norm(dim=1, keepdim=True)
    theta = torch.arccos((af * bf).sum(1, keepdim=True) / (na * nb))
    rotated = _rotate_toward(af, bf, na, nb, theta, torch.tensor(0.3, dtype=torch.float64))
    assert torch.allclose(rotated.reshape(h.shape), slerp(h, b, 0.3), atol=1e-9)


def test_trajectories_are_read_only_on_their_own_grid(analytic, x0):
    content = invert(analytic, x0[:1], 6, report=False).trajectory
    with pytest.raises(ValueError, match="set steps to 6"):
        content.at(500)
    style_x_T = invert(analytic, x0[1:], 12, report=False).x_T
    with pytest.raises(ValueError, match="captured at 6 steps.*set steps to 6"):
        inject(analytic, style_x_T, content, 0.5, EditSchedule(num_steps=12, t_edit=300))
    assert torch.equal(content.select([0]).h, content.h)
    assert isinstance(content.select([0]), HTrajectory) and content.select([0]).source == "inversion"


def test_official_checkpoint_name_gives_the_training_steps(tmp_path):
    path = str(tmp_path / "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth")
    torch.save({str(t): torch.ones(8, 4, 4) for t in (999, 500)}, path)
    emb = TimeEmbedding(32, 64, True, 0.0)
    d = load_official_asyrp(path, emb)
    assert d.metadata["train_steps"] == 40 and d.step_scale(20) == 2.0
    assert load_official_asyrp(path, emb, train_steps=50).step_scale(50) == 1.0
    other = str(tmp_path / "plain.pth")
    torch.save({"999": torch.ones(8, 4, 4)}, other)
    assert load_official_asyrp(other, emb).step_scale(20) == 1.0
