"""One code path (issue 25): the pack's reverse process ``nodes.comfy.samplers.run_h_edit`` (the SAMPLERs' σ-space
loop) gives the library's ᾱ-space loop (``processes.run_reverse``) on the DDIM grid up to float32 round-off
(``ROUNDING``, measured across CPU kernels; float64: 1e-11): injection stride, style calibration, a mask, the quality
boost, a γ ramp, clip_x0 on a pixel U-Net, the h it records and a run that stops at a capture's t_min; in-process,
on the tiny SD U-Net under CFG and on the bundled pixel model."""
import dataclasses
import os

import pytest
import torch

from harness.inprocess import latent_out, run_in_comfy
from hspace_core import Denoiser, EditSchedule, HStorage, content_injection, gamma_ramp, run_reverse
from hspace_core.sampling import clip_denoised, sample_h_edit, strided
from hspace_core.sigmas import ve_scale

from test_comfy_one_call import ROUNDING, SHIFT, conditioning, relative, tiny_sd
from test_denoiser_adapter import SIGMAS, TinyEDM
from test_sampling import _sigma_denoiser

DEMO = os.path.join(os.path.dirname(__file__), "..", "models", "hspace-shapes-ddpm")


@pytest.fixture(scope="module")
def samplers(pack):
    import hspace_pack.nodes.comfy.samplers as samplers

    return samplers


def noise(seed, channels=4):
    return torch.randn(1, channels, 16, 16, generator=torch.Generator().manual_seed(seed))


def on_sd(x, body, cfg=7.5):
    positive, negative = conditioning()
    with torch.inference_mode():
        return run_in_comfy(tiny_sd(), x, body, positive=positive, negative=negative, cfg=cfg, seed=7)


def on_pixel(pack, x, body):
    """``body`` on the bundled pixel model (a trained one: a random tiny U-Net's x0 reaches ±600 from noise, so its
    clipped images would compare float32 round-off of that size)."""
    _, pixel_model = pack
    patcher = pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(DEMO))
    with torch.inference_mode():
        return run_in_comfy(patcher, x, body)


def recorder():
    seen = []
    return seen, lambda t, h: seen.append((t, h))


def same_trajectory(seen, trajectory, tolerance=ROUNDING):
    assert [t for t, _ in seen] == list(trajectory.timesteps)
    for (t, h), kept in zip(seen, trajectory.h):
        assert relative(h.float().cpu(), kept.float()) < tolerance, t


MASK = torch.zeros(1, 16, 16)
MASK[:, :, :9] = 1.0


@pytest.mark.parametrize("stride, omega", [(2, 0.3), (1, None), (3, 0.0)])
def test_injection_through_the_sampler_loop_is_the_library_loop(pack, samplers, stride, omega):
    """Content injection with a γ ramp, a mask and the quality boost, under cfg 7.5; the h recorded along it is the
    library's trajectory (the original h, one per step, style calibration's second prediction not among them)."""
    schedule = EditSchedule(8, t_edit=400, t_boost=200, eta_boost=1.0)

    def body(m, x):
        content = run_reverse(m, noise(9), EditSchedule.reconstruction(8), record_h=True).trajectory
        hook = content_injection(content, gamma_ramp(0.2, 0.9, 400), mask=MASK)
        kw = dict(edit_every=stride, omega=omega, seed=7)
        today = run_reverse(m, x, schedule, edit=hook, record_h=True, **kw)
        seen, record = recorder()
        native = samplers.run_h_edit(m, x, hook, schedule, record=record, **kw)
        every = samplers.run_h_edit(m, x, hook, schedule, omega=omega, seed=7)
        return today, native, seen, every, samplers.run_h_edit(m, x, None, schedule, seed=7)

    today, native, seen, every, plain = on_sd(noise(4), body)
    assert relative(native, today.x0) < ROUNDING, relative(native, today.x0)  # calibration's is the largest, 2.7e-5
    same_trajectory(seen, today.trajectory)
    assert relative(plain, today.x0) > 1e-3  # the injection shows, so the agreement is about it
    if stride > 1:
        assert relative(every, native) > 1e-4  # and the stride does


