"""How h trajectories are kept: float16 or float32, only t ≥ t_min, and what injection reads of them."""
import os

import pytest
import torch

from harness.tiny import tiny_pixel_unet
from hspace_core import (DiffusersUNet, EditSchedule, HStorage, HTrajectory, capture, inject, invert,
                         schedule_from_betas, betas_linear)

STEPS, T_EDIT = 8, 500


@pytest.fixture(scope="module")
def model():
    return DiffusersUNet(tiny_pixel_unet(), schedule_from_betas(betas_linear(1000)))


@pytest.fixture(scope="module")
def x_T(model):
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)


def test_float16_halves_the_bytes_and_survives_a_file(tmp_path):
    h = torch.randn(3, 2, 8, 2, 2)
    full = HTrajectory((999, 500, 0), h, ("uncond", "cond"))
    half = HTrajectory((999, 500, 0), h, ("uncond", "cond"), dtype="float16")
    assert half.h.dtype == torch.float16 and half.nbytes * 2 == full.nbytes == h.numel() * 4
    assert torch.equal(half.h, h.half())
    path = str(tmp_path / "half.safetensors")
    half.save(path)
    loaded = HTrajectory.load(path)
    assert loaded.dtype == "float16" and torch.equal(loaded.h, half.h)
    full.save(path)
    assert HTrajectory.load(path).dtype == "float32"


def test_only_at_keeps_those_steps_and_refuses_missing_ones():
    traj = HTrajectory((999, 500, 0), torch.randn(3, 1, 4, 2, 2))
    kept = traj.only_at([999, 500])
    assert kept.timesteps == (999, 500) and torch.equal(kept.at(500), traj.at(500))
    assert kept.h.data_ptr() == traj.h.data_ptr()  # t ≥ t_edit is a prefix of the grid: a view, no copy
    assert traj.only_at([999, 0]).timesteps == (999, 0) and traj.only_at([]).h.shape[0] == 0
    with pytest.raises(ValueError, match="set steps to 3"):
        traj.only_at([400])


def test_bad_storage_is_refused_with_what_to_set(model, x_T):
    with pytest.raises(ValueError, match="float32"):
        HStorage(dtype="int8")
    with pytest.raises(ValueError, match="'cpu' or 'model'"):
        HStorage(device="gpu")
    with pytest.raises(ValueError, match="lower keep_h_from_t"):
        HStorage(t_min=999).trajectory([998, 500], [], ("single",), "", "")
    with pytest.raises(ValueError, match="float32"):
        HTrajectory((1,), torch.zeros(1, 1, 1, 1, 1), dtype="float64")
    with pytest.raises(ValueError, match="beyond float16's range"):
        HStorage("float16").put(torch.full((1, 2), 7e4))
    assert HStorage("float16").put(torch.full((1, 2), 6e4)).dtype == torch.float16


def test_pruned_capture_and_inversion_equal_the_full_ones_at_the_kept_steps(model, x_T):
    full = capture(model, x_T[0], STEPS)
    pruned = capture(model, x_T[0], STEPS, h_storage=HStorage(t_min=T_EDIT))
    assert pruned.timesteps == tuple(t for t in full.timesteps if t >= T_EDIT) and len(pruned.timesteps) < STEPS
    assert torch.equal(pruned.h, full.only_at(pruned.timesteps).h)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inv = invert(model, images, STEPS, report=False)
    inv_pruned = invert(model, images, STEPS, report=False, h_storage=HStorage(t_min=T_EDIT))
    assert inv_pruned.trajectory.timesteps[0] == inv.timesteps[0]  # T (never evaluated) is still there
    assert torch.equal(inv_pruned.trajectory.h, inv.trajectory.only_at(inv_pruned.trajectory.timesteps).h)
    assert torch.equal(inv_pruned.x_T, inv.x_T)


def test_capture_for_h_from_t_edit_stops_there(model, x_T):
    calls = []

    class Counting:
        schedule, branches, fingerprint = model.schedule, model.branches, model.fingerprint

        def predict(self, x, t, edit=None):
            calls.append(t)
            return model.predict(x, t, edit)

    traj = capture(Counting(), x_T[0], STEPS, h_storage=HStorage(t_min=T_EDIT))
    assert calls == list(traj.timesteps) and min(calls) >= T_EDIT


def test_injection_from_a_pruned_trajectory_is_bit_identical(model, x_T):
    content = capture(model, x_T[0], STEPS)
    schedule = EditSchedule(STEPS, t_edit=T_EDIT)
    pruned = capture(model, x_T[0], STEPS, h_storage=HStorage(t_min=T_EDIT))
    for stride in (1, 2):
        want = inject(model, x_T[1], content, 0.7, schedule, stride=stride)
        assert torch.equal(inject(model, x_T[1], pruned, 0.7, schedule, stride=stride), want)
    with pytest.raises(ValueError, match=r"holds h only for t ≥ \d+ .*keep_h_from_t at most \d+"):
        inject(model, x_T[1], pruned, 0.7, EditSchedule(STEPS, t_edit=T_EDIT - 300))


def test_float16_injection_is_close_to_float32(model, x_T):
    schedule = EditSchedule(STEPS, t_edit=T_EDIT)
    full = capture(model, x_T[0], STEPS)
    half = capture(model, x_T[0], STEPS, h_storage=HStorage("float16", t_min=T_EDIT))
    assert half.dtype == "float16" and half.h.dtype == torch.float16
    want = inject(model, x_T[1], full, 0.7, schedule)
    got = inject(model, x_T[1], half, 0.7, schedule)
    style = inject(model, x_T[1], full, 0.0, schedule)
    error = (got - want).norm() / (want - style).norm()
    assert 0 < error < 1e-2, error  # the injection's change, not the image, is what float16 perturbs



def test_model_precision_storage_is_lossless():
    storage = HStorage("model")
    for computed, kept in ((torch.float16, torch.float16), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)):
        h = torch.randn(1, 4, 2, 2).to(computed)
        assert storage.put(h).dtype == kept and torch.equal(storage.put(h).to(computed), h)
        assert storage.trajectory([5], [storage.put(h)], ("single",), "", "").dtype == str(kept).split(".")[1]


def test_capture_node_keeps_the_models_precision_by_default_and_what_it_is_told(pack):
    import hspace_pack.nodes.inversion as inversion

    _, pixel_model = pack
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "hspace-shapes-ddpm")
    patcher = pixel_model.pixel_model_patcher(*pixel_model.load_pixel_unet_folder(folder))
    x_T = {"samples": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode():
        default, _ = inversion.Capture.execute(patcher, x_T, 6, 1.0, "cond").result
        half, latent = inversion.Capture.execute(patcher, x_T, 6, 1.0, "cond", h_storage="float16 on CPU").result
        full, latent_full = inversion.Capture.execute(patcher, x_T, 6, 1.0, "cond", h_storage="float32 on CPU",
                                                      keep_h_from_t=T_EDIT).result
    assert default.dtype == "float32" and torch.equal(default.h.half(), half.h)  # the pixel model runs in float32
    assert half.dtype == "float16" and len(half.timesteps) == 6 and half.h.device.type == "cpu"
    assert full.dtype == "float32" and full.timesteps == tuple(t for t in half.timesteps if t >= T_EDIT)
    assert torch.equal(latent["samples"], latent_full["samples"])
    assert torch.equal(full.h.half(), half.only_at(full.timesteps).h)
    with pytest.raises(ValueError, match="h_storage is 'bfloat16'"):
        inversion.Capture.execute(patcher, x_T, 6, 1.0, "cond", h_storage="bfloat16")
