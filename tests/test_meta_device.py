"""The library's processes on a meta-device U-Net and input: a tensor made on the CPU and mixed with the model's
device fails here as it would on a GPU, and every host read (a GPU sync) is counted (tests/device_checks.py)."""
import pytest
import torch

from device_checks import Accelerator, meta
from harness.tiny import tiny_pixel_unet, tiny_text_unet
from hspace_core import (Conditioning, DiffusersUNet, Direction, EditSchedule, HStorage, ImplicitDirectionNet, capture,
                         edit, inject, interpolate, invert, invert_guided)

ON_DEVICE = HStorage(dtype="model", device="model")  # h kept where the model computes it


@pytest.fixture(scope="module")
def model():
    model = DiffusersUNet(meta(tiny_pixel_unet()))
    model._fingerprint = "meta/unet"  # fingerprint_of reads every weight on the CPU: no data here
    return model


def _x(batch=2, channels=3, size=16):
    return torch.empty(batch, channels, size, size, device="meta")


def _processes(model, steps: int, everything: bool = True) -> dict:
    """Each process once (only the three loops unless ``everything``); returns its outputs."""
    sched = EditSchedule(num_steps=steps, t_edit=400, t_boost=200, eta_boost=1.0)
    with torch.no_grad():
        inv = invert(model, _x(), steps, refine_iters=1, h_storage=ON_DEVICE, latents_on="model", report=False)
        content = capture(model, inv.x_T[:1], steps, h_storage=ON_DEVICE)
        out = {"invert": inv.x_T, "capture": content.h,
               "edit": edit(model, inv.x_T, Direction("global", torch.zeros(32, 8, 8)), 1.0, sched),
               "inject": inject(model, inv.x_T[1:], content, 0.5, sched, omega=0.3)}
        if everything:
            net = ImplicitDirectionNet(32, model.time_embedding())
            out.update(edit_implicit=edit(model, inv.x_T, Direction("implicit", fn=net), 0.5, sched),
                       inject_masked=inject(model, inv.x_T[1:], content, 0.5, sched, mask=torch.ones(16, 16)),
                       interpolate=interpolate(model, inv.x_T[:1], inv.x_T[1:], 2, sched))
    return out


@pytest.fixture(scope="module")
def run(model):
    with Accelerator() as acc:
        out = _processes(model, 2)
    return out, acc


def test_every_process_runs_on_the_models_device(run):
    out, acc = run
    for name, value in out.items():
        assert value.device.type == "meta", name
    assert out["interpolate"].shape == (2, 3, 16, 16) and out["capture"].shape[1:] == (1, 32, 8, 8)


def test_with_everything_on_the_device_nothing_is_copied_to_the_host(run):
    _, acc = run
    assert not acc.host_copies, acc.host_copies[:5]
    assert not acc.float64


def test_no_process_reads_the_device_once_per_step(model):
    """The host reads of the loops (finiteness, once at the end of each) do not grow with the number of steps."""
    counts = []
    for steps in (2, 4):
        with Accelerator() as acc:
            _processes(model, steps, everything=False)
        counts.append(len(acc.syncs))
    assert counts[0] == counts[1], counts


def test_an_inversion_report_and_cpu_storage_run_too(model):
    with Accelerator() as acc, torch.no_grad():
        inv = invert(model, _x(), 2, report=True)
    assert inv.x_T.device.type == "meta" and inv.latents.device.type == "cpu" and inv.trajectory.h.device.type == "cpu"
    assert inv.report is not None and not acc.float64


def test_guided_inversions_run_on_the_models_device():
    unet = meta(tiny_text_unet())
    cond = Conditioning(torch.empty(1, 5, 32, device="meta"), torch.empty(1, 5, 32, device="meta"), 3.0)
    model = DiffusersUNet(unet, conditioning=cond)
    with Accelerator():
        for method in ("negative_prompt", "null_text"):
            found = invert_guided(model, _x(1, 4, 8), 2, method=method, inner_steps=2, report=False)
            assert found.inversion.x_T.device.type == "meta", method