def test_a_run_that_stops_at_t_min_is_the_librarys_h_only_run(pack, samplers):
    schedule = EditSchedule.reconstruction(8)

    def body(m, x):
        whole = run_reverse(m, x, schedule, record_h=True)
        part = run_reverse(m, x, schedule, record_h=True, h_storage=HStorage(t_min=500), h_only=True)
        seen, record = recorder()
        native = samplers.run_h_edit(m, x, None, schedule, record=record)
        return whole, part, native, seen

    whole, part, native, seen = on_sd(noise(4), body, cfg=1.0)
    assert relative(native, whole.x0) < ROUNDING
    same_trajectory(seen, whole.trajectory)
    assert part.trajectory.timesteps == tuple(t for t in schedule.timesteps() if t >= 500) != ()
    # the x_t reached at the first step below t_min (VP): the whole run's prefix, h as the whole run's there
    assert relative(part.x0, whole.x0) > 1e-2
    n = len(part.trajectory.timesteps)
    assert relative(part.trajectory.h, whole.trajectory.h[:n]) < ROUNDING


@pytest.mark.parametrize("omega", [None, 0.5])
def test_clip_x0_on_a_pixel_unet_is_the_librarys_clipped_eps(pack, samplers, omega):
    schedule = EditSchedule(8, t_edit=200, clip_x0=1.0)
    unclipped = EditSchedule(8, t_edit=200)

    def body(m, x):
        today = run_reverse(m, x, schedule, edit=SHIFT, omega=omega).x0
        native = samplers.run_h_edit(m, x, SHIFT, schedule, omega=omega)
        return today, native, samplers.run_h_edit(m, x, SHIFT, unclipped, omega=omega)

    today, native, free = on_pixel(pack, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)), body)
    assert relative(native, today) < ROUNDING, relative(native, today)
    assert relative(free, today) > 1e-3  # clipping acts here


@torch.no_grad()
@pytest.mark.parametrize("omega, clip", [(0.3, None), (1.0, None), (None, 1.0), (0.5, 1.0)])
def test_the_sigma_loop_is_the_librarys_in_float64(images, omega, clip):
    """sample_h_edit's style calibration (no VP round trip) and clipped x0 (``clip_denoised``) against run_reverse's
    ``ddim.calibrated_x_t`` and ``ddim.clipped_eps``, with a stride and the boost, on a float64 denoiser: the same
    numbers up to float64 round-off."""
    model = Denoiser(TinyEDM().double().eval(), SIGMAS, "F.mid_block")
    schedule = EditSchedule(10, t_edit=300, t_boost=200, eta_boost=1.0, clip_x0=clip)
    x_T = torch.randn(images.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    today = run_reverse(model, x_T, schedule, edit=SHIFT, seed=5, omega=omega, edit_every=2).x0
    grid = schedule.timesteps()
    sigmas = [float(SIGMAS[t]) for t in grid] + [0.0]
    denoise = _sigma_denoiser(model, grid)

    def clipped(x, i, edit):
        return tuple(clip_denoised(d, clip) for d in denoise(x, i, SHIFT if edit else None))

    native = sample_h_edit(clipped, x_T * ve_scale(sigmas[0]), sigmas, strided([t >= 300 for t in grid], 2),
                           etas=[schedule.eta_at(t) for t in grid], seed=5, omega=omega)
    assert relative(native, today) < 1e-11, relative(native, today)
    for setting in ({"omega": None} if omega else {}), ({"schedule": dataclasses.replace(schedule, clip_x0=None)}
                                                         if clip else {}):
        if setting:  # calibration and clipping act here
            kw = dict(dict(schedule=schedule, omega=omega), **setting)
            assert relative(today, run_reverse(model, x_T, edit=SHIFT, seed=5, edit_every=2, **kw).x0) > 1e-3


# --- the nodes: thin shells over run_h_edit, giving the library's loop (inject, interpolate, run_reverse) ---

@pytest.fixture(scope="module")
def nodes(pack):
    import hspace_pack.nodes as nodes

    return nodes


def demo_model(pack):
    _, pixel_model = pack
    return pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(DEMO))


