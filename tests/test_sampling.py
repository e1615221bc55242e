"""The σ-space samplers (hspace_core.sampling) against the pack's own DDIM on the DDIM grid."""

import pytest
import torch

from hspace_core import Denoiser, Direction, EditSchedule, combine_directions, ddim_step, invert, run_reverse
from hspace_core.sampling import (SigmaWindow, asymmetric_step, ddim_sigma_step, inverse_euler_step, invert_sigmas,
                                  sample_h_edit)
from hspace_core.sigmas import alpha_bar_of_sigma, ve_scale
from hspace_core import ddim_inverse_step, timestep_grid

from test_denoiser_adapter import SIGMAS, TinyEDM


def _vp(x, sigma):
    return x / ve_scale(sigma)


@pytest.mark.parametrize("t, t_prev", [(999, 899), (400, 300), (20, 0), (0, -1)])
def test_asymmetric_step_is_the_ddim_step_in_sigma_space(t, t_prev):
    g = torch.Generator().manual_seed(t)
    x_t, eps, eps_edited = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = float(SIGMAS[t])
    sigma_prev = float(SIGMAS[t_prev]) if t_prev >= 0 else 0.0
    a, a_prev = alpha_bar_of_sigma(sigma), alpha_bar_of_sigma(sigma_prev)
    x = x_t * ve_scale(sigma)
    d, d_edited = x - sigma * eps, x - sigma * eps_edited  # D = x − σ·ε
    expected = ddim_step(x_t, eps_edited, a, a_prev, eps_direction=eps)
    assert torch.allclose(_vp(asymmetric_step(x, d_edited, d, sigma, sigma_prev), sigma_prev), expected, atol=1e-12)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    stochastic = ddim_step(x_t, eps_edited, a, a_prev, 0.7, z, eps_direction=eps)
    got = ddim_sigma_step(x, d_edited, sigma, sigma_prev, 0.7, z, denoised_direction=d)
    assert torch.allclose(_vp(got, sigma_prev), stochastic, atol=1e-12)
    assert (t_prev < 0) == torch.allclose(stochastic, expected)  # η changed every step but the last (σ_t = 0 there)


def test_inverse_step_is_the_ddim_inverse_step():
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    sigma, sigma_next = float(SIGMAS[300]), float(SIGMAS[400])
    x = x_t * ve_scale(sigma)
    got = inverse_euler_step(x, x, x - sigma * eps, sigma, sigma, sigma_next)
    want = ddim_inverse_step(x_t, eps, alpha_bar_of_sigma(sigma), alpha_bar_of_sigma(sigma_next))
    assert torch.allclose(_vp(got, sigma_next), want, atol=1e-12)


def _sigma_denoiser(model, grid):
    """denoise(x, i, edit) over the VP adapter: D = x − σ·ε at the VE point x."""

    def denoise(x, i, edit):
        t, sigma = grid[i], float(SIGMAS[grid[i]])
        pred = model.predict(_vp(x, sigma), t, edit)
        to_d = lambda e: x - sigma * e
        return to_d(pred.eps), None if pred.eps_edited is None else to_d(pred.eps_edited)

    return denoise


@torch.no_grad()
def test_sampler_equals_the_pack_reverse_process_with_edit_and_boost(images):
    model = Denoiser(TinyEDM().eval(), SIGMAS, "F.mid_block")
    h = model.predict(images, 500).h
    direction = Direction("global", torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(1)))
    shift = combine_directions([direction], [0.8])
    schedule = EditSchedule(10, t_edit=400, t_boost=200, eta_boost=1.0)
    x_T = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    pack = run_reverse(model, x_T, schedule, edit=shift, seed=5).x0
    grid = schedule.timesteps()
    sigmas = [float(SIGMAS[t]) for t in grid] + [0.0]
    edits = [t >= schedule.t_edit for t in grid]
    etas = [schedule.eta_at(t) for t in grid]

    def denoise(x, i, edit):
        return _sigma_denoiser(model, grid)(x, i, shift if edit else None)

    native = sample_h_edit(denoise, x_T * ve_scale(sigmas[0]), sigmas, edits, etas=etas, seed=5)
    assert torch.allclose(native, pack, atol=1e-5), (native - pack).abs().max()
    plain = run_reverse(model, x_T, schedule, seed=5).x0
    assert (pack - plain).abs().max() > 1e-2  # the edit changed the image


@torch.no_grad()
@pytest.mark.parametrize("refine", [0, 2])
def test_inversion_sampler_equals_the_pack_inversion(images, refine):
    model = Denoiser(TinyEDM().eval(), SIGMAS, "F.mid_block")
    pack = invert(model, images, 8, refine_iters=refine, report=False).x_T
    grid = timestep_grid(8, 1000)
    ascending = [1e-4] + [float(SIGMAS[t]) for t in reversed(grid)]  # FlipSigmas of the DDIM sigmas
    table = [None] + list(reversed(grid))

    def denoise(x, k):
        t, sigma = table[k], ascending[k]
        return x - sigma * model.predict(_vp(x, sigma), t).eps

    native = invert_sigmas(denoise, images, ascending, clean_start=True, refine_iters=refine)
    assert torch.allclose(_vp(native, ascending[-1]), pack, atol=1e-5)


def test_window_refuses_a_reversed_range():
    assert SigmaWindow(5.0, 1.0).contains(1.0) and not SigmaWindow(5.0, 1.0).contains(0.9)
    with pytest.raises(ValueError, match="start_percent"):
        SigmaWindow(1.0, 5.0)
