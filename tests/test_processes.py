"""Processes: inversion, editing, injection, calibration, boost, interpolation, directions, state files."""
import math

import pytest
import torch

from harness.tiny import GaussianData, tiny_pixel_unet
from hspace_core import (Cancelled, DiffusersUNet, Direction, EditSchedule, HTrajectory, capture,
                         direction_from_examples, edit, find_t_edit_t_boost, generate, inject, interpolate, invert,
                         run_reverse, step_pairs)


@pytest.fixture
def analytic():
    g = torch.Generator().manual_seed(5)
    return GaussianData(mu=torch.randn(1, 3, 8, 8, generator=g) * 0.3, s=0.5)


@pytest.fixture
def sample_images():
    g = torch.Generator().manual_seed(6)
    return (torch.randn(2, 3, 8, 8, generator=g) * 0.5).clamp(-1, 1).double()


def test_zero_edit_is_bit_identical(pixel_unet, images):
    model = DiffusersUNet(pixel_unet)
    sched = EditSchedule(num_steps=8, t_edit=300)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = generate(model, x_T, sched)
        assert torch.equal(edit(model, x_T, Direction("global", torch.randn(32, 8, 8)), 0.0, sched), base)
        assert torch.equal(edit(model, x_T, Direction("global", torch.zeros(32, 8, 8)), 1.0, sched), base)
        assert torch.equal(inject(model, x_T, capture(model, x_T, 8), 0.0, sched), base)


