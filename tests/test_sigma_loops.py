"""The library's processes run ``hspace_core.sampling``'s σ loops through every model's σ view (``denoise_at``):
tested against the ᾱ-space loops they replace (tests/ddim_reference.py) and against D = x − σ·ε by hand."""
import pytest
import torch

import ddim_reference as ref
from hspace_core import DiffusersUNet, Direction, EditSchedule, HStorage, invert, run_reverse
from hspace_core.adapters.base import denoise_at, levels_of
from hspace_core.direction_algebra import combine_directions

# The σ loop against the ᾱ loop, both in float32 on the tiny U-Net, relative: the reverse process's x0 and h differ
# by at most 2.2e-6 (clipping; 1.0e-6 on two threads; the others below 6e-7); the inversion's x_T, latents and h by 3.9e-6, and
# with one refinement by 1.8e-5 — float32 rounding: a relative 1e-7 change of the input moves the ᾱ loop's own x_T
# by 3.0e-6 (1.5e-5 refined).
TOL_REVERSE, TOL_INVERT = 5e-6, 4e-5


def relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def model():
    from harness.tiny import tiny_pixel_unet

    return DiffusersUNet(tiny_pixel_unet())


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def shift():
    return combine_directions([Direction("global", torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(4)))],
                              [0.5], False)


def test_the_sigma_view_is_the_denoiser_of_predict(model, x_T):
    """D(x | h) = x − σ·ε(x·√ᾱ, t) at t = the table entry nearest σ, ᾱ = 1/(1 + σ²) (k-diffusion's
    DiscreteEpsDDPMDenoiser); h is predict's."""
    levels = levels_of(model)
    sigma = levels.sigma(600)
    with torch.no_grad():
        plain, edited, h = denoise_at(model, x_T, sigma, lambda h, t, b: 2 * h)
        pred = model.predict(x_T / (1 + sigma**2) ** 0.5, 600, lambda h, t, b: 2 * h)
    torch.testing.assert_close(plain, x_T - sigma * pred.eps)
    torch.testing.assert_close(edited, x_T - sigma * pred.eps_edited)
    torch.testing.assert_close(h, pred.h)
    assert levels.timestep(sigma * 1.0001) == 600 and denoise_at(model, x_T, sigma)[1] is None


def test_gradients_flow_through_the_sigma_view(model, x_T):
    delta = torch.zeros(1, 32, 8, 8, requires_grad=True)
    with model.autograd_ready():
        _, edited, _ = denoise_at(model, x_T, levels_of(model).sigma(500), lambda h, t, b: h + delta, t=500)
        edited.square().sum().backward()
    assert delta.grad is not None and float(delta.grad.abs().sum()) > 0


@pytest.mark.parametrize("case", ["plain", "edit", "symmetric", "stride", "boost", "calibrated", "clipped"])
def test_run_reverse_is_the_alpha_space_process(model, x_T, shift, case):
    schedule = EditSchedule(num_steps=8, t_edit=300, t_boost=200 if case == "boost" else 0, eta_boost=1.0,
                            clip_x0=1.0 if case == "clipped" else None)
    kwargs = {"edit": None if case == "plain" else shift, "edit_every": 2 if case == "stride" else 1,
              "omega": 0.3 if case == "calibrated" else None, "asymmetric": case != "symmetric", "seed": 7}
    with torch.no_grad():
        got = run_reverse(model, x_T, schedule, record_h=True, **kwargs)
        want, hs = ref.reverse(model, x_T, schedule, **kwargs)
    assert relative(got.x0, want) < TOL_REVERSE
    assert relative(got.trajectory.h, torch.stack(hs).float()) < TOL_REVERSE
    if case != "plain":
        with torch.no_grad():
            assert relative(run_reverse(model, x_T, schedule).x0, want) > 0.05  # the edit acts (0.06 to 0.28)


@pytest.mark.parametrize("grid", ["asyrp", "uniform"])
@pytest.mark.parametrize("convention", ["seed", "diffusers"])
@pytest.mark.parametrize("refine", [0, 1])
def test_invert_is_the_alpha_space_inversion(model, images, grid, convention, refine):
    with torch.no_grad():
        got = invert(model, images, 6, grid=grid, convention=convention, refine_iters=refine, report=False)
        x_T, latents, h_at = ref.invert(model, images, got.timesteps, convention=convention, refine_iters=refine)
    assert relative(got.x_T, x_T) < TOL_INVERT
    assert relative(got.latents[-len(latents):], torch.stack(latents)) < TOL_INVERT
    for t in got.timesteps:
        if t in h_at:
            assert relative(got.trajectory.at(t), h_at[t]) < TOL_INVERT, t


def test_capture_stops_where_the_storage_stops(model, x_T):
    """h_only: the run ends after the last kept step, at that step's x_t (VP), as the ᾱ loop's prefix."""
    schedule = EditSchedule.reconstruction(8, "asyrp", 1000)
    storage = HStorage(t_min=500)
    with torch.no_grad():
        got = run_reverse(model, x_T, schedule, record_h=True, h_storage=storage, h_only=True)
        want, hs = ref.reverse(model, x_T, schedule, stop_below=500)
    kept = [t for t in schedule.timesteps() if t >= 500]
    assert got.trajectory.timesteps == tuple(kept) and len(hs) == len(kept) < 8
    assert relative(got.x0, want) < TOL_REVERSE and relative(got.trajectory.h, torch.stack(hs)) < TOL_REVERSE
