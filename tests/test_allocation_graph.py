"""The newest core's rules for patches (docs/compatibility.md, "Allocation graph"): what the pack keeps from a U-Net
pass is allocated outside core's allocation graph (``comfy.model_prefetch.pause_malloc_graph`` where core has it),
and the pixel U-Net loader registers the ``cached_patcher_init`` factory multi-GPU copies are made from."""
import contextlib

import torch

from harness.inprocess import node_module


class FakePause:
    """Stands in for core's ``pause_malloc_graph`` (a CUDA-only recorder): counts how often the pack pauses it."""

    def __init__(self):
        self.entered = 0

    @contextlib.contextmanager
    def __call__(self, sync=False):
        self.entered += 1
        yield


def _record_h(comfy_model, h):
    patch = comfy_model._HPatch(("single",), block=0)
    out, _ = patch(h, None, {"block": ("output", 0)})
    return patch, out


def test_kept_h_is_copied_outside_the_allocation_graph(pack, monkeypatch):
    """Under core's allocation graph, a recorded h must not be the pass's own memory (a replay hands it out again):
    the recorder keeps a copy made inside the pause.  Without the graph (0.3.75, 0.33.0) it keeps h as before."""
    comfy_model, _ = pack
    allocations = node_module("nodes.comfy.allocations")
    h = torch.randn(1, 4, 2, 2)

    monkeypatch.setattr(allocations, "_pause", None)
    patch, out = _record_h(comfy_model, h)
    assert out is h and patch.rows["cond"][0].data_ptr() == h.data_ptr()  # a view of the pass's h: no extra copy here

    pause = FakePause()
    monkeypatch.setattr(allocations, "_pause", pause)
    patch, out = _record_h(comfy_model, h)
    kept = patch.rows["cond"][0]
    assert out is h and pause.entered == 2  # the patch body, then the copy
    assert kept.data_ptr() != h.data_ptr() and torch.equal(kept, h)
    h.add_(1.0)  # what a replay does to the pass's memory
    assert not torch.equal(kept, h)


def test_an_edit_is_allocated_outside_the_allocation_graph(pack, monkeypatch):
    """The edit allocates only on edited steps, so it runs inside the pause; its result is the same as without."""
    comfy_model, _ = pack
    allocations = node_module("nodes.comfy.allocations")
    h = torch.randn(2, 4, 2, 2)
    edit = lambda rows, t, branch: rows + 0.5  # noqa: E731

    def edited(pause):
        monkeypatch.setattr(allocations, "_pause", pause)
        patch = comfy_model._HPatch(("uncond", "cond"), edit=edit, t=500, edit_branches="cond", block=0)
        return patch(h, None, {"block": ("output", 0), "cond_or_uncond": [1, 0]})[0]

    plain = edited(None)
    pause = FakePause()
    paused = edited(pause)
    assert pause.entered >= 1 and torch.equal(plain, paused)
    assert torch.equal(paused[:1], h[:1]) and torch.allclose(paused[1:], h[1:] + 0.5)  # only the cond rows


def test_the_pixel_loader_registers_its_factory_for_multi_gpu_copies(pack):
    """ComfyUI ≥ 0.33: ``deepclone_multigpu`` refuses a MODEL whose loader registered no ``cached_patcher_init``;
    the pixel loader registers itself, so the copy is a fresh load with the same weights.  0.3.75 has neither."""
    loaders = node_module("nodes.loaders")
    model = loaders.LoadPixelUNet.execute(unet_folder="bundled/hspace-shapes-ddpm", repo_id="").result[0]
    if not hasattr(model, "deepclone_multigpu"):
        assert not hasattr(model, "cached_patcher_init")  # nothing set on a core that does not read it
        return
    factory, args = model.cached_patcher_init
    assert factory is loaders.load_pixel_model and args == ("bundled/hspace-shapes-ddpm", "")
    copy = model.deepclone_multigpu()
    ours, theirs = model.model.state_dict(), copy.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
        assert ours[key].data_ptr() != theirs[key].data_ptr(), f"{key} is shared, not a fresh load"
