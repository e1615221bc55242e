"""What the widgets' values mean for a run, resolved where the run's MODEL is known: the edit window (the paper's t_edit
or core's start/end percent, on the MODEL's ``NoiseLevels``), the H-Space Quality Boost's start and seed, the node's
edit schedule, the γ ramp's end, the h storage, and list widgets' values.  The widgets themselves are built in
``schema``; this module reads them (one way: ``schema`` never imports it)."""
from __future__ import annotations

import dataclasses
import logging

from ...hspace_core import EditSchedule, HStorage
from ...hspace_core.noise_levels import check_percent_window
from ...hspace_core.sampling import SigmaWindow, schedule_in_window
from ...hspace_core.settings import t_edit_label
from ..comfy.noise_levels import boost_t_boost, noise_levels, widget_timestep
from .checks import ValueList, check_option, parse_list
from .schema import H_STORAGES, WINDOWS

log = logging.getLogger("hspace")


# --- the edit window and the boost's start, on the MODEL's noise levels ---
def check_window(inputs: dict, node: str = "") -> None:
    """A percent window runs from start_percent to end_percent (checked for every node before it runs; ``node``
    prefixes the message where the caller's own message does not name it)."""
    if inputs.get("window") != "percent":
        return
    check_percent_window(inputs.get("start_percent", 0.0), inputs.get("end_percent", 0.6), node)


def edit_window(node: str, model_patcher, window: str = "t_edit", t_edit: int = 400, start_percent: float = 0.0,
                end_percent: float = 0.6) -> SigmaWindow:
    """The edit window in σ, the one resolver of every node's window widgets: the paper's t ≥ t_edit (σ ≥ σ of the
    table entry the t_edit widget names, ``t_widget_timestep``: t_edit itself on a 1000-entry table), or core's
    start/end percent of the schedule (``NoiseLevels.percent_to_sigma``, as IPAdapter and ControlNet gate).
    ``made_with`` says which ("t_edit=400", "t_edit=400 (entry 4004 of 10000)", "percent 0.00–0.60")."""
    check_option("window", window, WINDOWS)
    levels = noise_levels(model_patcher)
    if window == "percent":
        return levels.percent_window(start_percent, end_percent, node)
    entry = widget_timestep(levels, t_edit, "t_edit", node)
    span = levels.t_edit_window(entry, node)
    if entry == t_edit:
        return span
    return dataclasses.replace(span, made_with=f"{t_edit_label(t_edit)} (entry {entry} of {levels.num_timesteps})")


def boost_of(boost, model_patcher=None) -> tuple[int, float]:
    """(t_boost, η) of a connected H-Space Quality Boost (0, 1 without one): its t_boost widget, or its
    boost_start_percent, resolved on the MODEL's noise levels (``comfy.noise_levels.boost_t_boost``, the SAMPLERs'
    resolver too: a t_boost names the entry at its fraction of the table, itself on a 1000-entry one)."""
    if boost is None:
        return 0, 1.0
    if boost.start_percent is None and model_patcher is None:
        return boost.t_boost, boost.eta
    if model_patcher is None:
        raise ValueError("the H-Space Quality Boost's boost_start_percent is resolved on the MODEL's noise levels; pass "
                         "the MODEL (or set the boost's window to t_boost).")
    t_boost = boost_t_boost(boost, model_patcher)
    if t_boost >= noise_levels(model_patcher).num_timesteps:
        raise ValueError(f"the H-Space Quality Boost's boost_start_percent ({boost.start_percent}) makes every step "
                         "stochastic, the edit's too: raise boost_start_percent on the H-Space Quality Boost node.")
    return t_boost, boost.eta


def _boost_said(boost, t_boost: int) -> str:
    """The boost's start in the user's words (its widget), for a refusal."""
    if boost.start_percent is None:
        return f"the H-Space Quality Boost's t_boost ({t_boost})"
    return f"the H-Space Quality Boost's boost_start_percent ({boost.start_percent}, stochastic below t = {t_boost})"


