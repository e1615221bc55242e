"""One code path: H-Space Asyrp Edit's reverse process now runs through the SAMPLERs' σ-space loop; it gives today's results
(``hspace_core.edit``, the VP DDIM loop) on the DDIM grid, in-process on an SD-shaped ComfyUI U-Net under CFG."""
import pytest
import torch

from harness.inprocess import run_in_comfy
from hspace_core import Direction, EditSchedule, combine_directions, edit

from test_comfy_one_call import conditioning, relative, tiny_sd


@pytest.fixture(scope="module")
def samplers(pack):
    import hspace_pack.nodes.comfy.samplers as samplers

    return samplers


@pytest.mark.parametrize("cfg, boost", [(7.5, False), (7.5, True), (1.0, False)])
def test_the_sampler_loop_gives_todays_asyrp_edit(pack, samplers, cfg, boost):
    positive, negative = conditioning()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    schedule = EditSchedule(8, t_edit=400, t_boost=200 if boost else 0, eta_boost=1.0)
    steps = []

    def body(m, x):
        h = m.predict(x, 500).h
        direction = Direction("global", torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(5)))
        today = edit(m, x, direction, 2.0, schedule, seed=7)
        native = samplers.run_h_edit(m, x, combine_directions([direction], [2.0]), schedule, seed=7,
                                     progress=lambda d, n, x0: steps.append((d, n, x0.shape)))
        plain = samplers.run_h_edit(m, x, None, schedule, seed=7)
        return today, native, plain

    with torch.inference_mode():
        today, native, plain = run_in_comfy(tiny_sd(), x_T, body, positive=positive, negative=negative,
                                            cfg=cfg, seed=7)
    assert relative(native, today) < 1e-5, relative(native, today)
    assert relative(plain, today) > 1e-3  # the edit shows, so the agreement above is about the edit
    assert steps == [(k, 8, x_T.shape) for k in range(1, 9)]


@pytest.mark.parametrize("edit_branches", ["both", "cond"])
def test_the_h_shift_patch_is_the_edit_inside_its_window_only(pack, samplers, edit_branches):
    import hspace_pack.nodes.comfy.patches as patches
    from hspace_pack.nodes.layer.resolution import edit_window

    positive, negative = conditioning()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    model = tiny_sd()
    h = {}
    with torch.inference_mode():
        run_in_comfy(model, x, lambda m, _: h.setdefault("h", m.predict(x, 500).h), positive=positive)
    direction = Direction("global", torch.randn(h["h"].shape[1:], generator=torch.Generator().manual_seed(7)))
    window = edit_window("test", model, "percent", 0, 0.0, 0.6)
    patched = patches.patched_with_h_shift(model, direction, 1.5, window, edit_branches)
    shift = combine_directions([direction], [1.5])

    def run(m, body):
        with torch.inference_mode():
            return run_in_comfy(m, x, body, positive=positive, negative=negative, cfg=7.5,
                                edit_branches=edit_branches)

    for t, inside in ((800, True), (100, False)):
        got = run(patched, lambda m, _: m.predict(x, t).eps)
        want = run(model, lambda m, _: m.predict(x, t, shift))
        assert relative(got, want.eps_edited if inside else want.eps) < 1e-5, (t, inside)
        assert relative(want.eps_edited, want.eps) > 1e-3
    assert not model.model_options["transformer_options"].get("patches")  # the input MODEL is unchanged


def test_memory_is_reserved_for_the_rows_the_body_runs(pack, monkeypatch):
    """A spy on ComfyUI's model-management call: rows=4 reserves what ComfyUI reserves for a 4-row latent."""
    import comfy.model_management

    seen = []
    real = comfy.model_management.load_models_gpu

    def spy(models, memory_required=0, *args, **kwargs):
        seen.append(memory_required)
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", spy)
    positive, negative = conditioning()
    model = tiny_sd()
    one, four = torch.zeros(1, 4, 16, 16), torch.zeros(4, 4, 16, 16)
    with torch.inference_mode():
        for latent, rows in ((one, None), (one, 4), (four, None)):
            run_in_comfy(model, latent, lambda m, x: None, positive=positive, negative=negative, cfg=7.5,
                         rows=rows)
    assert seen[1] == seen[2] > seen[0], seen
    assert not model.get_wrappers("prepare_sampling", "hspace_rows")  # the MODEL given is not changed