def test_edits_are_linear_in_strength_reverse_sign_and_add(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    sched = EditSchedule(num_steps=8, t_edit=400)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(1, 3, 16, 16, generator=g)
    d1, d2 = Direction("global", torch.randn(32, 8, 8, generator=g)), Direction("global", torch.randn(32, 8, 8, generator=g))
    with torch.no_grad():
        base = generate(model, x_T, sched)
        plus = edit(model, x_T, d1, 0.05, sched) - base
        minus = edit(model, x_T, d1, -0.05, sched) - base
        double = edit(model, x_T, d1, 0.1, sched) - base
        both = edit(model, x_T, [d1, d2], [0.05, 0.05], sched) - base
        only2 = edit(model, x_T, d2, 0.05, sched) - base
    cos = torch.nn.functional.cosine_similarity
    assert plus.abs().max() > 1e-3
    assert cos(plus.flatten(), minus.flatten(), dim=0) < -0.95
    assert (double.norm() / plus.norm()).item() == pytest.approx(2.0, rel=0.1)
    assert cos(both.flatten(), (plus + only2).flatten(), dim=0) > 0.95


def test_asymmetric_step_takes_P_t_from_the_edit_and_D_t_from_the_original(analytic):
    """Asyrp eq. 4 over [T, t_edit]: x_{t−1} = √ᾱ_{t−1}·P_t(ε(x_t | h̃_t)) + √(1−ᾱ_{t−1})·ε(x_t | h_t), plain DDIM
    below; the symmetric ablation takes both from ε(x_t | h̃_t).  The analytic model's edited ε is ε + 0.3 here, so
    each variant is written out by hand, and the one with P_t and D_t swapped is far from the process."""
    sched = EditSchedule(num_steps=8, t_edit=400)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ab = analytic.schedule.alpha_bar

    def by_hand(p_edited: bool, d_edited: bool) -> torch.Tensor:
        x = x_T
        for t, t_prev in step_pairs(sched.timesteps()):
            e = analytic.eps(x, t)
            e_edit = e + 0.3 if t >= sched.t_edit else e
            p = (x - math.sqrt(1 - ab(t)) * (e_edit if p_edited else e)) / math.sqrt(ab(t))
            x = math.sqrt(ab(t_prev)) * p + math.sqrt(1 - ab(t_prev)) * (e_edit if d_edited else e)
        return x

    shift = lambda h, t, b: h + 0.3
    asym = run_reverse(analytic, x_T, sched, edit=shift).x0
    sym = run_reverse(analytic, x_T, sched, edit=shift, asymmetric=False).x0
    assert torch.allclose(asym, by_hand(True, False), atol=1e-10, rtol=0)
    assert torch.allclose(sym, by_hand(True, True), atol=1e-10, rtol=0)
    swapped = by_hand(False, True)
    assert (swapped - asym).abs().min() > 0.1 and (sym - asym).abs().min() > 0.1


def test_boost_is_seeded_and_only_below_t_boost(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    boosted = EditSchedule(num_steps=8, t_edit=500, t_boost=300)
    no_boost = EditSchedule(num_steps=8, t_edit=500, t_boost=0)
    with torch.no_grad():
        a, b, c = (generate(model, x_T, boosted, seed=s) for s in (1, 1, 2))
        assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
        assert torch.equal(generate(model, x_T, no_boost, seed=1), generate(model, x_T, no_boost, seed=2))
    # the noise only enters after t_boost: trajectories agree until then
    with torch.no_grad():
        ha = run_reverse(model, x_T, boosted, seed=1, record_h=True).trajectory
        hc = run_reverse(model, x_T, boosted, seed=2, record_h=True).trajectory
    first_boost = next(i for i, t in enumerate(ha.timesteps) if t < 300)
    assert torch.equal(ha.h[: first_boost + 1], hc.h[: first_boost + 1])
    assert not torch.equal(ha.h[first_boost + 1], hc.h[first_boost + 1])


def test_global_rng_is_untouched(pixel_unet):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        generate(DiffusersUNet(pixel_unet), torch.zeros(1, 3, 16, 16), EditSchedule(num_steps=4, t_edit=500, t_boost=500), seed=9)
    assert torch.equal(torch.rand(3), expected)


def _style_and_content(pixel_unet, seed):
    """(model, a style x_T, a content x_T, the content's h trajectory, an 8-step schedule with t_edit = 300)."""
    model = DiffusersUNet(pixel_unet)
    g = torch.Generator().manual_seed(seed)
    style_T, content_T = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    with torch.no_grad():
        return model, style_T, content_T, capture(model, content_T, 8), EditSchedule(num_steps=8, t_edit=300)


def test_injection_moves_h_toward_content_and_mask_limits_it(pixel_unet):
    model, style_T, content_T, content, sched = _style_and_content(pixel_unet, 7)
    with torch.no_grad():
        style_rec = generate(model, style_T, sched)
        content_rec = generate(model, content_T, sched)
        dist = lambda x: (x - content_rec).norm().item()
        outs = {gm: inject(model, style_T, content, gm, sched) for gm in (0.3, 0.9)}
        masked_zero = inject(model, style_T, content, 0.9, sched, mask=torch.zeros(16, 16))
        half = torch.zeros(16, 16)
        half[:, :8] = 1
        masked_half = inject(model, style_T, content, 0.9, sched, mask=half)
    assert dist(outs[0.9]) < dist(outs[0.3]) < dist(style_rec)
    assert torch.equal(masked_zero, style_rec)
    assert 0 < (masked_half - style_rec).norm() < (outs[0.9] - style_rec).norm()


def test_calibration_limits_through_the_process(pixel_unet):
    model, style_T, _, content, sched = _style_and_content(pixel_unet, 8)
    with torch.no_grad():
        plain = generate(model, style_T, sched)
        injected = inject(model, style_T, content, 0.8, sched)
        omega1 = inject(model, style_T, content, 0.8, sched, omega=1.0)
        omega0 = inject(model, style_T, content, 0.8, sched, omega=0.0)
    # ω = 1: x'_t ≈ x_t, so the result stays near the style's reconstruction; ω = 0 carries the injection
    assert (omega1 - plain).norm() < 0.5 * (omega0 - plain).norm()
    assert (omega0 - plain).norm() > 0.3 * (injected - plain).norm()


@pytest.mark.parametrize("clip_x0", [None, 1.0])
def test_interpolation_end_frames_reconstruct(pixel_unet, clip_x0):
    """The end frames are the plain reconstructions of their x_T, with clip_x0 too (it is for the middle frames:
    clipping an end's x0 moved it 35–39/255 from its input in the sample workflow)."""
    model = DiffusersUNet(pixel_unet)
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    sched = EditSchedule(num_steps=6, t_edit=200, clip_x0=clip_x0)
    plain = EditSchedule(num_steps=6, t_edit=200)
    with torch.no_grad():
        frames = interpolate(model, a, b, 4, sched)
        ra, rb = generate(model, a, plain), generate(model, b, plain)
        unclipped = interpolate(model, a, b, 4, plain) if clip_x0 else frames
    assert frames.shape == (4, 3, 16, 16)
    assert torch.equal(frames[0], ra[0]) and torch.equal(frames[-1], rb[0])
    d = [(f - ra[0]).norm().item() for f in frames]
    assert d[0] < d[1] < d[2] < d[3]
    if clip_x0:  # the middle frames are clipped (the random tiny U-Net's x0 leaves [−1, 1] by far)
        assert all((frames[k] - unclipped[k]).abs().max() > 1e-2 for k in (1, 2))


def test_direction_from_examples_is_mean_difference():
    h = torch.randn(3, 4, 2, 2, 2)
    pos = HTrajectory((900, 500, 0), h[:, :2], fingerprint="a/b")
    neg = HTrajectory((900, 500, 0), h[:, 2:], fingerprint="a/b")
    d = direction_from_examples(pos, neg)
    assert torch.allclose(d.delta, h[:, :2].mean(1) - h[:, 2:].mean(1))
    assert torch.allclose(d.global_mean().delta, d.delta.mean(0))
    assert torch.allclose(d.at(torch.zeros(1, 2, 2, 2), 500)[0], d.delta[1])
    # off its grid a per-timestep direction is interpolated linearly in t (here 480 is 4 % of the way to 0)
    assert torch.allclose(d.at(torch.zeros(1, 2, 2, 2), 480)[0], torch.lerp(d.delta[1], d.delta[2], 0.04))
    with pytest.raises(ValueError, match="positive was captured at 3 steps and negative at 3 .* same steps"):
        direction_from_examples(pos, HTrajectory((900, 400, 0), h[:, 2:]))
    with pytest.raises(ValueError, match="negative holds h only for t ≥ 500 .*same keep_h_from_t"):
        direction_from_examples(pos, HTrajectory((900, 500), h[:2, 2:]))
    with pytest.raises(ValueError, match="the same h .*images that have the attribute"):
        direction_from_examples(pos, HTrajectory((900, 500, 0), h[:, :2].clone()))


def test_save_load_round_trip_and_fingerprint_check(tmp_path, pixel_unet):
    model = DiffusersUNet(pixel_unet)
    with torch.no_grad():
        traj = capture(model, torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), 5)
    traj.save(tmp_path / "t.safetensors")
    back = HTrajectory.load(str(tmp_path / "t.safetensors"), expect_fingerprint=model.fingerprint)
    assert torch.equal(back.h, traj.h) and back.timesteps == traj.timesteps and back.fingerprint == traj.fingerprint
    other = DiffusersUNet(tiny_pixel_unet(seed=1))
    with pytest.raises(ValueError, match="different weights"):
        HTrajectory.load(str(tmp_path / "t.safetensors"), expect_fingerprint=other.fingerprint)
    d = Direction("per_timestep", torch.randn(2, 32, 8, 8), (900, 100), fingerprint=model.fingerprint, name="x")
    d.save(str(tmp_path / "d.safetensors"))
    d2 = Direction.load(str(tmp_path / "d.safetensors"))
    assert torch.equal(d2.delta, d.delta) and d2.timesteps == d.timesteps and d2.name == "x"
    with pytest.raises(ValueError, match="holds a 'direction'"):
        HTrajectory.load(str(tmp_path / "d.safetensors"))


def test_cancel_stops_and_leaves_no_hooks(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    seen = []
    with pytest.raises(Cancelled):
        edit(model, torch.zeros(1, 3, 16, 16), Direction("global", torch.ones(32, 8, 8)), 1.0,
             EditSchedule(num_steps=10, t_edit=0), progress=lambda d, n: seen.append(d), should_stop=lambda: len(seen) >= 3)
    assert seen == [1, 2, 3]
    for m in pixel_unet.modules():
        assert not m._forward_hooks and "forward" not in m.__dict__


def test_bad_inputs_say_what_to_change(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    x = torch.zeros(1, 3, 16, 16)
    traj = capture(model, x, 4)
    with pytest.raises(ValueError, match="NaN"):
        invert(model, torch.full((1, 3, 16, 16), float("nan")), 4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        invert(model, torch.zeros(3, 16, 16), 4)
    with pytest.raises(ValueError, match="same size"):
        inject(model, torch.zeros(1, 3, 32, 32), traj, 0.5, EditSchedule(num_steps=4))
    with pytest.raises(ValueError, match="γ must be in"):
        inject(model, x, traj, 1.2, EditSchedule(num_steps=4))
    with pytest.raises(ValueError, match="rank"):
        inject(model, x, traj, 0.5, EditSchedule(num_steps=4), mask=torch.zeros(1, 1, 1, 16, 16))
    with pytest.raises(ValueError, match="made for h of shape"):
        edit(model, x, Direction("global", torch.ones(64, 8, 8)), 1.0, EditSchedule(num_steps=4))
    with pytest.raises(ValueError, match="different weights"):
        inject(DiffusersUNet(tiny_pixel_unet(seed=3)), x, traj, 0.5, EditSchedule(num_steps=4))


def test_auto_schedule_finds_threshold_crossings(analytic, sample_images):
    mse = lambda a, b: (a - b).pow(2).flatten(1).mean(1)
    result = find_t_edit_t_boost(analytic, sample_images, distance=mse, edit_threshold=0.1, boost_threshold=0.5,
                                 num_probes=21)
    curve_p, curve_x = result.distance_to_prediction, result.distance_to_noisy
    i = result.timesteps.index(result.t_edit)
    assert curve_p[i] >= 0.1 and all(d < 0.1 for d in curve_p[:i])
    j = next(k for k, d in enumerate(curve_x) if d >= 0.5)  # first crossing of LPIPS(x, x_t) ≥ threshold
    assert result.t_boost == min(result.timesteps[j], result.t_edit)
    half = find_t_edit_t_boost(analytic, sample_images, distance=mse, edit_threshold=0.1, boost_threshold=0.5,
                               num_probes=21, text_cosine=0.5)
    assert half.edit_threshold == pytest.approx(0.05) and half.t_edit <= result.t_edit


def test_reconstruction_source_is_the_reconstruction_path(pixel_unet, images):
    model = DiffusersUNet(pixel_unet)
    with torch.no_grad():
        inv = invert(model, images, 6, h_source="reconstruction")
        along_path = capture(model, inv.x_T, 6)
    assert torch.equal(inv.trajectory.h, along_path.h)


def test_clip_x0_keeps_predictions_in_range_and_is_otherwise_the_same_process():
    from harness.tiny import GaussianData
    from hspace_core.ddim import clipped_eps, predicted_x0

    data = GaussianData(torch.full((1, 3, 8, 8), 3.0), s=0.1)  # data far outside [-1, 1]
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = generate(data, x_T, EditSchedule(10, t_edit=0))
    clipped = generate(data, x_T, EditSchedule(10, t_edit=0, clip_x0=1.0))
    assert plain.min() > 2.0 and clipped.abs().max() <= 1.0 + 1e-5
    loose = generate(data, x_T, EditSchedule(10, t_edit=0, clip_x0=1e6))
    assert torch.allclose(loose, plain, atol=1e-4)
    eps = torch.randn(2, 3, 8, 8)
    p = predicted_x0(x_T, clipped_eps(x_T, eps, 0.3, 0.5), 0.3)
    assert torch.allclose(p, predicted_x0(x_T, eps, 0.3).clamp(-0.5, 0.5), atol=1e-5)
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        EditSchedule(clip_x0=0.0)
