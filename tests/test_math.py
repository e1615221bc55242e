"""The equations, checked against hand computation and against diffusers' own schedulers."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from hspace_core import (EditSchedule, betas_cosine, betas_linear, betas_scaled_linear, calibrated_x_t,
                         ddim_inverse_step, ddim_sigma, ddim_step, eps_from_model_output, gamma_ramp, mask_to_h_grid,
                         masked_blend, normalized_slerp, predicted_x0, schedule_from_betas,
                         schedule_from_diffusers_config, schedule_from_sigmas, slerp, timestep_grid)
from hspace_core.schedules import sigmas_of


# --- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alpha_bar_matches_diffusers(kind):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=kind, beta_start=0.00085, beta_end=0.012)
    ours = schedule_from_diffusers_config(dict(ref.config))
    assert ours.alphas_cumprod.dtype == torch.float64
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)


def test_linear_betas_by_hand():
    s = schedule_from_betas(betas_linear(1000, 1e-4, 2e-2))
    assert s.alpha_bar(0) == pytest.approx(1 - 1e-4, abs=1e-15)
    assert s.alpha_bar(1) == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (2e-2 - 1e-4) / 999)), abs=1e-15)
    assert s.alpha_bar(-1) == 1.0
    assert betas_scaled_linear(3, 0.01, 0.04)[1].item() == pytest.approx(0.15**2)
    assert betas_cosine(1000)[-1].item() == pytest.approx(0.999)


def test_sigma_table_round_trip():
    s = schedule_from_betas(betas_scaled_linear(1000))
    back = schedule_from_sigmas(sigmas_of(s.alphas_cumprod))
    assert torch.allclose(back.alphas_cumprod, s.alphas_cumprod, atol=1e-12)
    assert s.sigma(999) == pytest.approx(14.6146, abs=1e-3)  # SD1.5's sigma_max
    for t in (0, 17, 500, 999):
        assert s.timestep_of_sigma(s.sigma(t)) == t


def test_grids():
    g = timestep_grid(40, 1000, "asyrp")
    assert g[0] == 999 and g[-1] == 0 and len(g) == 40 and list(g) == sorted(g, reverse=True)
    for kind, offset in (("trailing", 0), ("leading", 0)):
        ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=kind, steps_offset=offset)
        ref.set_timesteps(10)
        assert list(timestep_grid(10, 1000, kind)) == ref.timesteps.tolist()
    assert timestep_grid(4, 1000, "uniform") == (751, 501, 251, 1)  # ComfyUI's ddim_uniform
    with pytest.raises(ValueError, match="grid kind"):
        timestep_grid(10, 1000, "weird")
    with pytest.raises(ValueError, match="num_steps"):
        timestep_grid(0)


def test_schedule_validation():
    with pytest.raises(ValueError, match="t_edit .* below t_boost"):
        EditSchedule(num_steps=10, t_edit=100, t_boost=300)
    with pytest.raises(ValueError, match="eta"):
        EditSchedule(eta_boost=1.5)
    with pytest.raises(ValueError, match="prediction_type"):
        schedule_from_betas(betas_linear(10), "flow")


# --- DDIM --------------------------------------------------------------------------------------

def test_ddim_step_by_hand():
    x, e = torch.tensor([0.7]), torch.tensor([-0.2])
    a, ap = 0.5, 0.8
    p = (0.7 - math.sqrt(0.5) * -0.2) / math.sqrt(0.5)
    assert predicted_x0(x, e, a).item() == pytest.approx(p)
    assert ddim_step(x, e, a, ap).item() == pytest.approx(math.sqrt(0.8) * p + math.sqrt(0.2) * -0.2)
    sigma = 0.3 * math.sqrt(0.2 / 0.5) * math.sqrt(1 - 0.5 / 0.8)
    assert ddim_sigma(a, ap, 0.3) == pytest.approx(sigma)
    z = torch.tensor([1.3])
    want = math.sqrt(0.8) * p + math.sqrt(0.2 - sigma**2) * -0.2 + sigma * 1.3
    assert ddim_step(x, e, a, ap, 0.3, z).item() == pytest.approx(want)
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, e, a, ap, 0.3)


def test_asymmetric_step_takes_p_from_edited_and_d_from_original():
    x, e, e_edit = torch.tensor([0.7]), torch.tensor([-0.2]), torch.tensor([0.4])
    a, ap = 0.5, 0.8
    got = ddim_step(x, e_edit, a, ap, eps_direction=e).item()
    assert got == pytest.approx(math.sqrt(ap) * predicted_x0(x, e_edit, a).item() + math.sqrt(1 - ap) * -0.2)


def test_eta_one_is_ddpm_posterior_variance():
    s = schedule_from_betas(betas_linear(1000))
    t = 500
    a, ap = s.alpha_bar(t), s.alpha_bar(t - 1)
    beta_t = 1 - a / ap
    assert ddim_sigma(a, ap, 1.0) ** 2 == pytest.approx((1 - ap) / (1 - a) * beta_t, rel=1e-10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_matches_diffusers_ddim(prediction_type):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="leading")
    sched.set_timesteps(20)
    ours = schedule_from_diffusers_config(dict(sched.config))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    out = torch.randn(1, 4, 8, 8, generator=g)
    t = int(sched.timesteps[3])
    t_prev = int(sched.timesteps[4])
    ref = sched.step(out, t, x, eta=0.0).prev_sample
    eps = eps_from_model_output(out.double(), x.double(), ours.alpha_bar(t), prediction_type)
    got = ddim_step(x.double(), eps, ours.alpha_bar(t), ours.alpha_bar(t_prev))
    assert torch.allclose(got.float(), ref, atol=1e-4)


def test_inverse_step_inverts_step_for_the_same_eps():
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    up = ddim_inverse_step(x, e, 0.9, 0.3)
    assert torch.allclose(ddim_step(up, e, 0.3, 0.9), x, atol=1e-12)


# --- h-space -----------------------------------------------------------------------------------

def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    h, hc = torch.randn(2, 8, 4, 4, generator=g), 3 * torch.randn(2, 8, 4, 4, generator=g)
    assert torch.equal(normalized_slerp(h, hc, 0.0), h)
    end = normalized_slerp(h, hc, 1.0)
    scale = h.flatten(1).norm(dim=1) / hc.flatten(1).norm(dim=1)
    assert torch.allclose(end, hc * scale[:, None, None, None], atol=1e-5)
    for gamma in (0.1, 0.5, 0.9):
        mid = normalized_slerp(h, hc, gamma)
        assert torch.allclose(mid.flatten(1).norm(dim=1), h.flatten(1).norm(dim=1), rtol=1e-5)
    # the angle to h grows linearly with γ
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).double()
    theta = torch.arccos(cos(h, end))
    assert torch.allclose(torch.arccos(cos(h, normalized_slerp(h, hc, 0.25))), 0.25 * theta, atol=1e-3)


def test_slerp_per_channel_norms():
    g = torch.Generator().manual_seed(1)
    h, hc = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    mid = normalized_slerp(h, hc, 0.5, per_channel=True)
    assert torch.allclose(mid.flatten(2).norm(dim=-1), h.flatten(2).norm(dim=-1), rtol=1e-5)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angle between rows, 2·atan2(‖â − b̂‖, ‖â + b̂‖): well conditioned near 0 and near π (arccos is not)."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return 2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


def test_slerp_is_nan_safe():
    """Near-antipodal, antipodal, equal and zero content h: the result is finite, keeps ‖h‖, and lies at γ·θ from
    h on the great circle toward the content (θ the angle between them)."""
    g = torch.Generator().manual_seed(11)
    h = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    for eps in (1e-3, 1e-6, 0.0):
        other = -1.7 * h + eps * torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
        theta = _angle(h, other)
        for gamma in (0.1, 0.5, 0.9):
            out = normalized_slerp(h, other, gamma)
            assert torch.isfinite(out).all()
            assert torch.allclose(out.flatten(1).norm(dim=1), h.flatten(1).norm(dim=1), rtol=1e-9)
            assert torch.allclose(_angle(h, out), gamma * theta, atol=1e-7), (eps, gamma)
            assert torch.allclose(_angle(out, other), (1 - gamma) * theta, atol=1e-7), (eps, gamma)
    for same in (h.clone(), 2 * h):
        assert torch.allclose(normalized_slerp(h, same, 0.5), h, atol=1e-12)
    assert torch.allclose(normalized_slerp(h, torch.zeros_like(h), 0.0), h)
    assert torch.isfinite(normalized_slerp(h, torch.zeros_like(h), 0.5)).all()
    assert torch.allclose(slerp(h, h, 0.3), h, atol=1e-12)


def test_gamma_outside_unit_interval_is_refused():
    h = torch.randn(1, 4, 2, 2)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="γ must be in"):
            normalized_slerp(h, h, bad)


def test_mask_resizing_and_blend():
    h, h_new = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    m = mask_to_h_grid(mask, h.shape)
    assert m.shape == (1, 1, 4, 4)
    out = masked_blend(h, h_new, m)
    assert torch.equal(out[..., :2], torch.ones(1, 2, 4, 2)) and torch.equal(out[..., 2:], torch.zeros(1, 2, 4, 2))
    soft = mask_to_h_grid(torch.full((1, 1, 2, 2), 0.25), h.shape)
    assert torch.allclose(masked_blend(h, h_new, soft), torch.full_like(h, 0.25))
    with pytest.raises(ValueError, match="rank"):
        mask_to_h_grid(torch.zeros(1, 1, 1, 4, 4), h.shape)
    with pytest.raises(ValueError, match="one channel"):
        mask_to_h_grid(torch.zeros(1, 3, 4, 4), h.shape)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_to_h_grid(torch.full((4, 4), 2.0), h.shape)
    with pytest.raises(ValueError, match="batch"):
        mask_to_h_grid(torch.zeros(3, 4, 4), h.shape)


# --- style calibration -------------------------------------------------------------------------

def _calibration_case(same_std: bool):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    e = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    e_inj = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    a = 0.4
    if same_std:  # make P' have exactly P's std, so renormalisation is the identity
        p, p_inj = predicted_x0(x, e, a), predicted_x0(x, e_inj, a)
        dims = (1, 2, 3)
        pc = p_inj - p_inj.mean(dims, keepdim=True)
        p_inj = p_inj.mean(dims, keepdim=True) + pc * (p - p.mean(dims, keepdim=True)).std(dims, keepdim=True) / pc.std(dims, keepdim=True)
        e_inj = (x - math.sqrt(a) * p_inj) / math.sqrt(1 - a)
    return x, e, e_inj, a


def test_calibration_omega_one_moves_nothing():
    x, e, e_inj, a = _calibration_case(same_std=True)
    assert torch.allclose(calibrated_x_t(x, e, e_inj, a, omega=1.0), x, atol=1e-12)
    x, e, e_inj, a = _calibration_case(same_std=False)  # only the renormalisation is left
    dx = calibrated_x_t(x, e, e_inj, a, 1.0) - x
    dx0 = calibrated_x_t(x, e, e_inj, a, 0.0) - x
    assert dx.norm() < 0.5 * dx0.norm()


def test_calibration_omega_zero_is_full_shift_to_injected_prediction():
    x, e, e_inj, a = _calibration_case(same_std=True)
    x_cal = calibrated_x_t(x, e, e_inj, a, omega=0.0)
    want = x + math.sqrt(a) * (predicted_x0(x, e_inj, a) - predicted_x0(x, e, a))
    assert torch.allclose(x_cal, want, atol=1e-12)
    # halfway ω interpolates linearly between the two limits
    mid = calibrated_x_t(x, e, e_inj, a, omega=0.5)
    assert torch.allclose(mid, 0.5 * (x_cal + x), atol=1e-12)


def test_gamma_ramp_is_linear_in_t_between_t_max_and_t_edit():
    ramp = gamma_ramp(0.2, 1.0, t_edit=400, t_max=1000)
    assert ramp(1000) == pytest.approx(0.2) and ramp(400) == pytest.approx(1.0)
    assert ramp(700) == pytest.approx(0.6)  # halfway in t, halfway in γ
    assert ramp(250) == pytest.approx(1.0) and ramp(1200) == pytest.approx(0.2)  # held outside [t_edit, t_max]
    assert gamma_ramp(0.5, 0.5, 400) == 0.5 and not callable(gamma_ramp(0.5, 0.5, 400))
    with pytest.raises(ValueError, match="gamma_end must be a number in"):
        gamma_ramp(0.5, 1.5, 400)