def models(pack, kind):
    """(MODEL, a noise maker of its latents' shape, cfg, positive, negative): the tiny SD U-Net under CFG, or the
    bundled pixel model."""
    if kind == "sd":
        positive, negative = conditioning()
        return tiny_sd(), lambda seed: noise(seed), 7.5, positive, negative
    return (demo_model(pack), lambda seed: torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),
            1.0, None, None)


def library(pack, model, samples, body, cfg, positive, negative, site="middle"):
    """``body(m, x)`` of the library inside ComfyUI (what the nodes ran before), as a LATENT's samples."""
    with torch.inference_mode():
        out = run_in_comfy(model, samples, body, positive=positive, negative=negative, cfg=cfg, seed=5,
                           site=site)
    return out if not torch.is_tensor(out) else latent_out(model, out)["samples"]


def captured(nodes, model, samples, cfg, positive, negative, steps=8, keep_h_from_t=0):
    with torch.inference_mode():
        return nodes.inversion.Capture.execute(model=model, x_T={"samples": samples}, steps=steps, cfg=cfg,
                                               edit_branches="cond", keep_h_from_t=keep_h_from_t, positive=positive,
                                               negative=negative).result


@pytest.mark.parametrize("kind", ["sd", "pixel"])
def test_capture_is_the_librarys_recorded_reverse_process(pack, nodes, kind):
    from hspace_core import HStorage as Storage

    model, make, cfg, positive, negative = models(pack, kind)
    x_T = make(4)
    trajectory, latent = captured(nodes, model, x_T, cfg, positive, negative, keep_h_from_t=300)
    today = library(pack, model, x_T, lambda m, x: run_reverse(m, x, EditSchedule.reconstruction(8), record_h=True,
                                                                  h_storage=Storage("model", "cpu", 300)),
                    cfg, positive, negative)
    assert trajectory.timesteps == today.trajectory.timesteps and min(trajectory.timesteps) >= 300
    assert trajectory.branches == today.trajectory.branches and trajectory.fingerprint == today.trajectory.fingerprint
    assert relative(trajectory.h, today.trajectory.h) < ROUNDING
    want = latent_out(model, today.x0)["samples"]
    assert relative(latent["samples"], want) < ROUNDING, relative(latent["samples"], want)


def inject_node(nodes, model, style, content, cfg, positive, negative, **kw):
    settings = dict(gamma=0.3, gamma_end=0.9, stride=2, steps=8, t_edit=400, mode="slerp", per_channel=False, seed=1,
                    edit_branches="cond", mask=MASK_32 if style.shape[-1] == 32 else MASK)
    settings.update(kw)
    with torch.inference_mode():
        return nodes.injection.SlerpContentInject.execute(model=model, style_x_T={"samples": style}, content=content,
                                                          cfg=cfg, positive=positive, negative=negative,
                                                          **settings).result[0]["samples"]


MASK_32 = torch.nn.functional.interpolate(MASK[None], size=(32, 32))[0]


@pytest.mark.parametrize("kind, calibrated", [("sd", True), ("sd", False), ("pixel", True)])
def test_slerp_content_inject_is_the_librarys_inject(pack, nodes, kind, calibrated):
    """Stride 2, a mask, the quality boost (its seed), a γ ramp and a γ sweep; with and without style calibration."""
    from hspace_core import BoostSettings, StyleCalibration, inject

    model, make, cfg, positive, negative = models(pack, kind)
    style = make(4)
    content, _ = captured(nodes, model, make(9), cfg, positive, negative)
    boost, calibration = BoostSettings(200, 1.0, 5), StyleCalibration(0.3) if calibrated else None
    got = inject_node(nodes, model, style, content, cfg, positive, negative, gamma_sweep="0.2, 0.6", boost=boost,
                      calibration=calibration)
    schedule = EditSchedule(8, t_edit=400, t_boost=200, eta_boost=1.0)
    mask = MASK_32 if kind == "pixel" else MASK

    def today(m, x):
        return torch.cat([inject(m, x, content, gamma_ramp(g, 0.9, 400), schedule, stride=2, mask=mask,
                                 omega=0.3 if calibrated else None, seed=5) for g in (0.2, 0.6)])

    want = library(pack, model, style, today, cfg, positive, negative)
    assert relative(got, want) < ROUNDING, relative(got, want)
    plain = library(pack, model, style, lambda m, x: run_reverse(m, x, schedule, seed=5).x0, cfg, positive, negative)
    assert relative(got[:1], plain) > 1e-3  # the injection shows


