"""The device and dtype rule (docs/precision.md): tensors follow their inputs' device and dtype, no float64 off the
CPU, and the half-precision lane: the tiny U-Nets in float16 and bfloat16 on the CPU against a float32 run."""
import functools

import pytest
import torch

from device_checks import Accelerator, meta
from harness.tiny import tiny_pixel_unet
from harness.tiny import GaussianData
from hspace_core import hmath
from hspace_core import (DiffusersUNet, Direction, EditSchedule, HStorage, HTrajectory, ImplicitDirectionNet,
                         ReconstructionReport, TimeEmbedding, capture, edit, inject, interpolate, invert,
                         jacobian_directions, normalized_slerp, pca_directions, probe_direction, slerp)

HALF = (torch.float16, torch.bfloat16)


def _meta_trajectory(images: int, steps: int = 3, shape=(8, 2, 2)) -> HTrajectory:
    return HTrajectory(tuple(range(900, 900 - 100 * steps, -100)), torch.empty(steps, images, *shape, device="meta"),
                       device="meta")


# ------------------------------------------------------------------------------------------- the five defects

def test_an_implicit_direction_runs_on_the_device_and_dtype_of_h():
    torch.manual_seed(0)
    net = ImplicitDirectionNet(32, TimeEmbedding(16, 32, flip_sin_to_cos=True, freq_shift=0), zero_init=False)
    with Accelerator() as acc:
        out = net(torch.empty(2, 32, 4, 4, device="meta"), 500)
    assert out.device.type == "meta" and out.shape == (2, 32, 4, 4)
    assert not acc.host_copies and not acc.syncs
    h = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(1))
    want = net(h, 500)
    for dtype in HALF:
        got = net(h.to(dtype), 500)
        assert got.dtype == dtype
        assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


def test_the_jacobian_start_block_is_made_on_the_models_device():
    model = DiffusersUNet(meta(tiny_pixel_unet()))
    with Accelerator() as acc:
        found = jacobian_directions(model, torch.empty(1, 3, 16, 16, device="meta"), 500, 2, iterations=2)
    assert len(found) == 2 and found[0].h_shape == (32, 8, 8)
    assert not acc.float64, acc.float64[:3]


@pytest.mark.parametrize("normalisation", ["none", "standardise", "position"])
def test_pca_runs_on_a_trajectory_kept_on_the_models_device(normalisation):
    with Accelerator(int_value=1000) as acc:  # the rank read from the singular values
        found = pca_directions(_meta_trajectory(4), 2, normalisation=normalisation)
    assert [d.h_shape for d in found] == [(8, 2, 2)] * 2
    assert not acc.float64, acc.float64[:3]


@pytest.mark.parametrize("method", ["logistic", "svm", "mean_difference"])
def test_a_probe_runs_on_trajectories_kept_on_the_models_device(method):
    with Accelerator() as acc:
        found = probe_direction(_meta_trajectory(3), _meta_trajectory(2), method, form="global")
    assert found.h_shape == (8, 2, 2)
    assert not acc.float64, acc.float64[:3]


def test_slerp_makes_no_float64_off_the_cpu_and_never_waits_for_the_device():
    a, b = torch.empty(2, 8, 4, 4, device="meta"), torch.empty(2, 8, 4, 4, device="meta")
    with Accelerator() as acc:
        out = slerp(a, b, 0.3)
        normalized_slerp(a, b, 0.7)
        slerp(a, b, torch.tensor([0.2, 0.8]))
    assert out.device.type == "meta" and out.dtype == torch.float32
    assert not acc.float64, acc.float64[:3]
    assert not acc.syncs


def test_the_reconstruction_report_makes_no_float64_off_the_cpu():
    with Accelerator() as acc:
        ReconstructionReport.compare(torch.empty(2, 3, 8, 8, device="meta"), torch.empty(2, 3, 8, 8, device="meta"))
    assert not acc.float64, acc.float64[:3]