def edit_schedule(steps: int, t_edit: int, boost, model_patcher=None, window: str = "t_edit",
                  start_percent: float = 0.0, end_percent: float = 0.6, node: str = "") -> EditSchedule:
    """The node's schedule, with the H-Space Quality Boost's start (``boost_of``: t_boost or a start percent) and η
    when one is connected, and its edit window: window = 't_edit' edits t ≥ t_edit as the paper does (the record
    ``made_with`` aside, today's schedule, so results are bit-identical); 'percent' edits the grid timesteps whose σ
    lies in the window (``sampling.schedule_in_window``: one rule for every node whose loop runs on the DDIM grid).
    On a flow model the grid is its own σ table's (Flux: 10000 entries) and either window acts on its sigmas, as
    the SAMPLERs' window does (``edit_window``)."""
    t_boost, eta = boost_of(boost, model_patcher)
    levels = noise_levels(model_patcher) if model_patcher is not None else None
    if window == "t_edit" and (levels is None or not levels.flow):
        if boost is not None and t_edit < t_boost:
            fix = "lower t_boost" if boost.start_percent is None else "raise boost_start_percent"
            raise ValueError(f"t_edit ({t_edit}) is below {_boost_said(boost, t_boost)}: raise t_edit on this node or "
                             f"{fix} on the H-Space Quality Boost node.")
        # with the MODEL, its σ table bounds t_edit (edit_window); without, EditSchedule's own range check does
        made_with = (t_edit_label(t_edit) if model_patcher is None
                     else edit_window(node, model_patcher, window, t_edit).made_with)
        return EditSchedule(steps, t_edit=t_edit, t_boost=t_boost, eta_boost=eta, made_with=made_with)
    if levels is None:
        raise ValueError(f"{node}: a percent window is resolved on the MODEL's noise levels; pass the MODEL.")
    span = edit_window(node, model_patcher, window, t_edit, start_percent, end_percent)
    # the grid on the MODEL's table (Flux: 10000); schedule_in_window sets t_edit to the window's lowest step
    schedule = EditSchedule(steps, t_edit=t_boost, t_boost=t_boost, eta_boost=eta,
                            num_train_timesteps=levels.num_timesteps)
    return schedule_in_window(schedule, span, levels.sigma)


def window_timesteps(steps: int, model_patcher, start_percent: float, end_percent: float,
                     node: str = "") -> tuple[int, ...]:
    """The timesteps of the DDIM grid of ``steps`` whose σ lies in a percent window (``edit_schedule``'s rule, its
    refusals included), for a loop that takes timesteps (CLIP training, StyleID's h injection)."""
    return edit_schedule(steps, 0, None, model_patcher, "percent", start_percent, end_percent, node).edit_timesteps


def grid_window(steps: int, model_patcher, start_percent: float, end_percent: float, node: str = "") -> tuple[int, int]:
    """A percent window as a window in t on the DDIM grid of ``steps`` (StyleID's t_start ≥ t ≥ t_stop): the highest
    and lowest of its ``window_timesteps`` (contiguous on the grid, so the t window holds exactly those steps)."""
    inside = window_timesteps(steps, model_patcher, start_percent, end_percent, node)
    return max(inside), min(inside)


def t_widget_timestep(t: int, model_patcher, node: str = "", name: str = "t") -> int:
    """A t widget (0 … 999) on the MODEL's σ table: the entry at the same fraction of the table
    (``NoiseLevels.widget_timestep``: t itself on a 1000-entry table, U-Nets and SD3; ≈ 10·t on Flux's 10000),
    logged where the table is not 1000 entries long."""
    return widget_timestep(noise_levels(model_patcher), t, name, node)


# --- seed, γ ramp, h storage, list values ---
def seed_of(seed: int, boost) -> int:
    """``schema.BOOST_SEED_RULE``: a connected H-Space Quality Boost's seed replaces the node's own."""
    if boost is None:
        return seed
    if boost.seed != seed:
        log.info("h-space: using the H-Space Quality Boost's seed %s instead of the node's seed %s.", boost.seed, seed)
    return boost.seed


def gamma_end_of(gamma: float, gamma_end: float) -> float:
    """gamma_end as the ramp's end: exactly −1 means constant γ; other negatives are refused, not read as −1."""
    if gamma_end == -1.0:
        return gamma
    if not 0.0 <= gamma_end <= 1.0:
        raise ValueError(f"gamma_end is {gamma_end}: set it to −1 (γ stays constant) or to a value in [0, 1].")
    return gamma_end


def h_storage_of(h_storage: str, keep_h_from_t: int, model_patcher=None, node: str = "") -> HStorage:
    """The h storage of the h_storage and keep_h_from_t widgets (``schema.h_storage_inputs``); with the MODEL,
    keep_h_from_t names the entry of its table at the same fraction (``t_widget_timestep``, the t_edit rule, so the
    t_edit a trajectory is kept for reads it)."""
    check_option("h_storage", h_storage, list(H_STORAGES))
    t_min = keep_h_from_t if model_patcher is None else t_widget_timestep(keep_h_from_t, model_patcher, node,
                                                                            "keep_h_from_t")
    return dataclasses.replace(H_STORAGES[h_storage], t_min=t_min)


def values_of(text: str, name: str, spec: ValueList) -> list:
    """The values of a list widget (already checked by the base node; parsed again here)."""
    return parse_list(text, name, spec)


def sweep_text(values) -> str:
    """The values a sweep node ran, as the comma-separated text H-Space Label Sweep Grid reads."""
    return ", ".join(f"{v:g}" for v in values)
