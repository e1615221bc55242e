"""Memory is reserved for the rows a process really runs (``nodes/comfy/memory.py``: ``rows_run``, ``reserve_rows``,
``run_in_comfy(rows=…)``).  A spy on ComfyUI's model-management call (``load_models_gpu``) sees, for the U-Net, what
ComfyUI itself reserves for a latent of that many rows: the pack's SAMPLERs inside the real SamplerCustomAdvanced under
CFGGuider, a one-call node edit, the Direction Explorer and Jacobian Directions."""
import pytest
import torch

from harness.inprocess import run_in_comfy
from hspace_core import Direction, HTrajectory

from test_comfy_one_call import conditioning, tiny_sd

CFG = 7.5


@pytest.fixture(scope="module")
def nodes(pack):
    import hspace_pack.nodes as nodes

    return nodes


@pytest.fixture
def reserved(monkeypatch):
    """memory_required of every load_models_gpu call that loads ``model`` (the VAE's own calls are left out)."""
    import comfy.model_management

    calls, real = [], comfy.model_management.load_models_gpu

    def spy(models, memory_required=0, *args, **kwargs):
        calls.append(([m.model for m in models], memory_required))
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", spy)
    return lambda model: [memory for loaded, memory in calls if model.model in loaded]


def _custom_sampler(model, sampler, latent, sigmas):
    """The real SamplerCustomAdvanced node (RandomNoise, CFGGuider) in this process."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    positive, negative = conditioning()
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(CFG)
    with torch.inference_mode():
        return SamplerCustomAdvanced.execute(Noise_RandomNoise(3), guider, sampler, sigmas,
                                             {"samples": latent}).result[0]["samples"]


def _euler():
    import comfy.samplers

    return comfy.samplers.sampler_object("euler")


def _sigmas(model, steps=4):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps).cpu()


def _h_shape(model, x):
    positive, _ = conditioning()
    with torch.inference_mode():
        return run_in_comfy(model, x, lambda m, _: m.predict(x, 500).h, positive=positive).shape


def _direction(shape, seed=5):
    return Direction("global", torch.randn(shape[1:], generator=torch.Generator().manual_seed(seed)))


def _for_rows(reserved, model, rows):
    """What ComfyUI reserves for a latent of ``rows`` rows: a plain SamplerCustomAdvanced with euler on one."""
    before = len(reserved(model))
    _custom_sampler(model, _euler(), torch.zeros(rows, 4, 16, 16), _sigmas(model))
    return reserved(model)[before:]


@pytest.mark.parametrize("strength", [1.0, 0.0])
def test_the_asyrp_sampler_under_cfg_guider_reserves_for_the_one_call_rows(pack, nodes, reserved, strength):
    model = tiny_sd()
    x = torch.zeros(1, 4, 16, 16)
    one, two = _for_rows(reserved, model, 1), _for_rows(reserved, model, 2)
    assert len(one) == len(two) == 1 and two[0] > one[0], (one, two)
    direction = _direction(_h_shape(model, x))
    sampler = nodes.samplers.AsyrpSampler.execute(direction, strength, "percent", 400, 0.0, 1.0, 0, "cond",
                                                  allow_other_model=True).result[0]
    before = len(reserved(model))
    _custom_sampler(model, sampler, x, _sigmas(model))
    # the guider reserves for the latent's row, the sampler then for [x; x]; at strength 0 no edit runs
    assert reserved(model)[before:] == (one + two if strength else one)


def test_the_content_injection_sampler_under_cfg_guider_reserves_for_the_one_call_rows(pack, nodes, reserved):
    comfy_model, _ = pack
    model = tiny_sd()
    x = torch.zeros(1, 4, 16, 16)
    sigmas = _sigmas(model)
    ts = tuple(nodes.comfy.samplers.timesteps_of(model, sigmas.tolist()))
    shape = _h_shape(model, x)
    h = torch.randn(len(ts), *shape, generator=torch.Generator().manual_seed(6))
    content = HTrajectory(ts, h, ("single",), comfy_model.model_fingerprint(model), "inversion", "middle")
    sampler = nodes.samplers.ContentInjectionSampler.execute(content, 0.6, -1.0, 1, "percent", 400, 0.0, 1.0,
                                                             "slerp", False, 0, "cond").result[0]
    one, two = _for_rows(reserved, model, 1), _for_rows(reserved, model, 2)
    before = len(reserved(model))
    _custom_sampler(model, sampler, x, sigmas)
    assert reserved(model)[before:] == one + two and two[0] > one[0]


def _for_latent_rows(reserved, model, rows):
    """What run_in_comfy has ComfyUI reserve for a latent of ``rows`` rows (no ``rows=``)."""
    positive, negative = conditioning()
    before = len(reserved(model))
    with torch.inference_mode():
        run_in_comfy(model, torch.zeros(rows, 4, 16, 16), lambda m, x: None, positive=positive,
                     negative=negative, cfg=CFG)
    return reserved(model)[before:]


def _node_common():
    positive, negative = conditioning()
    return dict(seed=0, cfg=CFG, edit_branches="cond", positive=positive, negative=negative)


def test_asyrp_edit_reserves_for_the_one_call_rows(pack, nodes, reserved):
    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    direction = _direction(_h_shape(model, x_T))
    want = _for_latent_rows(reserved, model, 2)
    before = len(reserved(model))
    with torch.inference_mode():
        nodes.editing.AsyrpEdit.execute(model=model, x_T={"samples": x_T}, direction=direction, strength=2.0, steps=4,
                                        t_edit=400, allow_other_model=True, **_node_common())
    assert reserved(model)[before:] == want != _for_latent_rows(reserved, model, 1)


def test_the_direction_explorer_reserves_two_rows_per_strength(pack, nodes, reserved):
    from harness.tiny_sdxl import tiny_vae

    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    direction = _direction(_h_shape(model, x_T))
    want = _for_latent_rows(reserved, model, 2 * 3)
    before = len(reserved(model))
    with torch.inference_mode():
        nodes.discovery.DirectionExplorer.execute(model=model, x_T={"samples": x_T}, vae=tiny_vae(),
                                                  strengths="-1, 0, 1", steps=3, t_edit=400, scale=1,
                                                  direction=direction, allow_other_model=True, **_node_common())
    assert reserved(model)[before:] == want


def test_jacobian_directions_reserve_for_k_plus_oversample_rows(pack, nodes, reserved):
    model = tiny_sd()
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    want = _for_latent_rows(reserved, model, 3 + 2)  # k = 3, oversample 2
    before = len(reserved(model))
    nodes.discovery.JacobianDirections.execute(model=model, x_T={"samples": x_T}, steps=3, t=500, k=3, component=0,
                                               output="eps", relative_norm=0.1, iterations=1, **_node_common())
    assert reserved(model)[before:] == want


def test_rows_run_is_the_one_rule(pack):
    from hspace_pack.nodes.comfy.memory import rows_run
    model = tiny_sd()
    assert rows_run(model, 3) == 3
    assert rows_run(model, 3, edited=True) == 6  # the one-call [x; x]
    assert rows_run(model, 1, copies=5, edited=True) == 10  # the explorer's 5 strengths
    assert rows_run(model, 2, copies=4) == 8  # Jacobian probes
