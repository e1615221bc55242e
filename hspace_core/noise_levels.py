"""One noise-level object per model: the σ table, σ ↔ t, percent → σ, a named grid → sigmas, and how x is made
from x0 and ε at σ (the parameterisation).  Shaped like k-diffusion's ``DiscreteSchedule`` and ComfyUI's
``model_sampling``; the one home of these conversions (tests/test_noise_levels.py greps for strays).

Notation.  t = 0 … T−1 indexes the model's σ table (increasing in t); h directions and trajectories are keyed by t.
The sample at noise level σ is

    x = a(σ)·x0 + σ·ε,   a(σ) = 1 (ComfyUI's EPS, V_PREDICTION, EDM, X0 scaling: VE, Karras et al. 2022 eq. 1),
                         a(σ) = 1 − σ (CONST: rectified flow / flow matching, σ ∈ [0, 1], Flux and SD3),

``signal(σ)`` = a(σ).  What the network predicts (ε, v, x0, EDM's F) only changes how D(x, σ) ≈ x0 is read from
it, which the adapter does; the samplers see D and ``signal``.

Families (how σ between table entries and percent → σ are read, as ComfyUI's ``model_sampling`` classes do):

- "discrete" (ModelSamplingDiscrete: DDPM's ᾱ tables): σ(t) for fractional t is log-linear between entries;
  percent p → σ((1 − p)·(T − 1)) (ComfyUI writes 999.0, T − 1 of its 1000-entry tables).
- "continuous" (ModelSamplingContinuousEDM: EDM, consistency models): percent p → exp(log σ_min +
  (1 − p)·(log σ_max − log σ_min)).
- "flow" (ModelSamplingDiscreteFlow / ModelSamplingFlux): percent p → shift(1 − p), shift "sd3"
  s·u/(1 + (s − 1)·u) (``time_snr_shift``) or "flux" eˢ/(eˢ + 1/u − 1) (``flux_time_shift``, s = μ).

In every family p ≤ 0 is "before the first step" (σ above any: 999999999.9, or 1.0 for flow) and p ≥ 1 is σ = 0,
as ComfyUI returns them.  σ → t is the table entry nearest in log σ (ComfyUI's ``ModelSamplingDiscrete.timestep``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .schedules import GRID_KINDS, NoiseSchedule, timestep_grid
from .sigmas import sigmas_of

FAMILIES = ("discrete", "continuous", "flow")
# ComfyUI's model types, lower case; "consistency" is EDM-scaled (x = x0 + σ·ε) with a consistency head.
PARAMETERISATIONS = ("eps", "v", "edm", "consistency", "x0", "const")
FLOW_SHIFTS = ("sd3", "flux")
BEFORE_FIRST = 999999999.9  # ComfyUI's σ of percent 0 outside flow matching
WIDGET_T_MAX = 999  # the t widgets' range, 0 … 999: the entries of a DDPM-style 1000-entry table
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def check_percent_window(start_percent: float, end_percent: float, node: str = "") -> None:
    """The one "start ≤ end" rule of a percent window: each in [0, 1], start_percent ≤ end_percent."""
    prefix = f"{node}: " if node else ""
    for name, v in (("start_percent", start_percent), ("end_percent", end_percent)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{prefix}{name} ({v!r}) must be a number in [0, 1].")
    if start_percent > end_percent:
        raise ValueError(f"{prefix}start_percent ({start_percent}) is after end_percent ({end_percent}); the window "
                         "runs from start_percent to end_percent: lower start_percent or raise end_percent.")


@dataclass(frozen=True)
class NoiseLevels:
    """A model's noise levels (module docstring): ``table`` σ_t for t = 0 … T−1 (increasing, on the CPU, in the
    precision the model keeps it: float32 for ComfyUI, float64 for the library's ᾱ schedules), ``log_table`` its
    log (ComfyUI's ``log_sigmas``, which it takes of the table before rounding it to float32; computed if not given),
    the ``family`` that reads between entries, the ``parameterisation`` (``signal``), and a flow ``shift``."""

    table: torch.Tensor
    parameterisation: str = "eps"
    family: str = "discrete"
    shift: float = 1.0
    shift_rule: str = "sd3"
    log_table: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        table = torch.as_tensor(self.table).detach().flatten().cpu()
        if not table.is_floating_point():
            table = table.double()
        if table.numel() < 2 or not torch.isfinite(table).all() or (table <= 0).any():
            raise ValueError("A σ table needs at least 2 finite, positive noise levels.")
        if (table[1:] < table[:-1]).any():
            raise ValueError("A σ table must increase with t (noise grows with the timestep).")
        if self.family not in FAMILIES:
            raise ValueError(f"Noise-level family {self.family!r} is unknown; use one of {FAMILIES}.")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"Parameterisation {self.parameterisation!r} is unknown; use one of {PARAMETERISATIONS}.")
        if (self.parameterisation == "const") != (self.family == "flow"):
            raise ValueError("Flow matching (parameterisation 'const') and the 'flow' family go together.")
        if self.family == "flow" and (self.shift_rule not in FLOW_SHIFTS or not self.shift > 0 or float(table[-1]) > 1):
            raise ValueError(f"A flow-matching table lies in (0, 1] with a shift > 0 and a rule in {FLOW_SHIFTS}.")
        log_table = table.log() if self.log_table is None else torch.as_tensor(self.log_table).detach().flatten().cpu()
        if log_table.shape != table.shape:
            raise ValueError("log_table must have one entry per σ of the table.")
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "log_table", log_table)

    @classmethod
    def of_schedule(cls, schedule: NoiseSchedule) -> "NoiseLevels":
        """The library's ᾱ schedule (DDPM / DDIM models): σ_t = √((1 − ᾱ_t)/ᾱ_t) in float64, discrete."""
        return cls(sigmas_of(schedule.alphas_cumprod), _PREDICTIONS[schedule.prediction_type])

    # --- σ table and σ ↔ t ---
    @property
    def num_timesteps(self) -> int:
        return int(self.table.numel())

    @property
    def flow(self) -> bool:
        """Flow matching (parameterisation 'const': x = (1 − σ)·x0 + σ·ε): the one test of "is this flow" (ComfyUI's
        CONST model sampling, whatever network it drives; the nodes read it from the MODEL's ``model_sampling``)."""
        return self.parameterisation == "const"

    @property
    def sigma_min(self) -> float:
        return float(self.table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.table[-1])

    def sigma(self, t: int) -> float:
        """σ_t of table entry t (t ∈ [0, T − 1])."""
        if not 0 <= int(t) < self.num_timesteps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_timesteps - 1}].")
        return float(self.table[int(t)])

    def timesteps(self, sigmas) -> list[int]:
        """The table entry nearest in log σ to each σ (> 0) of ``sigmas``: ComfyUI's ``timestep`` of a discrete
        model, and where h edits and trajectories are looked up on any model."""
        sigmas = torch.as_tensor(sigmas, dtype=self.log_table.dtype).flatten().cpu()
        if (sigmas <= 0).any():
            raise ValueError("Only noise levels σ > 0 have a timestep; the clean sample (σ = 0) has none.")
        return (sigmas.log()[:, None] - self.log_table[None]).abs().argmin(dim=1).tolist()

    def timestep(self, sigma: float) -> int:
        """``timesteps`` of one σ; −1 (the clean sample) for σ ≤ 0."""
        return -1 if sigma <= 0 else self.timesteps([sigma])[0]

    def off_table(self, sigmas) -> int:
        """How many of ``sigmas`` (> 0) lie between table entries (relative 1e-4 from their nearest)."""
        sigmas = torch.as_tensor(sigmas, dtype=self.table.dtype).flatten().cpu()
        nearest = self.table[self.timesteps(sigmas)]
        return int(((nearest - sigmas).abs() > 1e-4 * sigmas).sum())

    def count_below(self, sigma: float) -> int:
        """How many table entries lie below σ: t < this ⇔ σ_t < σ (the table increases), so it is the t_boost of a
        boost that starts at σ."""
        return int((self.table < sigma).sum())

    # --- the t widgets (0 … 999) on this table ---
    def widget_timestep(self, t: int, name: str = "t", node: str = "") -> int:
        """The table entry a t widget (t_edit, t_boost, keep_h_from_t, the Jacobian's t) names: the entry at the same
        fraction of the table, round(t·(T − 1)/999) (halves up).  The identity on a 1000-entry table (every U-Net's
        DDPM table, SD3's flow table), so those read exactly as before; on Flux's 10000 entries, widget t is entry
        ≈ 10·t, σ ≈ σ at percent 1 − t/999 (its table is uniform in the flow time u = 1 − percent)."""
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= WIDGET_T_MAX:
            raise ValueError(f"{node + ': ' if node else ''}{name} ({t!r}) must be a whole number in "
                             f"[0, {WIDGET_T_MAX}].")
        span = self.num_timesteps - 1
        return (2 * t * span + WIDGET_T_MAX) // (2 * WIDGET_T_MAX)

    def widget_t(self, timestep: int) -> int:
        """The t widget value nearest table entry ``timestep`` (round(timestep·999/(T − 1)), halves up): the inverse
        of ``widget_timestep`` (exact on a table of ≥ 1000 entries: ``widget_timestep(widget_t(e))`` is e for every
        entry a widget names, and e itself on a 1000-entry table), for an INT output that feeds a t widget."""
        self.sigma(timestep)  # refuse a timestep off the table
        span = self.num_timesteps - 1
        return (2 * int(timestep) * WIDGET_T_MAX + span) // (2 * span)

    def widget_at_most(self, timestep: int) -> int:
        """The largest t widget value whose entry (``widget_timestep``) is at most table entry ``timestep``: what a
        refusal asking for "keep_h_from_t at most …" names (``timestep`` itself on a 1000-entry table)."""
        t = self.widget_t(timestep)
        return t if self.widget_timestep(t) <= int(timestep) else t - 1

    def widget_timesteps(self, count: int) -> tuple[int, ...]:
        """``count`` table entries spread evenly over the widget range (round(linspace(0, 999, count)), each as
        ``widget_timestep``; duplicates dropped), increasing: probes whose INT result a t widget can name exactly.
        On a 1000-entry table these are round(linspace(0, T − 1, count)), computed as before (float32, halves even)."""
        values = torch.linspace(0, WIDGET_T_MAX, count).tolist()
        return tuple(sorted({self.widget_timestep(int(round(v))) for v in values}))

    # --- percent → σ (ComfyUI's percent_to_sigma) ---
    def percent_to_sigma(self, percent: float) -> float:
        """σ at ``percent`` of the schedule (0 = its start, the noisiest; 1 = its end, σ = 0), as ComfyUI's
        ``model_sampling.percent_to_sigma`` of this family computes it, operation for operation."""
        if percent <= 0.0:
            return 1.0 if self.family == "flow" else BEFORE_FIRST
        if percent >= 1.0:
            return 0.0
        u = 1.0 - percent
        if self.family == "discrete":
            t = torch.clamp(torch.tensor(u * (self.num_timesteps - 1), dtype=self.log_table.dtype), 0,
                            self.num_timesteps - 1)
            w = t.frac()
            log_sigma = (1 - w) * self.log_table[t.floor().long()] + w * self.log_table[t.ceil().long()]
            return log_sigma.exp().item()
        if self.family == "continuous":
            log_min = math.log(self.sigma_min)
            return math.exp((math.log(self.sigma_max) - log_min) * u + log_min)
        if self.shift_rule == "flux":
            return math.exp(self.shift) / (math.exp(self.shift) + (1 / u - 1))
        return u if self.shift == 1.0 else self.shift * u / (1 + (self.shift - 1) * u)

    def sigma_to_percent(self, sigma: float) -> float:
        """The inverse of ``percent_to_sigma`` on [σ_min, σ_max] (clamped to [0, 1] outside): the percent at which
        this family's schedule reaches σ (discrete: the fractional t of log σ between table entries; continuous:
        log-linear; flow: the shift undone, u = σ/(s − (s − 1)·σ) or 1/(1 + eˢ·(1/σ − 1)))."""
        if sigma <= 0.0:
            return 1.0
        if self.family == "discrete":
            logs = self.log_table.double()
            log_sigma = min(max(math.log(sigma), float(logs[0])), float(logs[-1]))
            i = min(int(torch.searchsorted(logs, torch.tensor(log_sigma, dtype=logs.dtype), right=True)) - 1,
                    self.num_timesteps - 2)
            w = (log_sigma - float(logs[i])) / (float(logs[i + 1]) - float(logs[i]))
            u = (i + w) / (self.num_timesteps - 1)
        elif self.family == "continuous":
            log_min = math.log(self.sigma_min)
            u = (math.log(sigma) - log_min) / (math.log(self.sigma_max) - log_min)
        elif sigma >= 1.0:
            u = 1.0
        elif self.shift_rule == "flux":
            u = 1.0 / (1.0 + math.exp(self.shift) * (1.0 / sigma - 1.0))
        else:
            u = sigma / (self.shift - (self.shift - 1.0) * sigma)
        return min(max(1.0 - u, 0.0), 1.0)

    def percent_at_timestep(self, t: int) -> float:
        """The percent of the boundary just below table entry t: σ halfway in log σ between σ_{t−1} and σ_t (1.0,
        σ = 0, for t = 0).  A percent window ending there holds exactly the entries t' ≥ t (the paper's t ≥ t_edit),
        and a boost starting there makes exactly the entries t' < t stochastic (``count_below``): the one conversion
        of a timestep to the percent widgets (H-Space Auto Schedule's percent outputs)."""
        t = int(t)
        self.sigma(t)  # refuse a t off the table
        if t == 0:
            return 1.0
        return self.sigma_to_percent(math.exp(0.5 * (float(self.log_table[t - 1]) + float(self.log_table[t]))))

    def percent_window(self, start_percent: float, end_percent: float, node: str = ""):
        """The σ window of a start/end percent pair (``sampling.SigmaWindow``, σ(start) ≥ σ ≥ σ(end))."""
        from .sampling import SigmaWindow  # sampling reads NoiseLevels: imported here to keep the import one-way

        check_percent_window(start_percent, end_percent, node)
        return SigmaWindow(self.percent_to_sigma(start_percent), self.percent_to_sigma(end_percent),
                           f"percent {start_percent:.2f}–{end_percent:.2f}")

    def t_edit_window(self, t_edit: int, node: str = ""):
        """The paper's window t ≥ t_edit as a σ window: σ ≥ σ_{t_edit}."""
        from .sampling import SigmaWindow
        from .settings import t_edit_label

        if isinstance(t_edit, bool) or not isinstance(t_edit, int) or not 0 <= t_edit < self.num_timesteps:
            raise ValueError(f"{node + ': ' if node else ''}t_edit ({t_edit!r}) must be a timestep in "
                             f"[0, {self.num_timesteps - 1}].")
        return SigmaWindow(float("inf"), self.sigma(t_edit), t_edit_label(t_edit))

    # --- grids ---
    def grid(self, num_steps: int, kind: str = "asyrp") -> tuple[int, ...]:
        """The timesteps of a named grid (``schedules.timestep_grid``: Asyrp's inclusive DDIM grid first), decreasing."""
        if kind not in GRID_KINDS:
            raise ValueError(f"grid kind {kind!r} is unknown; use one of {GRID_KINDS}.")
        return timestep_grid(num_steps, self.num_timesteps, kind)

    def sigmas_at(self, timesteps) -> torch.Tensor:
        """A grid's sigmas as a sampler takes them: σ_t of each (decreasing) timestep, then 0 (CPU, table dtype)."""
        return torch.cat([self.table[list(timesteps)], self.table.new_zeros(1)])

    def grid_sigmas(self, num_steps: int, kind: str = "asyrp") -> torch.Tensor:
        """``sigmas_at`` of the named grid of ``num_steps``."""
        return self.sigmas_at(self.grid(num_steps, kind))

    # --- parameterisation ---
    def signal(self, sigma):
        """a(σ), the coefficient of x0 in x = a(σ)·x0 + σ·ε: 1, or 1 − σ for flow matching (CONST).  σ may be a
        float or a tensor."""
        return 1 - sigma if self.flow else 1.0

    def unit_scale(self, sigma: float) -> float:
        """√(a(σ)² + σ²): the factor from the pack's unit-variance sample x_t (the VP convention x_T and the
        processes' results are kept in) to the model's point x = a(σ)·x0 + σ·ε at the same σ: √(1 + σ²) = 1/√ᾱ
        (``sigmas.ve_scale``) on x = x0 + σ·ε, √((1 − σ)² + σ²) for flow matching (1 at σ = 1, where x is the noise)."""
        a = self.signal(sigma)
        return math.sqrt(a * a + sigma * sigma)

    # --- the quality boost's start on these levels ---
    def boost_t_boost(self, boost) -> int:
        """The t below which ``boost`` (a ``settings.BoostSettings``, or None: 0) makes steps stochastic: its t_boost
        widget on this table (``widget_timestep``), or, for a start percent, how many table entries lie below
        σ(start_percent) (``count_below``).  σ_t increases with t, so t < that number ⇔ σ_t < σ(start_percent): on
        every grid the percent and the t_boost it resolves to make the same steps stochastic."""
        if boost is None:
            return 0
        if boost.start_percent is None:
            return self.widget_timestep(int(boost.t_boost), "t_boost", "H-Space Quality Boost")
        return self.count_below(self.percent_to_sigma(boost.start_percent))