@pytest.mark.parametrize("kind", ["sd", "pixel"])
def test_interpolate_is_the_librarys_interpolate(pack, nodes, kind):
    """Three frames; on the pixel model with clip_x0 (the frames' x0 clipped to [−1, 1])."""
    from hspace_core import interpolate

    model, make, cfg, positive, negative = models(pack, kind)
    a, b = make(4), make(9)
    clip = kind == "pixel"
    with torch.inference_mode():
        got = nodes.injection.Interpolate.execute(model=model, x_T_a={"samples": a}, x_T_b={"samples": b}, frames=3,
                                                  steps=8, t_edit=300, cfg=cfg, edit_branches="cond", clip_x0=clip,
                                                  positive=positive, negative=negative).result[0]["samples"]
    schedule = EditSchedule(8, t_edit=300, clip_x0=1.0 if clip else None)
    x_b = nodes.layer.latent_x(model, {"samples": b})  # model space, as the node reads it
    want = library(pack, model, a, lambda m, x: interpolate(m, x, x_b, 3, schedule), cfg, positive, negative)
    assert relative(got, want) < ROUNDING, relative(got, want)
    assert relative(got[1:2], got[:1]) > 1e-2 and relative(got[1:2], got[2:]) > 1e-2  # a middle frame of its own


def grid_percent(model, t):
    """The end_percent whose σ is that of grid timestep ``t`` (the percent window equal to t_edit = t)."""
    ms = model.get_model_object("model_sampling")
    return next(p / 1000 for p in range(1001) if float(ms.percent_to_sigma(p / 1000)) <= float(ms.sigmas[t]))


def test_a_percent_window_is_the_equal_t_edit_window_and_a_narrower_one_edits_fewer_steps(pack, nodes, monkeypatch):
    """Slerp Content Inject and Interpolate: with t_edit a grid timestep, the percent window ending there gives the same
    image bit for bit (γ ramp included: it ends at the lowest edited t); start_percent 0.3 leaves out the steps
    above σ(0.3), which are then not edited."""
    from test_windows import edited_steps

    model, make, cfg, positive, negative = models(pack, "sd")
    style = make(4)
    content, _ = captured(nodes, model, make(9), cfg, positive, negative)
    grid = EditSchedule(8).timesteps()
    t_edit = min(t for t in grid if t >= 400)
    end = grid_percent(model, t_edit)
    by_t = inject_node(nodes, model, style, content, cfg, positive, negative, t_edit=t_edit, stride=1)
    by_percent = inject_node(nodes, model, style, content, cfg, positive, negative, t_edit=t_edit, stride=1,
                             window="percent", start_percent=0.0, end_percent=end)
    assert torch.equal(by_t, by_percent)
    with torch.inference_mode():
        interpolated = [nodes.injection.Interpolate.execute(
            model=model, x_T_a={"samples": style}, x_T_b={"samples": make(9)}, frames=3, steps=8, t_edit=t_edit,
            cfg=cfg, edit_branches="cond", positive=positive, negative=negative, **window).result[0]["samples"]
            for window in ({}, dict(window="percent", start_percent=0.0, end_percent=end))]
    assert torch.equal(*interpolated)

    seen = edited_steps(monkeypatch, pack)
    narrower = inject_node(nodes, model, style, content, cfg, positive, negative, t_edit=t_edit, stride=1,
                           window="percent", start_percent=0.3, end_percent=end)
    ms = model.get_model_object("model_sampling")
    inside = [t for t in grid if float(ms.percent_to_sigma(end)) <= float(ms.sigmas[t])
              <= float(ms.percent_to_sigma(0.3))]
    assert [t for t, edited in seen if edited] == inside and 0 < len(inside) < len([t for t in grid if t >= t_edit])
    assert relative(narrower, by_t) > 1e-4
