"""Diffusers adapters: h capture, edits, encoder reuse, guidance branches, hook hygiene."""
import pytest
import torch

from harness.tiny import tiny_pixel_unet
from hspace_core import Conditioning, DiffusersUNet, Direction, EditSchedule, edit, generate


def _no_hooks_left(unet):
    for m in unet.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, type(m).__name__
        assert "forward" not in m.__dict__, type(m).__name__


@torch.no_grad()
def test_h_is_mid_block_output(pixel_unet, images):
    seen = {}
    handle = pixel_unet.mid_block.register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    try:
        pred = DiffusersUNet(pixel_unet).predict(images, 300)
    finally:
        handle.remove()
    assert torch.equal(pred.h, seen["h"])
    assert pred.h.shape == (2, 32, 8, 8)


@torch.no_grad()
def test_reused_encoder_equals_full_second_pass(pixel_unet, images):
    shift = lambda h, t, b: h * 1.3 + 0.1
    fast = DiffusersUNet(pixel_unet).predict(images, 700, shift)
    full = DiffusersUNet(pixel_unet, reuse_encoder=False).predict(images, 700, shift)
    assert torch.allclose(fast.eps_edited, full.eps_edited, atol=1e-6)
    assert (fast.eps_edited - fast.eps).abs().max() > 1e-3
    identity = DiffusersUNet(pixel_unet).predict(images, 700, lambda h, t, b: h)
    assert torch.equal(identity.eps_edited, identity.eps)
    _no_hooks_left(pixel_unet)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_come_off_on_error_and_interrupt(pixel_unet, images, error):
    def broken(h, t, b):
        raise error

    with pytest.raises(type(error)):
        DiffusersUNet(pixel_unet).predict(images, 500, broken)
    _no_hooks_left(pixel_unet)
    # the model still behaves exactly as before
    fresh = tiny_pixel_unet()
    with torch.no_grad():
        assert torch.equal(pixel_unet(images, 500).sample, fresh(images, 500).sample)


def test_interrupt_inside_the_edited_pass_restores_forwards(images):
    unet = tiny_pixel_unet()
    calls = {"n": 0}

    def interrupt_on_replay(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:  # the second up-block call is the edited (replayed) decoder pass
            raise KeyboardInterrupt

    handle = unet.up_blocks[0].register_forward_hook(interrupt_on_replay)
    try:
        with pytest.raises(KeyboardInterrupt):
            DiffusersUNet(unet).predict(images, 500, lambda h, t, b: h + 1)
    finally:
        handle.remove()
    _no_hooks_left(unet)


def test_model_without_middle_block_is_refused():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       mid_block_type=None)
    with pytest.raises(ValueError, match="no middle block"):
        DiffusersUNet(unet)


def test_text_unet_needs_conditioning(text_unet):
    with pytest.raises(ValueError, match="conditioning"):
        DiffusersUNet(text_unet)
    with pytest.raises(ValueError, match="negative"):
        Conditioning(torch.zeros(1, 4, 32), guidance_scale=5.0)


@torch.no_grad()
def test_guidance_branches(text_unet):
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g)
    x = torch.randn(2, 4, 8, 8, generator=g)
    shift = lambda h, t, b: h + 0.5

    def run(branches, scale=4.0):
        model = DiffusersUNet(text_unet, conditioning=Conditioning(pos, neg, scale, branches))
        return model.predict(x, 600, shift)

    cond, uncond, both = run("cond"), run("uncond"), run("both")
    assert cond.h.shape == (4, 64, 4, 4)  # uncond rows then cond rows
    assert torch.equal(cond.eps, uncond.eps)
    # guidance: ε = ε_u + s(ε_c − ε_u) is linear, so the three edits satisfy both = cond + uncond − none
    assert torch.allclose(both.eps_edited - cond.eps, (cond.eps_edited - cond.eps) + (uncond.eps_edited - cond.eps), atol=1e-4)
    assert not torch.allclose(cond.eps_edited, uncond.eps_edited)
    # the guided ε is the textbook combination of separate passes
    single_pos = DiffusersUNet(text_unet, conditioning=Conditioning(pos)).predict(x, 600)
    single_neg = DiffusersUNet(text_unet, conditioning=Conditioning(neg)).predict(x, 600)
    assert torch.allclose(cond.eps, single_neg.eps + 4.0 * (single_pos.eps - single_neg.eps), atol=1e-4)
    _no_hooks_left(text_unet)


class _CountingUNet:
    def __init__(self, unet):
        self.unet, self.calls = unet, 0
        unet.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.calls += 1


@torch.no_grad()
def test_steps_below_t_edit_run_one_pass(images):
    counter = _CountingUNet(tiny_pixel_unet())
    model = DiffusersUNet(counter.unet)
    sched = EditSchedule(num_steps=10, t_edit=500, t_boost=0)
    direction = Direction("global", torch.ones(32, 8, 8))
    edit(model, images, direction, 0.5, sched)
    n_edit = sum(t >= 500 for t in sched.timesteps())
    assert counter.calls == 10 + n_edit
    counter.calls = 0
    generate(model, images, sched)
    assert counter.calls == 10


