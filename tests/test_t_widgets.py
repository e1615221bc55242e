"""One rule for the t widgets (t_edit, t_boost, keep_h_from_t, the Jacobian's t, Auto Schedule's INT outputs) on any
σ table (``NoiseLevels.widget_timestep`` / ``widget_t``): a widget t ∈ [0, 999] names the table entry at the same
fraction of the table, round(t·(T − 1)/999); the identity on 1000-entry tables (U-Nets' DDPM tables, SD3's flow
table), ≈ 10·t on Flux's 10000 entries; and the node layer reads every t widget through it, logged off 1000."""
import logging

import pytest
import torch

from hspace_core import BoostSettings, schedule_from_betas, betas_scaled_linear
from hspace_core.noise_levels import NoiseLevels


@pytest.fixture(scope="module")
def samplings(pack):
    """ComfyUI's model_sampling of SD1.5 (discrete ε), v-prediction, SD3 (flow, shift 3) and Flux (shift 1.15)."""
    import comfy.model_sampling as cms

    def make(kind, mixin, **params):
        ms = type("ModelSampling", (kind, mixin), {})()
        if params:
            ms.set_parameters(**params)
        return ms

    return {"eps": make(cms.ModelSamplingDiscrete, cms.EPS), "v": make(cms.ModelSamplingDiscrete, cms.V_PREDICTION),
            "sd3": make(cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0),
            "flux": make(cms.ModelSamplingFlux, cms.CONST, shift=1.15)}


def _levels(samplings, name):
    from hspace_pack.nodes.comfy.noise_levels import levels_of_sampling

    return levels_of_sampling(samplings[name])


@pytest.mark.parametrize("name", ["eps", "v", "sd3", "library"])
def test_the_rule_is_the_identity_on_a_1000_entry_table(pack, samplings, name):
    """Every widget value names its own entry and every entry its own widget value, and Auto Schedule's probes are
    the ones it took before (round(linspace(0, T − 1, n)) in float32): U-Nets and SD3 read their t widgets as before."""
    levels = (NoiseLevels.of_schedule(schedule_from_betas(betas_scaled_linear(1000))) if name == "library"
              else _levels(samplings, name))
    assert levels.num_timesteps == 1000
    assert [levels.widget_timestep(t) for t in range(1000)] == list(range(1000))
    assert [levels.widget_t(t) for t in range(1000)] == list(range(1000))
    assert [levels.widget_at_most(t) for t in range(1000)] == list(range(1000))
    for n in (2, 4, 5, 9, 21, 25, 50, 333, 1000):
        before = sorted({int(round(v)) for v in torch.linspace(0, 999, n).tolist()})
        assert list(levels.widget_timesteps(n)) == before, n


def test_the_rule_on_fluxs_10000_entry_table(pack, samplings):
    """On Flux: the entry at the same fraction, round(t·9999/999) with halves up (0 → 0, 999 → 9999, 400 → 4004);
    widget → entry → widget is exact for every widget value; an entry comes back within 5 (half a widget step); and
    the entry is within one of H2's percent reading (the entry nearest σ at percent 1 − t/999), since the table is
    uniform in the flow time."""
    levels = _levels(samplings, "flux")
    assert levels.num_timesteps == 10000
    entries = [levels.widget_timestep(t) for t in range(1000)]
    assert entries[0] == 0 and entries[999] == 9999 and entries[400] == 4004
    assert entries == [int(t * 9999 / 999 + 0.5) for t in range(1000)]
    assert [levels.widget_t(e) for e in entries] == list(range(1000))
    assert max(abs(levels.widget_timestep(levels.widget_t(e)) - e) for e in range(10000)) == 5
    percent_reading = [max(levels.timestep(levels.percent_to_sigma(1 - t / 999)), 0) for t in range(1000)]
    assert max(abs(e - p) for e, p in zip(entries, percent_reading)) == 1
    for e in range(10000):  # "keep_h_from_t at most …": the largest widget value whose entry is ≤ e
        w = levels.widget_at_most(e)
        assert entries[w] <= e and (w == 999 or entries[w + 1] > e), e
    assert levels.widget_timesteps(4) == (0, 3333, 6666, 9999)
    assert all(levels.widget_timestep(levels.widget_t(e)) == e for e in levels.widget_timesteps(25))


