"""The H-Space Quality Boost's start on a MODEL's noise levels: the one resolver of the nodes' schedules
(``layer.schema.edit_schedule``) and of the SAMPLERs (``samplers.h_edit_sampler``)."""
from __future__ import annotations

from .noise_levels import noise_levels


def boost_t_boost(boost, model_patcher) -> int:
    """The t below which ``boost`` (a ``BoostSettings``) makes steps stochastic on this MODEL: its t_boost, or, for a
    start percent, the number of the model's timesteps whose σ_t is below σ(start_percent)
    (``NoiseLevels.percent_to_sigma``, as ControlNet and IPAdapter gate).  σ_t increases with t, so t < that
    number ⇔ σ_t < σ(start_percent): on every DDIM grid the percent and the t_boost it resolves to make the same
    steps stochastic.  0 without a boost."""
    if boost is None:
        return 0
    if boost.start_percent is None:
        return int(boost.t_boost)
    levels = noise_levels(model_patcher)
    return levels.count_below(levels.percent_to_sigma(boost.start_percent))