def _lora_pair(seed, keys=("diffusion_model.out.2.weight",)):
    """A tiny SD MODEL and a clone with weight patches on ``keys`` (what a LoRA loader adds), sharing one
    diffusion_model."""
    plain = tiny_sd(seed=seed)
    state = plain.model.state_dict()
    g = torch.Generator().manual_seed(9)
    lora = plain.clone()
    lora.add_patches({key: (0.05 * torch.randn(state[key].shape, generator=g),) for key in keys}, 1.0)
    return plain, lora


def test_the_fingerprint_is_of_the_weights_that_run_whatever_ran_first(pack):
    comfy_model, _ = pack
    positive, _ = conditioning()
    x = torch.zeros(1, 4, 16, 16)

    def seen_in_sampling(model):  # the fingerprint a node sees while its MODEL runs
        with torch.inference_mode():
            return run_in_comfy(model, x, lambda m, _: m.fingerprint, positive=positive)

    plain, lora = _lora_pair(11)
    first = (seen_in_sampling(plain), seen_in_sampling(lora))
    plain, lora = _lora_pair(11)
    second = (seen_in_sampling(lora), seen_in_sampling(plain))[::-1]
    assert first == second and first[0] != first[1]
    plain, lora = _lora_pair(11)
    seen_in_sampling(lora)  # the LoRA'd weights are in place in the shared diffusion_model now
    assert comfy_model.model_fingerprint(plain) == first[0]  # asked outside sampling: still the plain weights


LORA_KEYS = tuple(f"diffusion_model.{name}" for name in ("out.2.weight", "out.2.bias", "input_blocks.0.0.weight",
                                                          "middle_block.0.in_layers.2.weight", "time_embed.0.weight"))


def _load_lowvram(model):
    """Load ``model`` as ComfyUI does when VRAM is short (``LoadedModel.model_load`` → ``partially_load`` with a
    budget of half the model): some modules are loaded with their patches written in place, the others are
    offloaded with their patches applied on the fly.  The patched keys of each kind."""
    model.partially_load(model.load_device, extra_memory=model.model_size() // 2)
    assert model.model.model_lowvram
    in_place = {key for key in LORA_KEYS if key in model.backup}
    return in_place, set(LORA_KEYS) - in_place


def test_the_fingerprint_in_low_vram_mode_is_of_the_patched_weights(pack):
    """Low-VRAM loading patches weights on the fly: the fingerprint applies their patches to copies, so it is the
    normal load's (the same patched weights), not the unpatched weights', and the model is not written into."""
    comfy_model, _ = pack
    fingerprint = comfy_model.model_fingerprint
    plain, lora = _lora_pair(12, LORA_KEYS)
    normal = (fingerprint(plain), fingerprint(lora))  # each loaded normally, in turn (load_models_gpu)
    assert normal[0] != normal[1]

    plain, lora = _lora_pair(12, LORA_KEYS)
    raw = {key: plain.model.state_dict()[key].clone() for key in LORA_KEYS}
    in_place, on_the_fly = _load_lowvram(lora)
    assert on_the_fly and in_place, (in_place, on_the_fly)  # both kinds are exercised
    low_first = fingerprint(lora)
    for key in on_the_fly:  # computed, not written: the offloaded weights are still the raw ones
        assert torch.equal(lora.model.state_dict()[key], raw[key]) and key not in lora.backup, key
    assert (fingerprint(plain), low_first) == normal

    plain, lora = _lora_pair(12, LORA_KEYS)  # the other order: the plain MODEL first, then the LoRA in low VRAM
    plain_first = fingerprint(plain)
    _load_lowvram(lora)
    assert (plain_first, fingerprint(lora)) == normal
    lora.unpatch_model(lora.offload_device)


def test_asyrp_edit_progress_sends_latent_previews(pack, monkeypatch):
    """Every step of a long node reaches ComfyUI's ProgressBar with a preview of the step's x0."""
    import comfy.utils
    import latent_preview

    decoded, sent = [], []

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            decoded.append(x0.shape)
            return (fmt, "image", 8)

    monkeypatch.setattr(latent_preview, "get_previewer", lambda device, latent_format: Previewer())
    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute",
                        lambda self, value, total=None, preview=None: sent.append((value, total, preview)))
    model = tiny_sd()
    from hspace_pack.nodes.comfy.progress import progress_bar

    update = progress_bar(3, model)
    for k in range(1, 4):
        update(k, 3, torch.zeros(1, 4, 16, 16))
    update(3, 3)  # a step with no latent sends no preview
    assert decoded == [(1, 4, 16, 16)] * 3
    assert sent == [(1, 3, ("JPEG", "image", 8)), (2, 3, ("JPEG", "image", 8)), (3, 3, ("JPEG", "image", 8)), (3, 3, None)]