@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_guided_edit_of_one_branch_runs_only_its_rows(text_unet, branch):
    """Under CFG with one branch edited, the edited pass runs that branch's rows only, equal to a full pass."""
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(1, 4, 32, generator=g), torch.randn(1, 4, 32, generator=g)
    x = torch.randn(2, 4, 8, 8, generator=g)
    shift = lambda h, t, b: h * 1.3 + 0.2
    cond = Conditioning(pos, neg, 6.0, branch)
    seen = []
    handle = text_unet.conv_out.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        with torch.no_grad():
            fast = DiffusersUNet(text_unet, conditioning=cond).predict(x, 500, shift)
            full = DiffusersUNet(text_unet, conditioning=cond, reuse_encoder=False).predict(x, 500, shift)
    finally:
        handle.remove()
    assert seen[:2] == [4, 2]  # the plain pass (uncond + cond rows), then only the edited branch's rows
    assert torch.allclose(fast.eps, full.eps)
    scale = full.eps_edited.abs().max()
    assert (fast.eps_edited - full.eps_edited).abs().max() <= 1e-5 * scale
    assert not torch.allclose(fast.eps_edited, fast.eps)
    _no_hooks_left(text_unet)


@torch.no_grad()
@pytest.mark.parametrize("make", ["pixel", "text"])
def test_site_up1_reads_and_replaces_the_first_up_block_output(pixel_unet, text_unet, images, make):
    unet = pixel_unet if make == "pixel" else text_unet
    x = images if make == "pixel" else torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    conditioning = None if make == "pixel" else Conditioning(torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3)))
    seen = {}
    hooks = [unet.mid_block.register_forward_hook(lambda m, a, o: seen.setdefault("middle", o)),
             unet.up_blocks[0].register_forward_hook(lambda m, a, o: seen.setdefault("up1", o))]
    try:
        pred = DiffusersUNet(unet, conditioning=conditioning, site="up1").predict(x, 300)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(pred.h, seen["up1"]) and pred.h.shape != seen["middle"].shape
    assert pred.h.shape[-1] == 2 * seen["middle"].shape[-1]  # one level finer
    shift = lambda h, t, b: h * 1.3 + 0.1
    for t in (700, 200):
        fast = DiffusersUNet(unet, conditioning=conditioning, site="up1").predict(x, t, shift)
        full = DiffusersUNet(unet, conditioning=conditioning, site="up1", reuse_encoder=False).predict(x, t, shift)
        assert torch.allclose(fast.eps_edited, full.eps_edited, atol=1e-5)
        assert (fast.eps_edited - fast.eps).abs().max() > 1e-3
        middle = DiffusersUNet(unet, conditioning=conditioning).predict(x, t, shift)
        assert (middle.eps_edited - fast.eps_edited).abs().max() > 1e-3, "the site changes what the edit moves"
    identity = DiffusersUNet(unet, conditioning=conditioning, site="up1").predict(x, 500, lambda h, t, b: h)
    assert torch.equal(identity.eps_edited, identity.eps)
    _no_hooks_left(unet)


def test_site_up1_edit_by_hand_equals_the_adapter(pixel_unet, images):
    """The edited ε at up1 is the U-Net run with up_blocks[0]'s output replaced by h̃ — nothing else changed."""
    shift = lambda h, t, b: h * 0.7 - 0.2
    pred = DiffusersUNet(pixel_unet, site="up1").predict(images, 400, shift)
    handle = pixel_unet.up_blocks[0].register_forward_hook(lambda m, a, o: shift(o, 400, "single"))
    try:
        with torch.no_grad():
            by_hand = pixel_unet(images, 400).sample
    finally:
        handle.remove()
    assert torch.allclose(pred.eps_edited, by_hand, atol=1e-5)


def test_sites_the_unet_lacks_are_refused(pixel_unet):
    with pytest.raises(ValueError, match="no h site 'up2'.*middle, up1"):
        DiffusersUNet(pixel_unet, site="up2")
    with pytest.raises(ValueError, match="unknown"):
        DiffusersUNet(pixel_unet, site="down1")


def test_trajectories_and_directions_carry_their_site_and_refuse_another(pixel_unet, images):
    from hspace_core import capture, inject

    up1 = DiffusersUNet(pixel_unet, site="up1")
    traj = capture(up1, images, 4)
    assert traj.site == "up1" and traj.h_shape == (32, 16, 16)
    direction = Direction("global", torch.randn(traj.h_shape), site="up1")
    schedule = EditSchedule(4, t_edit=500)
    assert edit(up1, images, direction, 1.0, schedule).shape == images.shape
    middle = DiffusersUNet(pixel_unet)
    with pytest.raises(ValueError, match="site 'up1'.*set site to 'up1'"):
        edit(middle, images, direction, 1.0, schedule)
    with pytest.raises(ValueError, match="content h trajectory holds h read at site 'up1'.*set site to 'up1'"):
        inject(middle, images, traj, 0.5, schedule, strict_fingerprint=False)
