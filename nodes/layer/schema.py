"""Widget factories: the pack's custom types and the inputs many nodes share (model, conditioning, steps, site, t_edit
and the edit window, h storage, seed, x_T, lists of values).  They only build inputs; what a widget's value means
for a run (the window on the MODEL's noise levels, the boost's seed, the h storage) is read in ``resolution``.  What
a helper marks here (an x_T, a list's bounds) the base node checks."""
from __future__ import annotations

from comfy_api.latest import io

from ...hspace_core import INVERSION_CONVENTIONS, HStorage
from ...hspace_core.sites import DEFAULT_SITE, site_choices
from .checks import ValueList

CATEGORY = "h-space"
PREFIX = "HSpace"

Trajectory = io.Custom("HSPACE_TRAJECTORY")
DirectionType = io.Custom("HSPACE_DIRECTION")
Calibration = io.Custom("HSPACE_CALIBRATION")
Boost = io.Custom("HSPACE_BOOST")
DirectionSet = io.Custom("HSPACE_DIRECTIONS")  # a tuple of Direction (PCA / Jacobian directions)

BOOST_SEED_RULE = "When an H-Space Quality Boost is connected, its seed replaces this node's seed."
STRENGTH_RANGE = (-100.0, 100.0)

# The bounds of list widgets: one run (steps U-Net passes) per value; a sweep grid wider than this is unreadable.
STRENGTHS = ValueList(*STRENGTH_RANGE, max_count=32, example="-2, -1, 0, 1, 2")
GAMMAS = ValueList(0.0, 1.0, max_count=32, example="0.2, 0.4, 0.6")
T_EDITS = ValueList(0, 999, max_count=16, example="600, 400, 200", whole=True)
EXPLORER_STRENGTHS = ValueList(*STRENGTH_RANGE, max_count=16, example="-2, -1, 0, 1, 2", optional=False)
GRID_VALUES = ValueList(-1e6, 1e6, max_count=64, example="-2, -1, 0, 1, 2", optional=False)
GRID_ROWS = ValueList(-1e6, 1e6, max_count=64, example="0.3, 0.6")


def advanced(widget):
    """Mark an expert setting: the editor hides it until the node menu's "Show Advanced".  Newer ComfyUI schemas have
    the flag (``Input(..., advanced=True)``); older ones (0.3.75) carry it in the input's extra_dict, and
    web/advanced_widgets.js lifts it onto the widget (docs/compatibility.md)."""
    if hasattr(widget, "advanced"):
        widget.advanced = True
    else:
        widget.extra_dict = {**widget.extra_dict, "advanced": True}
    return widget


def values_input(name: str, spec: ValueList, tooltip: str, default: str = "", optional: bool = True):
    """A comma-separated list widget with bounds the base node checks (said at the end of the tooltip)."""
    widget = io.String.Input(name, default=default, optional=optional, tooltip=f"{tooltip} ({spec.describe()}.)")
    widget.hspace_values = spec
    return widget


def x_T_input(name: str = "x_T", tooltip: str = "Inverted latent from DDIM Inversion (or noise)."):
    """A LATENT the node samples from: the base node checks its model (channels, fingerprint), then its grid against
    ``steps``, then its guidance, in that order, before the node runs."""
    widget = io.Latent.Input(name, tooltip=tooltip)
    widget.hspace_x_T = True
    return widget


def is_x_T(spec) -> bool:
    return getattr(spec, "hspace_x_T", False)


def allow_other_model_input(what: str = "direction"):
    return advanced(io.Boolean.Input(
        "allow_other_model", default=False, optional=True,
        tooltip=f"Apply a {what} made with another model (other weights), e.g. on a fine-tuned or LoRA-patched "
                f"version of it. Off: such a {what} is refused."))


def model_input():
    return io.Model.Input("model", tooltip="An SD1.x/SD2.x/SDXL MODEL, or a pixel U-Net from 'H-Space Load Pixel U-Net'.")


