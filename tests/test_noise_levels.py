"""The one noise-level object (``hspace_core.noise_levels``): ComfyUI's ``model_sampling`` conversions operation for
operation on each family, the library's ᾱ schedules, the parameterisation's signal coefficient, and a grep-level
check that no other module converts σ ↔ t or percent → σ."""
import glob
import os
import re

import pytest
import torch

from harness.inprocess import run_in_comfy
from hspace_core import EditSchedule, schedule_from_betas, betas_linear, betas_scaled_linear
from hspace_core.noise_levels import NoiseLevels, check_percent_window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCENTS = [0.0, 1e-3, 0.05, 0.2, 0.25, 1 / 3, 0.4, 0.5, 0.6, 0.75, 0.999, 1.0]


@pytest.fixture(scope="module")
def samplings(pack):
    """One ComfyUI model_sampling of each family: SD1.5's discrete ε, v-prediction, continuous EDM, SD3 flow (shift 3)
    and Flux (shift 1.15)."""
    import comfy.model_sampling as cms

    def make(kind, mixin, **params):
        ms = type("ModelSampling", (kind, mixin), {})()
        if params:
            ms.set_parameters(**params)
        return ms

    discrete = make(cms.ModelSamplingDiscrete, cms.EPS)
    discrete._register_schedule(beta_schedule="linear", linear_start=0.00085, linear_end=0.012)
    return {"eps": discrete, "v": make(cms.ModelSamplingDiscrete, cms.V_PREDICTION),
            "edm": make(cms.ModelSamplingContinuousEDM, cms.EDM, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5),
            "sd3": make(cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0),
            "flux": make(cms.ModelSamplingFlux, cms.CONST, shift=1.15)}


@pytest.mark.parametrize("name", ["eps", "v", "edm", "sd3", "flux"])
def test_percent_to_sigma_is_comfyuis_on_every_family(pack, samplings, name):
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    ms = samplings[name]
    levels = levels_of_sampling(ms)
    assert levels.parameterisation == {"eps": "eps", "v": "v", "edm": "edm", "sd3": "const", "flux": "const"}[name]
    assert levels.family == {"eps": "discrete", "v": "discrete", "edm": "continuous"}.get(name, "flow")
    for p in PERCENTS:
        assert levels.percent_to_sigma(p) == float(ms.percent_to_sigma(p)), p  # exact: the same operations
    assert torch.equal(levels.table, ms.sigmas.float().cpu())