@pytest.mark.parametrize("bad", [-1, 1000, 400.0, True])
def test_a_t_widget_off_its_range_is_refused_naming_node_and_widget(pack, samplings, bad):
    with pytest.raises(ValueError, match=r"H-Space Asyrp Edit: t_edit .* must be a whole number in \[0, 999\]"):
        _levels(samplings, "flux").widget_timestep(bad, "t_edit", "H-Space Asyrp Edit")


def test_the_nodes_read_t_edit_t_boost_and_keep_h_from_t_by_the_rule(pack, flux, sd3, samplings, caplog):
    """edit_window, the boost's start and h storage on the tiny Flux name the entry at the widget's fraction of its
    10000-entry table, logged; on the tiny SD3 and on a U-Net's discrete table (the MODEL's model_sampling patched,
    as ComfyUI's ModelSamplingDiscrete node does) they are the widget values themselves, as before, without a log."""
    from hspace_pack.nodes.comfy.noise_levels import boost_t_boost, noise_levels
    from hspace_pack.nodes.layer import edit_window, h_storage_of, t_widget_timestep

    unet = sd3.clone()
    unet.add_object_patch("model_sampling", samplings["eps"])
    boost = BoostSettings(t_boost=200)
    for model in (sd3, unet):
        levels = noise_levels(model)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hspace"):
            assert edit_window("n", model, "t_edit", 400) == levels.t_edit_window(400, "n")
            assert boost_t_boost(boost, model) == 200
            assert h_storage_of("float32 on CPU", 300, model, "n").t_min == 300
            assert t_widget_timestep(500, model, "n") == 500
        assert not [r for r in caplog.records if "names entry" in r.getMessage()]
    levels = noise_levels(flux)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hspace"):
        window = edit_window("H-Space Asyrp Edit", flux, "t_edit", 400)
        assert (window.sigma_start, window.sigma_end) == (float("inf"), levels.sigma(4004))
        assert window.made_with == "t_edit=400 (entry 4004 of 10000)"
        assert boost_t_boost(boost, flux) == 2002
        assert h_storage_of("float32 on CPU", 300, flux, "H-Space Capture").t_min == 3003
        assert h_storage_of("float32 on CPU", 300).t_min == 300  # without the MODEL: the library's own t
        assert t_widget_timestep(500, flux, "H-Space Jacobian Directions") == 5005
    said = [r.getMessage() for r in caplog.records if "names entry" in r.getMessage()]
    assert said == ["H-Space: H-Space Asyrp Edit: t_edit = 400 names entry 4004 of this model's 10000-entry σ table "
                    f"(the same fraction of it: σ = {levels.sigma(4004):.4g}).",
                    "H-Space: H-Space Quality Boost: t_boost = 200 names entry 2002 of this model's 10000-entry σ "
                    f"table (the same fraction of it: σ = {levels.sigma(2002):.4g}).",
                    "H-Space: H-Space Capture: keep_h_from_t = 300 names entry 3003 of this model's 10000-entry σ "
                    f"table (the same fraction of it: σ = {levels.sigma(3003):.4g}).",
                    "H-Space: H-Space Jacobian Directions: t = 500 names entry 5005 of this model's 10000-entry σ "
                    f"table (the same fraction of it: σ = {levels.sigma(5005):.4g})."]


def test_a_trajectory_kept_from_keep_h_from_t_is_refused_naming_widget_values_on_flux(pack, flux):
    """H-Space Capture with keep_h_from_t 500 (entry 5005 of Flux's 10000) on a 4-step grid (entries 9999, 6666,
    3333, 0) keeps h at 9999 and 6666; Slerp Content Inject with t_edit 200 needs 3333, and its refusal names the
    keep_h_from_t widget values (666 captured, at most 333), not the table entries a widget cannot take."""
    from harness.tiny_dit import flux_conditioning
    from hspace_pack.nodes import injection, inversion

    x_T = {"samples": torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))}
    trajectory, _ = inversion.Capture.execute(model=flux, x_T=x_T, steps=4, cfg=1.0, edit_branches="cond",
                                              keep_h_from_t=500, positive=flux_conditioning(0)).result
    assert trajectory.timesteps == (9999, 6666)
    with pytest.raises(ValueError, match=r"holds h only for t ≥ 6666 \(it was captured with keep_h_from_t = 666 or "
                                         r"so\), but the injection needs h down to t = 3333: capture it with "
                                         r"keep_h_from_t at most 333 "):
        injection.SlerpContentInject.execute(flux, x_T, trajectory, 0.5, -1.0, 1, 4, 200, "slerp", False, 0, 1.0,
                                             "cond", positive=flux_conditioning(0))
