"""The settings of a process, frozen and validated: Asyrp's three-phase schedule, InjectFusion's style calibration
and Asyrp's quality boosting."""
from __future__ import annotations

from dataclasses import dataclass

from .schedules import timestep_grid


def t_edit_label(t_edit: int) -> str:
    """How a paper's-t edit window (t ≥ t_edit) is recorded in ``made_with``."""
    return f"t_edit={int(t_edit)}"


def grid_label(timesteps, t_min: int = 0, sigmas=None) -> str:
    """How a trajectory or an x_T records the grid it was made on (``made_with``): "40 steps, t = 999 … 0", with
    ", σ = 14.6 … 0.0292" when it was made on a SAMPLER's sigmas and ", h kept for t ≥ 400" when h was kept only
    from a timestep on."""
    ts = [int(t) for t in timesteps]
    said = f"{len(ts)} steps, t = {ts[0]} … {ts[-1]}" if ts else "no steps"
    if sigmas is not None:
        positive = [float(s) for s in sigmas if float(s) > 0]
        said += f", σ = {max(positive):.4g} … {min(positive):.4g}" if positive else ""
    return said + (f", h kept for t ≥ {int(t_min)}" if t_min else "")


@dataclass(frozen=True)
class EditSchedule:
    """The three phases of Asyrp's process: [T, t_edit] edit, (t_edit, t_boost] plain DDIM, (t_boost, 0] boost.

    ``eta`` is the DDIM η outside the boost phase (0 = deterministic); ``eta_boost`` is used for t < t_boost.
    ``clip_x0`` clips every predicted x0 to [−clip_x0, clip_x0] (pixel models sampled from pure noise; never for
    latents); None leaves P_t unclipped, which keeps reconstructions of inversions exact.
    """

    num_steps: int = 40
    t_edit: int = 400
    t_boost: int = 0
    eta: float = 0.0
    eta_boost: float = 1.0
    grid: str = "asyrp"
    num_train_timesteps: int = 1000
    clip_x0: float | None = None
    # A percent window on this grid (``sampling.schedule_in_window``): the timesteps that edit, replacing t ≥ t_edit.
    edit_timesteps: tuple[int, ...] | None = None
    made_with: str = ""  # how the window was given ("t_edit=400", "percent 0.00–0.60"); no effect on the math

    def __post_init__(self):
        if self.clip_x0 is not None and not self.clip_x0 > 0:
            raise ValueError(f"clip_x0 must be > 0 (e.g. 1 for images in [-1, 1]) or None, got {self.clip_x0}.")
        T = self.num_train_timesteps
        if not 1 <= self.num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {self.num_steps}.")
        for name in ("t_edit", "t_boost"):
            v = getattr(self, name)
            if not 0 <= v <= T - 1:
                raise ValueError(f"{name} must be a timestep in [0, {T - 1}], got {v}.")
        if self.t_edit < self.t_boost:
            raise ValueError(
                f"t_edit ({self.t_edit}) is below t_boost ({self.t_boost}): the edit interval [T, t_edit] must end "
                "before quality boosting starts. Raise t_edit or lower t_boost."
            )
        for name in ("eta", "eta_boost"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}.")

    @classmethod
    def reconstruction(cls, num_steps: int, grid: str = "asyrp", num_train_timesteps: int = 1000) -> "EditSchedule":
        """The deterministic reverse process with no edit and no boost (regenerating an inverted x_T)."""
        return cls(num_steps, t_edit=0, t_boost=0, grid=grid, num_train_timesteps=num_train_timesteps)

    def timesteps(self) -> tuple[int, ...]:
        return timestep_grid(self.num_steps, self.num_train_timesteps, self.grid)

    def eta_at(self, t: int) -> float:
        return self.eta_boost if t < self.t_boost else self.eta

    def edits_at(self, t: int) -> bool:
        """t ≥ t_edit (the paper's window), or t in ``edit_timesteps`` when a percent window set them."""
        return t >= self.t_edit if self.edit_timesteps is None else t in self.edit_timesteps


@dataclass(frozen=True)
class StyleCalibration:
    """InjectFusion's style calibration strength ω (see ``ddim.calibrated_x_t``), as in the official code:
    ω = 0 turns calibration off (the plain asymmetric injection step); for ω in (0, 1] x_t is moved by
    dx = √ᾱ·dP + ω·√(1−ᾱ)·dε and the step is taken with the unedited network.  ω = 1 cancels the move up to the
    std renormalisation of P'_t, so it stays close to (not equal to) the style image's reconstruction."""

    omega: float = 0.3

    def __post_init__(self):
        if not 0 <= self.omega <= 1:
            raise ValueError(f"ω must be in [0, 1], got {self.omega}.")


@dataclass(frozen=True)
class BoostSettings:
    """Asyrp's quality boosting: stochastic DDIM (η) for t < t_boost, noise from ``seed``.

    ``start_percent`` (None: t_boost gates) gives the boost's start as a percent of the schedule instead, as
    ComfyUI's start/end percent: the steps whose σ is below σ(start_percent) are stochastic.  It needs a model's
    noise levels, so it is resolved where the model is known (``NoiseLevels.boost_t_boost``)."""

    t_boost: int = 200
    eta: float = 1.0
    seed: int = 0
    start_percent: float | None = None

    def __post_init__(self):
        if not 0 <= self.eta <= 1:
            raise ValueError(f"η must be in [0, 1], got {self.eta}.")
        if self.t_boost < 0:
            raise ValueError(f"t_boost must be ≥ 0, got {self.t_boost}.")
        if self.start_percent is not None and not 0 <= self.start_percent <= 1:
            raise ValueError(f"The boost's start percent must be in [0, 1], got {self.start_percent}.")

    @property
    def made_with(self) -> str:
        """How the boost's start was given ("t_boost=200", "boost percent 0.80")."""
        return f"t_boost={self.t_boost}" if self.start_percent is None else f"boost percent {self.start_percent:.2f}"