@pytest.mark.parametrize("name", ["eps", "v", "edm", "sd3", "flux"])
def test_percent_at_timestep_bounds_the_window_and_the_boost(pack, samplings, name):
    """σ → percent undoes ComfyUI's percent → σ, and a timestep's percent (H-Space Auto Schedule's outputs) makes a
    percent window hold exactly t ≥ t_edit and a boost start exactly below t_boost, on every family."""
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    levels = levels_of_sampling(samplings[name])
    for p in PERCENTS[1:-1]:
        assert levels.sigma_to_percent(levels.percent_to_sigma(p)) == pytest.approx(p, abs=1e-5), p
    T = levels.num_timesteps
    for t in sorted({0, 1, 2, T // 3, T // 2, T - 2, T - 1}):
        p = levels.percent_at_timestep(t)
        assert 0.0 <= p <= 1.0
        window = levels.percent_window(0.0, p)
        inside = [u for u in range(T) if window.contains(levels.sigma(u))]
        assert inside == list(range(t, T)), (t, inside[:3])
        assert levels.count_below(levels.percent_to_sigma(p)) == t
    with pytest.raises(ValueError, match="outside"):
        levels.percent_at_timestep(T)


@pytest.mark.parametrize("name", ["eps", "v"])
def test_sigma_to_t_is_comfyuis_timestep_on_discrete_models(pack, samplings, name):
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    ms = samplings[name]
    levels = levels_of_sampling(ms)
    sigmas = torch.cat([ms.sigmas[::37], torch.tensor([0.05, 0.5, 1.234, 7.0, 13.0])]).float()
    assert levels.timesteps(sigmas) == ms.timestep(sigmas).tolist()
    assert levels.timestep(0.0) == -1
    assert levels.off_table(ms.sigmas[::37]) == 0 and levels.off_table([1.234]) == 1
    # percent → σ → t: the boost's count of table entries below σ(p) is the number of t with σ_t < σ(p)
    sigma = levels.percent_to_sigma(0.7)
    assert levels.count_below(sigma) == int((ms.sigmas < sigma).sum()) > 0


def test_library_schedule_levels_and_grids():
    schedule = schedule_from_betas(betas_linear())
    levels = NoiseLevels.of_schedule(schedule)
    assert levels.table.dtype == torch.float64 and levels.num_timesteps == 1000
    for t in (0, 1, 200, 400, 999):
        assert levels.sigma(t) == pytest.approx(schedule.sigma(t), rel=1e-15)  # torch's √ vs math's
        assert levels.timestep(schedule.sigma(t)) == t == schedule.timestep_of_sigma(schedule.sigma(t))
    grid = levels.grid(10)
    assert grid == EditSchedule(10).timesteps()  # Asyrp's inclusive DDIM grid: 999 … 0
    sigmas = levels.grid_sigmas(10)
    assert sigmas.tolist() == pytest.approx([schedule.sigma(t) for t in grid] + [0.0], rel=1e-15)
    window = levels.percent_window(0.0, 0.6)
    assert window.sigma_start > levels.sigma_max and window.sigma_end == levels.percent_to_sigma(0.6)
    assert levels.t_edit_window(400).sigma_end == levels.sigma(400)


def test_signal_coefficient_of_each_parameterisation():
    vp = NoiseLevels(torch.linspace(0.1, 10, 50), "v")
    flow = NoiseLevels(torch.linspace(1e-3, 1.0, 50), "const", "flow", shift=3.0)
    sigma = torch.tensor([0.25, 0.8])
    assert vp.signal(0.25) == 1.0 and torch.equal(vp.signal(sigma) * sigma, sigma)
    assert flow.signal(0.25) == 0.75 and torch.equal(flow.signal(sigma), 1 - sigma)
    # x = a(σ)·x0 + σ·ε and D = (x − σ·ε)/a(σ): the flow-matching sample at σ = 1 is pure noise
    x0, eps = torch.randn(4, generator=torch.Generator().manual_seed(0)), torch.ones(4)
    assert torch.equal(flow.signal(1.0) * x0 + 1.0 * eps, eps)


def test_bad_tables_windows_and_families_are_refused():
    with pytest.raises(ValueError, match="increase"):
        NoiseLevels(torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="go together"):
        NoiseLevels(torch.tensor([0.1, 0.9]), "const")
    with pytest.raises(ValueError, match="family"):
        NoiseLevels(torch.tensor([0.1, 0.9]), family="cosine")
    with pytest.raises(ValueError, match="Node X: start_percent \\(0.7\\) is after end_percent \\(0.2\\)"):
        check_percent_window(0.7, 0.2, "Node X")
    with pytest.raises(ValueError, match="end_percent"):
        check_percent_window(0.0, "0.5")
    with pytest.raises(ValueError, match="t_edit"):
        NoiseLevels.of_schedule(schedule_from_betas(betas_scaled_linear())).t_edit_window(1000)


# What only the noise-level modules may write: nearest σ → t (an argmin over log σ), ComfyUI's percent_to_sigma, and
# reads of a model_sampling's σ table.
CONVERSIONS = {
    "nearest σ → t": re.compile(r"\.log\(\).*argmin|argmin.*\.log\(\)|log_sigmas"),
    "percent → σ": re.compile(r"(?<!levels)\.percent_to_sigma\("),  # not NoiseLevels' own
    "σ table read": re.compile(r"""(ms|model_sampling|get_model_object\(["']model_sampling["']\))\.(sigmas|sigma_max|sigma_min)\b"""),
}
HOMES = {os.path.join("hspace_core", "noise_levels.py"), os.path.join("nodes", "comfy", "noise_levels.py")}


def test_no_conversion_outside_the_noise_level_object():
    strays = []
    for folder in ("hspace_core", "nodes"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, ROOT)
            if rel in HOMES:
                continue
            for number, line in enumerate(open(path, encoding="utf-8"), 1):
                code = line.split("#")[0]
                if code.lstrip().startswith(("\"", "'", "``")):
                    continue
                strays += [f"{rel}:{number} ({what}): {line.strip()}" for what, rx in CONVERSIONS.items()
                           if rx.search(code) and "``" not in code]
    assert not strays, "σ ↔ t / percent → σ outside the noise-level object:\n" + "\n".join(strays)


def test_the_grep_sees_the_old_spellings():
    samples = ["ts = (positive.log()[:, None] - table.log()[None]).abs().argmin(dim=1)",
               "sigma = float(ms.percent_to_sigma(boost.start_percent))",
               "n = len(model_patcher.get_model_object(\"model_sampling\").sigmas)",
               "return int((table - torch.tensor(sigma).log()).abs().argmin())"]
    for line in samples:
        assert any(rx.search(line) for rx in CONVERSIONS.values()), line


def test_run_in_comfy_hands_comfyui_the_bodys_real_sigmas(pack):
    from test_comfy_one_call import conditioning, tiny_sd

    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    model, (positive, _) = tiny_sd(), conditioning()
    seen = lambda m, x: m.extra_args["model_options"]["transformer_options"]["sample_sigmas"].cpu()  # noqa: E731
    latent = torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        sigmas = run_in_comfy(model, latent, seen, positive=positive, steps=6)
        dummy = run_in_comfy(model, latent, seen, positive=positive)
    assert torch.equal(sigmas, noise_levels(model).grid_sigmas(6).float()) and len(sigmas) == 7
    assert dummy.tolist() == [noise_levels(model).sigma_max, 0.0]  # a body with no one grid
