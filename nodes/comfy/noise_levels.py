"""A ComfyUI ``model_sampling`` as the library's ``NoiseLevels``: the one reader of a MODEL's σ table, family and
parameterisation (every σ ↔ t and percent → σ of the nodes then goes through the object), and the H-Space Quality
Boost's start on a MODEL."""
from __future__ import annotations

import logging

import comfy.model_sampling as cms

from ...hspace_core.noise_levels import WIDGET_T_MAX, NoiseLevels

log = logging.getLogger("hspace")

# ComfyUI's prediction mixins, most derived first (EDM is a V_PREDICTION, V_PREDICTION and X0 are EPS).
_PARAMETERISATIONS = (("CONST", "const"), ("EDM", "edm"), ("V_PREDICTION", "v"), ("X0", "x0"), ("EPS", "eps"))


def levels_of_sampling(model_sampling) -> NoiseLevels:
    """``NoiseLevels`` of a ``model_sampling`` object: its ``sigmas`` and ``log_sigmas`` (float32, as ComfyUI keeps
    them), its family by class (ModelSamplingDiscrete, ModelSamplingContinuousEDM / V, ModelSamplingDiscreteFlow,
    ModelSamplingFlux) and its prediction mixin."""
    name = type(model_sampling).__name__
    param = next((p for mixin, p in _PARAMETERISATIONS if isinstance(model_sampling, getattr(cms, mixin, ()))), None)
    if param is None:
        raise ValueError(f"This MODEL's sampling ({name}) predicts something the pack cannot read; use a model with "
                         "ComfyUI's EPS, V_PREDICTION, EDM, X0 or CONST sampling.")
    flux, flow = getattr(cms, "ModelSamplingFlux", ()), getattr(cms, "ModelSamplingDiscreteFlow", ())
    if isinstance(model_sampling, (flux, flow)):
        family, rule = "flow", "flux" if isinstance(model_sampling, flux) else "sd3"
    elif isinstance(model_sampling, cms.ModelSamplingContinuousEDM):
        family, rule = "continuous", "sd3"
    elif all(getattr(type(model_sampling), f) is getattr(cms.ModelSamplingDiscrete, f) for f in ("percent_to_sigma", "sigma")):
        family, rule = "discrete", "sd3"
    else:
        raise ValueError(f"This MODEL's sampling ({name}) reads its noise levels in a way the pack does not know; use "
                         "a model with a discrete (DDPM), continuous (EDM) or flow-matching schedule.")
    sigmas = model_sampling.sigmas.detach().float().cpu()
    log_sigmas = getattr(model_sampling, "log_sigmas", None)
    return NoiseLevels(sigmas, param, family, float(getattr(model_sampling, "shift", 1.0)), rule,
                       None if log_sigmas is None else log_sigmas.detach().float().cpu())


def noise_levels(model_patcher) -> NoiseLevels:
    """The noise levels of a MODEL (its ``model_sampling`` object patch included): read once, before a loop."""
    return levels_of_sampling(model_patcher.get_model_object("model_sampling"))


def widget_timestep(levels: NoiseLevels, t: int, name: str = "t", node: str = "") -> int:
    """``NoiseLevels.widget_timestep`` (a t widget, 0 … 999, as the entry at the same fraction of the table), logged
    where the table is not the widget's 1000 entries (Flux: 10000), so the conversion is never silent."""
    entry = levels.widget_timestep(int(t), name, node)
    _log_widget(levels, int(t), entry, name, node)
    return entry


def _log_widget(levels: NoiseLevels, t: int, entry: int, name: str, node: str) -> None:
    if levels.num_timesteps != WIDGET_T_MAX + 1:
        log.info("H-Space: %s: %s = %d names entry %d of this model's %d-entry σ table (the same fraction of it: "
                 "σ = %.4g).", node or "node", name, t, entry, levels.num_timesteps, levels.sigma(entry))


def boost_t_boost(boost, model_patcher) -> int:
    """``NoiseLevels.boost_t_boost`` on this MODEL: the one resolver of the boost's start, for the nodes' schedules
    (``layer.resolution.boost_of``) and the SAMPLERs (``samplers.h_edit_sampler``); a t_boost widget is read by
    ``widget_timestep`` (logged off a 1000-entry table)."""
    levels = noise_levels(model_patcher)
    t_boost = levels.boost_t_boost(boost)
    if boost is not None and boost.start_percent is None:
        _log_widget(levels, int(boost.t_boost), t_boost, "t_boost", "H-Space Quality Boost")
    return t_boost
