"""One code path: Asyrp Edit's reverse process now runs through the SAMPLERs' σ-space loop; it gives today's results
(``hspace_core.edit``, the VP DDIM loop) on the DDIM grid, in-process on an SD-shaped ComfyUI U-Net under CFG."""
import pytest
import torch

from hspace_core import Direction, EditSchedule, combine_directions, edit

from test_comfy_one_call import conditioning, relative, tiny_sd


@pytest.fixture(scope="module")
def samplers(pack):
    import hspace_pack.nodes.comfy.samplers as samplers

    return samplers


@pytest.mark.parametrize("cfg, boost", [(7.5, False), (7.5, True), (1.0, False)])
def test_the_sampler_loop_gives_todays_asyrp_edit(pack, samplers, cfg, boost):
    comfy_model, _ = pack
    positive, negative = conditioning()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    schedule = EditSchedule(8, t_edit=400, t_boost=200 if boost else 0, eta_boost=1.0)
    steps = []

    def body(m, x):
        h = m.predict(x, 500).h
        direction = Direction("global", torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(5)))
        today = edit(m, x, direction, 2.0, schedule, seed=7)
        native = samplers.run_h_edit(m, x, combine_directions([direction], [2.0]), schedule, seed=7,
                                     progress=lambda d, n: steps.append((d, n)))
        plain = samplers.run_h_edit(m, x, None, schedule, seed=7)
        return today, native, plain

    with torch.inference_mode():
        today, native, plain = comfy_model.run_in_comfy(tiny_sd(), x_T, body, positive=positive, negative=negative,
                                                        cfg=cfg, seed=7)
    assert relative(native, today) < 1e-5, relative(native, today)
    assert relative(plain, today) > 1e-3  # the edit shows, so the agreement above is about the edit
    assert steps == [(k, 8) for k in range(1, 9)]


@pytest.mark.parametrize("edit_branches", ["both", "cond"])
def test_the_h_shift_patch_is_the_edit_inside_its_window_only(pack, samplers, edit_branches):
    comfy_model, _ = pack
    import hspace_pack.nodes.comfy.patches as patches

    positive, negative = conditioning()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    model = tiny_sd()
    h = {}
    with torch.inference_mode():
        comfy_model.run_in_comfy(model, x, lambda m, _: h.setdefault("h", m.predict(x, 500).h), positive=positive)
    direction = Direction("global", torch.randn(h["h"].shape[1:], generator=torch.Generator().manual_seed(7)))
    window = samplers.window_of(model, "percent", 0, 0.0, 0.6)
    patched = patches.patched_with_h_shift(model, direction, 1.5, window, edit_branches)
    shift = combine_directions([direction], [1.5])

    def run(m, body):
        with torch.inference_mode():
            return comfy_model.run_in_comfy(m, x, body, positive=positive, negative=negative, cfg=7.5,
                                            edit_branches=edit_branches)

    for t, inside in ((800, True), (100, False)):
        got = run(patched, lambda m, _: m.predict(x, t).eps)
        want = run(model, lambda m, _: m.predict(x, t, shift))
        assert relative(got, want.eps_edited if inside else want.eps) < 1e-5, (t, inside)
        assert relative(want.eps_edited, want.eps) > 1e-3
    assert not model.model_options["transformer_options"].get("patches")  # the input MODEL is unchanged