def conditioning_inputs():
    return [
        io.Conditioning.Input("positive", optional=True,
                              tooltip="Text conditioning (SD models). Leave empty for pixel U-Nets."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Negative conditioning, needed when cfg ≠ 1."),
        advanced(io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance scale; 1 runs only the positive branch (best for inversion).")),
        advanced(io.Combo.Input("edit_branches", options=["cond", "uncond", "both"], default="cond",
                       tooltip="Under CFG, which branch's h is edited or injected.")),
    ]


def mixing_inputs():
    """A content injection's optional region, calibration and boost, and its expert knobs (mode, per_channel)."""
    return [
        io.Mask.Input("mask", optional=True,
                      tooltip="Local mixing: 1 = inject here, 0 = keep the style image. Any size; soft edges allowed."),
        Calibration.Input("calibration", optional=True, tooltip="H-Space Style Calibrate settings (ω)."),
        Boost.Input("boost", optional=True, tooltip="H-Space Quality Boost settings. " + BOOST_SEED_RULE),
        advanced(io.Combo.Input("mode", options=["slerp", "replace"], default="slerp",
                                tooltip="'replace' is the naive baseline h̃ = h_content.")),
        advanced(io.Boolean.Input("per_channel", default=False, tooltip="Normalise and slerp each channel separately.")),
    ]


def steps_input(default: int = 40):
    return io.Int.Input("steps", default=default, min=2, max=1000,
                        tooltip="DDIM steps on Asyrp's grid over [0, 999]. Use the same number for inversion and editing.")


def site_input():
    """Which block is h (advanced; the last input, so saved workflows keep their widget order)."""
    return advanced(io.Combo.Input(
        "site", options=list(site_choices()), default=DEFAULT_SITE, optional=True,
        tooltip="Which block is h. U-Net: 'middle' (the bottleneck, Asyrp's h-space) or the output of the first / "
                "second decoder level ('up1', 'up2': finer, often more semantic on Stable Diffusion). Transformer: "
                "'middle' means the middle joint block's attention output (Flux.1 double.9.attn, SD3 medium "
                "joint.12.attn; FluxSpace's space), or name a block: double.<i>[.attn] / single.<i> (Flux), "
                "joint.<i>[.attn] (SD3.x); a block the model lacks is refused. What this node makes carries its "
                "site; nodes that use it read h there."))


def convention_input():
    """Where each DDIM inversion step takes ε (advanced; ``hspace_core.INVERSION_CONVENTIONS``)."""
    return advanced(io.Combo.Input(
        "convention", options=list(INVERSION_CONVENTIONS), default="seed", optional=True,
        tooltip="'seed': ε at the current point, as Asyrp / InjectFusion / Diffusion Autoencoders (better); "
                "'diffusers': ε at the next timestep."))


def latent_nudging_input():
    """Stable Flow's latent nudging before a flow inversion (advanced; ``flow.nudge_latent``; 1 = off)."""
    return advanced(io.Float.Input(
        "latent_nudging", default=1.0, min=1.0, max=2.0, step=0.01, optional=True,
        tooltip="Flow models (Flux, SD3.x) only: multiply the clean latent by this before inverting (Stable Flow's "
                "latent nudging; 1.15 there), which conditions Euler inversion better; the reverse pass then lands on "
                "the nudged latent, as in Stable Flow. 1 is off."))


def t_edit_input(default: int = 400):
    return io.Int.Input("t_edit", default=default, min=0, max=999,
                        tooltip="h is changed for t ≥ t_edit. Earlier (larger) t_edit gives stronger, coarser "
                                "changes. On Flux (a 10000-entry σ table) t_edit names the entry at the same "
                                "fraction of the table (≈ 10·t_edit); on SD3 and U-Nets, itself.")


WINDOWS = ["t_edit", "percent"]
KV_WINDOWS = ["t_start/t_stop", "percent"]  # StyleID's K/V window
_WINDOW_TIP = ("How the {what} window is given: '{paper}' (the paper's {said}, on the model's 1000-step table) or "
               "'percent' (start/end percent of the schedule, as ControlNet and IPAdapter gate: meaningful on any "
               "scheduler).")
_PAPER_WINDOWS = {"t_edit": ("edit", "timestep, edits for t ≥ t_edit"),
                  "t_start/t_stop": ("K/V injection", "timesteps, t_start ≥ t ≥ t_stop")}


def _window_tip(paper: str = "t_edit") -> str:
    what, said = _PAPER_WINDOWS[paper]
    return _WINDOW_TIP.format(what=what, paper=paper, said=said)


def percent_inputs(what: str = "edit", end_default: float = 0.6, optional: bool = False,
                   in_window: bool = False):
    """start_percent and end_percent of the schedule (core's percent, as ControlNet and IPAdapter gate); with
    ``in_window`` their tooltips say they apply when the node's window widget is 'percent'."""
    where = "window = percent: where" if in_window else "Where"
    return [io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=optional,
                           tooltip=f"{where} the {what} starts (0 = the first, noisiest step)."),
            io.Float.Input("end_percent", default=end_default, min=0.0, max=1.0, step=0.01, optional=optional,
                           tooltip=f"{where} the {what} ends (1 = the last step).")]


def sampler_window_inputs(end_default: float = 0.6):
    """The SAMPLER nodes' edit window, in this order: window, t_edit, start_percent, end_percent."""
    return [io.Combo.Input("window", options=WINDOWS, default="t_edit", tooltip=_window_tip()),
            io.Int.Input("t_edit", default=400, min=0, max=999,
                         tooltip="window = t_edit: h is changed for t ≥ t_edit (larger = stronger, coarser changes)."),
            *percent_inputs(end_default=end_default, in_window=True)]


def window_inputs(end_default: float = 0.6, grid_note: str = "", paper: str = "t_edit"):
    """The window for a node that has its paper's-t widgets already (``paper``: 't_edit', or StyleID's
    't_start/t_stop'): window (default the paper's, so saved workflows and their images are unchanged),
    start_percent, end_percent; advanced, optional, for the END of its inputs.  On a DDIM grid a percent window acts
    at the grid timesteps whose σ lies in it (``resolution.edit_schedule``, ``resolution.grid_window``)."""
    note = grid_note or " On this node's DDIM grid: the steps whose σ lies in [σ(end_percent), σ(start_percent)]."
    options = WINDOWS if paper == "t_edit" else KV_WINDOWS
    return [advanced(io.Combo.Input("window", options=options, default=paper, optional=True,
                                    tooltip=_window_tip(paper) + note)),
            *(advanced(w) for w in percent_inputs(_PAPER_WINDOWS[paper][0], end_default, optional=True,
                                                  in_window=True))]


BOOST_WINDOWS = ["t_boost", "percent"]


def boost_window_inputs():
    """The H-Space Quality Boost's start as the paper's t_boost (default: saved workflows unchanged) or as a start
    percent of the schedule; advanced, optional, for the END of its inputs.  Resolved on the MODEL of the node it
    is connected to (``resolution.boost_of``)."""
    return [advanced(io.Combo.Input(
                "window", options=BOOST_WINDOWS, default="t_boost", optional=True,
                tooltip="How the boost's start is given: 't_boost' (the paper's timestep: t < t_boost is stochastic) "
                        "or 'percent' (boost_start_percent of the schedule, as ControlNet and IPAdapter gate).")),
            advanced(io.Float.Input(
                "boost_start_percent", default=0.8, min=0.0, max=1.0, step=0.01, optional=True,
                tooltip="window = percent: the steps whose σ is below σ(boost_start_percent) are stochastic (1 = "
                        "none, 0 = all). It must start after the edit window ends."))]


H_STORAGES = {"model's precision on CPU": HStorage("model", "cpu"), "model's precision on the model's device":
              HStorage("model", "model"),
              "float32 on CPU": HStorage("float32", "cpu"), "float16 on CPU": HStorage("float16", "cpu"),
              "float16 on the model's device": HStorage("float16", "model"),
              "float32 on the model's device": HStorage("float32", "model")}
# Lossless (docs/benchmarks.md): float16 when the model runs in float16 (most GPUs), float32 on a float32 CPU run.
DEFAULT_H_STORAGE = "model's precision on CPU"


def h_storage_inputs():
    """How a node that records h keeps it (docs/benchmarks.md measures the choices)."""
    return [advanced(io.Combo.Input("h_storage", options=list(H_STORAGES), default=DEFAULT_H_STORAGE, optional=True,
                                    tooltip="Precision and place of the h trajectory. The model's precision loses "
                                            "nothing (float16 when the model runs in float16); float16 halves "
                                            "float32's memory; "
                                            "the model's device (a GPU) saves the copies to the CPU but keeps it "
                                            "in GPU memory.")),
            advanced(io.Int.Input("keep_h_from_t", default=0, min=0, max=999, optional=True,
                                  tooltip="Keep h only at t ≥ this: the t_edit of the injection or interpolation "
                                          "that will use it (they read no other step). 0 keeps every step. On "
                                          "Flux it names the entry at the same fraction of its 10000-entry σ "
                                          "table, as t_edit does."))]


def seed_input(tooltip: str = "Seed for the stochastic (quality boost) steps."):
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)