def _accelerate_style_hook(module: torch.nn.Module, calls: list):
    """What accelerate's ``add_hook_to_module`` (and diffusers' hook registry) do: an instance ``forward`` that wraps
    the previous one."""
    previous = module.forward

    def new_forward(*args, **kwargs):
        calls.append(type(module).__name__)
        return previous(*args, **kwargs)

    module.forward = functools.update_wrapper(functools.partial(new_forward), previous)
    return module.forward


@pytest.mark.parametrize("site,reuse", [("middle", True), ("middle", False), ("up1", True), ("up1", False)])
def test_the_adapter_keeps_a_forward_installed_before_it(site, reuse):
    unet = tiny_pixel_unet()
    model = DiffusersUNet(unet, site=site, reuse_encoder=reuse)
    block = unet.mid_block if site == "middle" else unet.up_blocks[0]
    calls_block, calls_down = [], []
    hooks = {block: _accelerate_style_hook(block, calls_block),
             unet.down_blocks[0]: _accelerate_style_hook(unet.down_blocks[0], calls_down)}
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.predict(x, 500, edit=lambda h, t, b: 1.5 * h)
        for module, hook in hooks.items():
            assert module.__dict__.get("forward") is hook, f"{type(module).__name__}'s own forward was removed"
        before = len(calls_block)
        model.predict(x, 500)
    assert len(calls_block) == before + 1 and calls_down


# ------------------------------------------------------------------------------------ the half-precision lane

def _damped_pixel_unet(dtype: torch.dtype) -> torch.nn.Module:
    """The tiny pixel U-Net with its output layer scaled by 0.1: random weights make a chaotic sampler, and this keeps
    a 4-step process from amplifying rounding by orders of magnitude, so float32 and half runs stay comparable."""
    unet = tiny_pixel_unet()
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    return unet.to(dtype)


def _lane(dtype: torch.dtype) -> dict:
    """invert (with fixed-point refinement), capture, edit, inject (calibrated) and interpolate at 4 steps."""
    model = DiffusersUNet(_damped_pixel_unet(dtype))
    x0 = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)
    sched = EditSchedule(num_steps=4, t_edit=400)
    direction = Direction("global", torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        inv = invert(model, x0, 4, refine_iters=1, h_storage=HStorage(dtype="model"))
        content = capture(model, inv.x_T[:1], 4)
        out = {"x_T": inv.x_T, "reconstruction": inv.reconstruction, "h": content.h,
               "edit": edit(model, inv.x_T, direction, 1.0, sched),
               "inject": inject(model, inv.x_T[1:], content, 0.6, sched, omega=0.5),
               "interpolate": interpolate(model, inv.x_T[:1], inv.x_T[1:], 2, sched)}
    out["pca"] = pca_directions(inv.trajectory, 1)[0].delta
    out["jacobian"] = jacobian_directions(model, inv.x_T[:1], 500, 1, iterations=2)[0].delta
    out["probe"] = probe_direction(content, capture(model, inv.x_T[1:], 4), "mean_difference", form="global").delta
    return out


@pytest.fixture(scope="module")
def float32_lane():
    return _lane(torch.float32)


# Relative L2 error against the float32 run, measured (docs/precision.md: at most 0.020 in float16, 0.135 in
# bfloat16) with about 2× headroom; float16 keeps 11 significant bits, bfloat16 8.
LANE_MARGIN = {torch.float16: 0.05, torch.bfloat16: 0.3}
DIRECTION_COSINE = {torch.float16: 0.995, torch.bfloat16: 0.9}


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_the_processes_run_in_half_precision_close_to_float32(dtype, float32_lane):
    got = _lane(dtype)
    for name, want in float32_lane.items():
        value = got[name]
        assert torch.isfinite(value).all(), name
        if name in ("pca", "jacobian", "probe"):  # directions: compare their orientation
            cos = float(torch.nn.functional.cosine_similarity(value.flatten(), want.flatten(), dim=0))
            if name == "jacobian":  # a singular vector's sign is a convention (fix_signs) that bfloat16 can tip
                cos = abs(cos)
            print(f"{dtype} {name}: cosine {cos:.4f}")
            assert cos > DIRECTION_COSINE[dtype], (name, cos)
            continue
        assert name == "h" or value.dtype == dtype, name  # what the processes return keeps the input's dtype
        rel = float((value.float() - want.float()).norm() / want.float().norm())
        print(f"{dtype} {name}: relative error {rel:.4f}")
        assert rel < LANE_MARGIN[dtype], (name, rel)


def _half_ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half the spacing of ``dtype`` at |x|: the error of a correctly rounded result."""
    return torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(x.abs().clamp_min(torch.finfo(dtype).tiny))) / 2


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_slerp_of_half_h_is_correctly_rounded(dtype):
    """Normalised Slerp of h arriving in half precision: norms, angle and weights in float32 or wider, one rounding
    at the end.  (Rounding the rescaled content to half before the Slerp, as before, doubled the error in float16
    and tripled it in bfloat16.)"""
    g = torch.Generator().manual_seed(1)
    h, content = (torch.randn(2, 64, 8, 8, generator=g).to(dtype) for _ in range(2))
    got = normalized_slerp(h, content, 0.4)
    exact = normalized_slerp(h.double(), content.double(), 0.4)
    assert got.dtype == dtype
    assert ((got.double() - exact).abs() <= 1.01 * _half_ulp(exact, dtype)).all()


def test_slerp_in_float32_as_on_a_gpu_is_within_float32_rounding(monkeypatch):
    """Off the CPU the Slerp runs in float32: on the CPU with float32 forced, it stays within a few float32 ulps of
    the float64 result, nearly antipodal and nearly parallel pairs included."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 64, 8, 8, generator=g)
    b = torch.stack([torch.randn(64, 8, 8, generator=g), -a[1] + 0.02 * torch.randn(64, 8, 8, generator=g),
                     a[2] + 1e-5 * torch.randn(64, 8, 8, generator=g),
                     torch.randn(64, 8, 8, generator=g)])
    exact = slerp(a.double(), b.double(), 0.3)
    monkeypatch.setattr(hmath, "wide_dtype", lambda device: torch.float32)
    got = slerp(a, b, 0.3)
    assert (got.double() - exact).abs().max() < 1e-5 * exact.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=["float32", "float16", "bfloat16"])
def test_the_refined_inversion_of_a_half_image_is_exact_to_its_precision(dtype):
    """Fixed-point refinement (8 iterations, exact ε of Gaussian data) solves the implicit step in float32 and casts x_T
    back: the round trip errs by the rounding of x_T alone (measured: 1.3e-6 in float32, 4.9e-4 in float16, 3.9e-3 in
    bfloat16), and x_T matches a float64 inversion to x_T's own resolution."""
    mu = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.3
    model = GaussianData(mu=mu, s=0.5)
    x0 = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)) * 0.5).clamp(-1, 1).to(dtype)
    inv = invert(model, x0, 50, convention="diffusers", refine_iters=8)
    exact = invert(model, x0.double(), 50, convention="diffusers", refine_iters=8)
    assert inv.x_T.dtype == dtype and inv.reconstruction.dtype == dtype
    # x_T's resolution in its dtype, or 50 float32 steps' accumulated rounding (measured: 2.3e-6)
    resolution = max(torch.finfo(dtype).eps, 8 * torch.finfo(torch.float32).eps) * float(exact.x_T.abs().max())
    assert float((inv.x_T.double() - exact.x_T).abs().max()) <= resolution
    assert inv.report.max_abs_error <= max(4 * torch.finfo(dtype).eps, 1e-5)


def test_the_gpu_benchmark_runs_in_its_dry_run():
    from benchmarks import gpu

    text = gpu.main(["--dry-run"])
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| SD")]
    assert len(rows) == 8 and {r[0].strip() for r in rows} == {"SD1.5 (dry run)", "SDXL (dry run)"}
    assert all(float(r[2]) > 0 for r in rows)
    assert [r[1].strip() for r in rows[:4]] == ["plain step", "edited step (CFG, cond edited)", "calibrated step",
                                                "invert + edit, 2 steps"]
