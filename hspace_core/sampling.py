"""The h-space processes as samplers over explicit sigmas (k-diffusion's shape: ``sample(denoise, x, sigmas)``).

Derivation (why the pack's DDIM is a σ-space sampler).  With ᾱ = 1/(1 + σ²) and x = x_t/√ᾱ (``sigmas``), the
deterministic DDIM step (Song et al. 2021, eq. 12)

    x_{t−1} = √ᾱ_{t−1}·P_t + √(1 − ᾱ_{t−1})·ε,     P_t = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t

divided by √ᾱ_{t−1} reads x_next = P + σ_next·ε, and P_t = x − σ·ε = D(x, σ) is the denoiser's x0.  With
ε = (x − D)/σ that is x_next = x + (σ_next − σ)·(x − D)/σ: one Euler step of the probability-flow ODE
dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, eq. 4 / Alg. 1), exact on any σ grid, not only DDPM's.

Asyrp's asymmetric reverse process (Kwon et al. 2023, eq. 4) takes P_t from the edited prediction ε(x_t | h̃_t) and
the direction D_t from the original ε(x_t | h_t).  In σ space:

    x_next = D(x | h̃) + σ_next·(x − D(x | h))/σ

(``asymmetric_step``).  On the DDIM grid it is ``ddim.ddim_step(..., eps_direction=eps)`` after the VP ↔ VE
conversion; on any other grid (karras, exponential, AYS) it is the same ODE step with the edited x0.  The stochastic
DDIM step (η > 0, Asyrp's quality boost) is converted the same way (``ddim_sigma_step``).

Flow matching (ComfyUI's CONST: Flux, SD3).  The sample is x = a(σ)·x0 + σ·ε with a(σ) = 1 − σ
(``NoiseLevels.signal``), and the model's input is x itself.  DDIM's step keeps ε and moves x0's weight:

    x_next = a(σ_next)·D(x | h̃) + σ_next·ε̂,     ε̂ = (x − a(σ)·D(x | h))/σ.

With D̃ = D this is x·σ_next/σ + D·(a(σ_next) − σ_next·a(σ)/σ) = x·σ_next/σ + D·(1 − σ_next/σ) for a = 1 and for
a = 1 − σ alike: the Euler step x + (σ_next − σ)·(x − D)/σ, ComfyUI's ``euler`` on either.  The edit adds
a(σ_next)·(D̃ − D): Euler + (1 − σ_next)·(D̃ − D) for flow matching, not VE's Euler + (D̃ − D)
(``asymmetric_step`` with ``signal_next`` = a(σ_next)).  The inverse step (DDIM §4.3) is the same move from the other end: with ε̂ at the
current point it is again the Euler step x + (σ_next − σ)·(x − D)/σ, on increasing sigmas (``flow.invert_flow``).
The stochastic step (η > 0, the quality boost) is DDIM's generalised posterior on the Gaussian path
(α, σ) = (1 − σ, σ) (``flow.flow_eta_sigma``, ``flow.flow_ddim_step``: the VP step under x_vp = x/√(a² + σ²)).
InjectFusion's style calibration is the VP move under the same change of variables, a(σ) times the VE move
(``_calibrated``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .ddim import ddim_sigma, std_matched
from .noise_levels import NoiseLevels
from .settings import EditSchedule
from .sigmas import alpha_bar_of_sigma, eps_of_denoised, ve_scale, vp_to_ve

# denoise(x, i, edit) -> (D(x | h), D(x | h̃) or None) at sigmas[i]; ``edit`` says whether h is edited this step.
Denoise = Callable[[torch.Tensor, int, bool], tuple]
# callback(i, denoised, x): after step i, ComfyUI's sampler-callback shape (previews, progress, Cancel).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def asymmetric_step(x: torch.Tensor, denoised_edited: torch.Tensor, denoised: torch.Tensor, sigma, sigma_next,
                    signal_next=1.0):
    """x_next = a(σ_next)·D(x | h̃) + σ_next·ε̂, ε̂ = (x − a(σ)·D(x | h))/σ: Asyrp's asymmetric step (eq. 4) in σ
    space (module docstring) for a sample x = a(σ)·x0 + σ·ε, with ``signal_next`` = a(σ_next)
    (``NoiseLevels.signal``: 1 on x = x0 + σ·ε, 1 − σ_next for flow matching).

    Written as the Euler step x + (σ_next − σ)·(x − D)/σ plus the edit's change of x0 weighted by a(σ_next),
    a(σ_next)·(D(x | h̃) − D(x | h)), so that with no edit it is k-diffusion's ``sample_euler`` (ComfyUI's
    ``euler``) operation for operation (σ may be floats or 0-dim tensors, as a sampler holds them)."""
    return x + (x - denoised) / sigma * (sigma_next - sigma) + signal_next * (denoised_edited - denoised)


def ddim_sigma_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, eta: float = 0.0,
                    noise: torch.Tensor | None = None, denoised_direction: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM eq. 12 with η (eq. 16) in σ space: x_next = P + √(σ_next² − s²·(1 + σ_next²))·ε_dir + s·√(1 + σ_next²)·z,
    s = ``ddim.ddim_sigma``(ᾱ, ᾱ_next, η), P = ``denoised`` (the edited x0 in the asymmetric step) and
    ε_dir = (x − ``denoised_direction``)/σ (default: ``denoised``).  η = 0 is ``asymmetric_step``."""
    direction = denoised if denoised_direction is None else denoised_direction
    s = ddim_sigma(alpha_bar_of_sigma(sigma), alpha_bar_of_sigma(sigma_next), eta)
    if s == 0:
        return asymmetric_step(x, denoised, direction, sigma, sigma_next)
    if noise is None:
        raise ValueError("η > 0 needs a noise tensor z; pass one drawn from a seeded generator.")
    scale = ve_scale(sigma_next)
    coeff = math.sqrt(max(0.0, sigma_next**2 - (s * scale) ** 2))
    return denoised + (coeff / sigma) * (x - direction) + (s * scale) * noise


def inverse_euler_step(x: torch.Tensor, x_eps: torch.Tensor, denoised: torch.Tensor, sigma_eps: float, sigma: float,
                       sigma_next: float) -> torch.Tensor:
    """DDIM inversion in σ space (DDIM §4.3): x_next = x + (σ_next − σ)·ε, ε = (x_ε − D(x_ε, σ_ε))/σ_ε, with D
    evaluated at the point x_ε of noise level σ_ε: x itself (seed convention) or the next point (refinement).
    ``inverse_euler_step(x, x, D, σ, σ, σ_next)`` is ``ddim.ddim_inverse_step`` in VE."""
    return x + (sigma_next - sigma) * ((x_eps - denoised) / sigma_eps)


@dataclass(frozen=True)
class SigmaWindow:
    """Where an edit (or the quality boost) acts, in noise level: σ_end ≤ σ ≤ σ_start.  ``made_with`` says how the
    user gave it ("t_edit=400": the paper's timestep, t ≥ t_edit; "percent 0.00–0.60": ComfyUI's start/end percent,
    ``model_sampling.percent_to_sigma``) and travels with what the edit made."""

    sigma_start: float
    sigma_end: float
    made_with: str = ""

    def __post_init__(self):
        if not (self.sigma_start >= self.sigma_end >= 0):
            raise ValueError(f"An edit window needs σ_start ≥ σ_end ≥ 0, got {self.sigma_start} and {self.sigma_end}: "
                             "start_percent must be below end_percent.")

    def contains(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def check_window_steps(made_with: str, inside: Sequence[int], num_steps: int, t_boost: int = 0) -> None:
    """The one rule for an edit window on the steps it runs on (the nodes' DDIM grid, a SAMPLER's sigmas, the Shift
    patch's schedule): it must hold at least one step (start = end percent holds none), and none below the quality
    boost's start (t_boost: those steps are stochastic).  ``inside``: the timesteps of the steps in the window."""
    if not inside:
        raise ValueError(f"No step of the {num_steps}-step schedule lies in the edit window {made_with}, so nothing "
                         "would be edited: widen the window (start_percent below end_percent) or use more steps.")
    if min(inside) < t_boost:
        raise ValueError(f"The edit window {made_with} reaches t = {min(inside)}, below the quality boost's start "
                         f"(t_boost {t_boost}): end the window earlier or start the boost later.")


def schedule_in_window(schedule: EditSchedule, window: SigmaWindow, sigma_of: Callable[[int], float]) -> EditSchedule:
    """``schedule`` editing at the timesteps of its DDIM grid whose σ_t (``sigma_of(t)``) lies in ``window``: the one
    rule by which a σ window (a percent window) acts on a loop that works on t.  Its t_edit becomes the lowest of
    them (what reads "where the edit ends", e.g. a γ ramp); ``made_with`` is the window's."""
    inside = tuple(t for t in schedule.timesteps() if window.contains(sigma_of(t)))
    check_window_steps(window.made_with, inside, schedule.num_steps, schedule.t_boost)
    return dataclasses.replace(schedule, t_edit=min(inside, default=schedule.t_edit), edit_timesteps=inside,
                               made_with=window.made_with)


@dataclass(frozen=True)
class EditPlan:
    """A reverse run as data: the decreasing ``sigmas`` it steps over (n + 1: the last 0, or the noise level where
    the run stops), the model's ``timesteps`` of its n steps (where h edits and records are keyed), which steps edit
    (``edits``, the injection stride applied) and the η of each step (``etas``: the quality boost).  What an
    ``EditSchedule`` (t_edit or a window's timesteps, t_boost, η) resolves to on a model's noise levels
    (``on_grid``); ``sample_h_edit`` runs it."""

    sigmas: torch.Tensor
    timesteps: tuple[int, ...]
    edits: tuple[bool, ...]
    etas: tuple[float, ...]

    def __post_init__(self):
        n = len(self.sigmas) - 1
        if not len(self.timesteps) == len(self.edits) == len(self.etas) == n:
            raise ValueError(f"An edit plan of {n} steps needs {n} timesteps, edit flags and η values, got "
                             f"{len(self.timesteps)}, {len(self.edits)} and {len(self.etas)}.")

    @classmethod
    def on_grid(cls, schedule: EditSchedule, levels: NoiseLevels, *, edited: bool = True, edit_every: int = 1,
                stop_below: int | None = None) -> "EditPlan":
        """``schedule``'s DDIM grid at ``levels``' sigmas (``NoiseLevels.sigmas_at``): it edits where
        ``schedule.edits_at`` (every ``edit_every``-th step of that, ``strided``; nowhere unless ``edited``), with
        ``schedule.eta_at`` per step; ``stop_below`` = t_min keeps only the steps at t ≥ t_min (a prefix: the grid
        decreases), the run then ending at the noise level of the first step below."""
        grid = schedule.timesteps()
        n = len(grid) if stop_below is None else sum(t >= stop_below for t in grid)
        steps = grid[:n]
        return cls(levels.sigmas_at(grid)[: n + 1], steps,
                   tuple(strided([edited and schedule.edits_at(t) for t in steps], edit_every)),
                   tuple(schedule.eta_at(t) for t in steps))


def clip_denoised(denoised: torch.Tensor | None, limit: float | None) -> torch.Tensor | None:
    """clamp(D, −c, c): ``ddim.clipped_eps`` in σ space.  With x = x_t/√ᾱ (VE) and √(1 − ᾱ) = σ·√ᾱ, the clipped
    ε' = (x_t − √ᾱ·clip(P_t))/√(1 − ᾱ) is (x − clip(P_t))/σ, and the x0 it predicts, x − σ·ε', is clip(P_t); P_t is
    the denoiser's D.  So clipping ε (DDPM's clipped x̂0, Ho et al. 2020 §3.3) is clipping D.  ``limit`` None: D."""
    return denoised if limit is None or denoised is None else denoised.clamp(-limit, limit)


def strided(window: Sequence[bool], every: int) -> list[bool]:
    """The steps that edit: every ``every``-th step of the edit window, its first included (InjectFusion's injection
    stride: the official code injects at every k-th step of [T, t_edit]).  ``window[i]`` says whether step i lies in
    the window; the one rule of every loop."""
    if every < 1:
        raise ValueError(f"edit_every (injection stride) must be ≥ 1, got {every}.")
    flags, k = [], 0
    for inside in window:
        flags.append(bool(inside) and k % every == 0)
        k += bool(inside)
    return flags


def sample_h_edit(denoise: Denoise, x: torch.Tensor, sigmas: Sequence[float], edits: Sequence[bool], *,
                  etas: Sequence[float] | None = None, omega: float | None = None, seed: int = 0,
                  callback: StepCallback | None = None, levels: NoiseLevels | None = None) -> torch.Tensor:
    """Asyrp's reverse process (Kwon et al. 2023, §3.3–4) over the σ grid ``sigmas`` (decreasing; last 0 for a clean
    sample, else the run stops at the noise level of its last entry):

    - steps with ``edits[i]``: two predictions, joined by the asymmetric step, or (``omega`` > 0) by style
      calibration then a plain step from the calibrated point (InjectFusion §3.3, ``ddim.calibrated_x_t``; ω = 0 is
      off, the plain injection, as in the official code);
    - other steps: the plain DDIM step with η = ``etas[i]`` (quality boost) and noise from ``seed``, drawn in step
      order on the CPU (the ᾱ-space loop's order: tests/ddim_reference.py).

    ``sigmas`` is a 1-D tensor (or floats); the deterministic steps compute with its entries, as k-diffusion's
    samplers do, and the choices (η > 0, which noise) are made on one host copy taken before the loop.  ``levels``
    (the model's ``NoiseLevels``) with flow matching's parameterisation runs its steps (``flow_ddim_step``, and the
    calibration's move weighted by a(σ) = 1 − σ); None or any other is x = x0 + σ·ε.
    """
    host = sigmas.tolist() if torch.is_tensor(sigmas) else [float(s) for s in sigmas]  # one copy, before the loop
    n = len(host) - 1
    etas = list(etas) if etas is not None else [0.0] * n
    if len(edits) != n or len(etas) != n:
        raise ValueError(f"{n} steps but {len(edits)} edit flags and {len(etas)} η values.")
    from . import flow as fm  # flow matching's steps build on this module's

    flow = levels is not None and levels.flow
    signal = levels.signal if levels is not None else (lambda sigma: 1.0)
    generator = torch.Generator().manual_seed(int(seed))
    for i in range(n):
        plain, edited = denoise(x, i, bool(edits[i]))
        noise = None
        if (fm.flow_eta_sigma(host[i], host[i + 1], etas[i]) if flow else
                ddim_sigma(alpha_bar_of_sigma(host[i]), alpha_bar_of_sigma(host[i + 1]), etas[i])) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        target = plain if edited is None else edited
        if edited is not None and omega:  # calibrate, then the plain step with the unedited network
            x = _calibrated(x, plain, edited, omega, signal(host[i]))
            step = fm.flow_ddim_step if flow else ddim_sigma_step
            x = step(x, denoise(x, i, False)[0], host[i], host[i + 1], etas[i], noise)
        elif noise is None:
            x = asymmetric_step(x, target, plain, sigmas[i], sigmas[i + 1], signal(sigmas[i + 1]))
        elif flow:
            x = fm.flow_ddim_step(x, target, host[i], host[i + 1], etas[i], noise, plain)
        elif edited is None:
            x = ddim_sigma_step(x, plain, host[i], host[i + 1], etas[i], noise)
        else:
            x = ddim_sigma_step(x, edited, host[i], host[i + 1], etas[i], noise, denoised_direction=plain)
        if callback is not None:
            callback(i, plain if edited is None else edited, x)
    return x


def _calibrated(x, plain, edited, omega, signal=1.0):
    """``ddim.calibrated_x_t`` (InjectFusion §3.3: dx_t = √ᾱ·(P̂' − P) + ω·√(1 − ᾱ)·(ε' − ε)) in σ space, for a
    sample x = a·x0 + σ·ε with ``signal`` a = a(σ) (``NoiseLevels.signal``).

    x_vp = x/√(a² + σ²) is the VP sample with √ᾱ = a/√(a² + σ²), √(1 − ᾱ) = σ/√(a² + σ²) (x = x_t/√ᾱ for a = 1;
    x/a is the VE-normalised point in general), so the VP move times √(a² + σ²) is dx = a·(P̂' − P) + ω·σ·(ε' − ε).
    With P = D, ε = (x − a·D)/σ and ε' = (x − a·D')/σ (``flow.flow_eps`` for a = 1 − σ), ω·σ·(ε' − ε) = −ω·a·(D' − D):

        dx = a·((P̂' − D) − ω·(D' − D)),   P̂' = D' matched to D's std (``ddim.std_matched``),

    the VE move (a = 1) weighted by a(σ) on flow matching, where it vanishes at σ = 1 (x holds no x0 there).
    No VP round trip."""
    return x + signal * ((std_matched(edited, plain) - plain) - omega * (edited - plain))


def invert_sigmas(denoise: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, sigmas: Sequence[float], *,
                  clean_start: bool, convention: str = "seed", clean_step: bool = False, refine_iters: int = 0,
                  callback: StepCallback | None = None, levels: NoiseLevels | None = None) -> torch.Tensor:
    """DDIM inversion (DDIM §4.3) on increasing ``sigmas`` (ComfyUI's flipped sigmas): ``processes.invert``'s loop.
    ``denoise(x, k)`` returns D(x, sigmas[k]); ``callback(k, P, x_next)`` is told after the
    step from sigmas[k] with the clean sample P = x_k − σ_k·ε it predicts (previews) and the point reached.

    Each step k → k+1 is x_{k+1} = x_k + (σ_{k+1} − σ_k)·ε (``inverse_euler_step``), ε = (x_ε − D(x_ε, σ_ε))/σ_ε.
    Derivation from the ᾱ-space inversion (steps (t_here, t_next, t_ε), tests/ddim_reference.py) and
    ``ddim.ddim_inverse_step``: the VP step
    x_next = √ᾱ_next·(x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t + √(1 − ᾱ_next)·ε divided by √ᾱ_next, with x = x_t/√ᾱ_t (VE) and
    σ = √(1 − ᾱ)/√ᾱ, is x_next = x + (σ_next − σ)·ε; ε = ε(x_t, t_ε) is the network's at the VP point x_t *taken
    as* a sample at t_ε, whose VE input is x_ε = x_t/√ᾱ_ε = x·√(1 + σ_ε²)/√(1 + σ²).

    - ``convention`` "seed" (Diffusion Autoencoders' encoder; Asyrp's and InjectFusion's official inversion):
      t_ε = t_here, ε at the current point (x_ε = x).  "diffusers" (DDIMInverseScheduler): t_ε = t_next, the
      current point rescaled to σ_{k+1}, x_ε = x·√(1 + σ_{k+1}²)/√(1 + σ_k²).
    - ``clean_start``: ``x`` is the clean input and sigmas[0] only marks it (0, or FlipSigmas' 1e-4; taken as 0,
      ᾱ_{−1} = 1).  Under the seed convention it stands at the first grid point sigmas[1] (VP x_t = x0 there, so
      x = x0·√(1 + σ_1²), ``sigmas.vp_to_ve``), as the ᾱ-space inversion did on a grid that starts at t = 0; ``clean_step`` (a grid
      that starts above 0) takes instead a first step 0 → σ_1 with ε(x0, σ_1), x_ε = x0·√(1 + σ_1²).  The diffusers
      convention always steps from the clean input.
    - ``refine_iters`` = k solves x_{k+1} = x_k + (σ_{k+1} − σ_k)·ε(x_{k+1}, σ_{k+1}) by k fixed-point
      iterations from either convention's first guess: the exact inverse of the reverse step.
    - ``levels`` with flow matching's parameterisation: ``flow.invert_flow`` over these steps (the model's input is
      the sample itself: x_ε = x under both conventions, and the clean input stands at σ_1 unscaled).
    """
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be ≥ 0, got {refine_iters}.")
    if convention not in ("seed", "diffusers"):
        raise ValueError(f"Inversion convention {convention!r} is unknown; use 'seed' or 'diffusers'.")
    host = sigmas.tolist() if torch.is_tensor(sigmas) else [float(s) for s in sigmas]  # one copy, before the loop
    if clean_start:
        host[0] = 0.0
    steps = inversion_steps(len(host), convention, clean_start, clean_step)
    if levels is not None and levels.flow:
        from .flow import invert_flow  # it builds on this module

        return invert_flow(denoise, x, host, refine_iters=refine_iters, callback=callback, steps=steps)
    if steps and steps[0][0] == 1:
        x = vp_to_ve(x, alpha_bar_of_sigma(host[1]))
    return inversion_loop(denoise, x, host, steps, refine_iters, callback)


def inversion_loop(denoise: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, host: list[float],
                   steps: Sequence[tuple], refine_iters: int = 0, callback: StepCallback | None = None,
                   rescale: bool = True) -> torch.Tensor:
    """The one loop of ``invert_sigmas`` and ``flow.invert_flow``: for each (k, k + 1, k_ε) of ``steps``
    (``inversion_steps``) x_{k+1} = x_k + (σ_{k+1} − σ_k)·ε, ε = (x_ε − D(x_ε, σ_ε))/σ_ε (``inverse_euler_step``),
    then ``refine_iters`` fixed-point iterations with ε at x_{k+1}; ``callback(k, x_k − σ_k·ε, x_{k+1})``.
    ``rescale``: x_ε is x rescaled to σ_ε's VE point (x = x0 + σ·ε); False where the model's input is the sample
    itself (flow matching)."""
    for here, nxt, at in steps:
        sigma, sigma_next, sigma_eps = host[here], host[nxt], host[at]
        x_eps = x if at == here or not rescale else x * (ve_scale(sigma_eps) / ve_scale(sigma))
        eps = eps_of_denoised(x_eps, denoise(x_eps, at), sigma_eps)
        for _ in range(refine_iters):
            x_next = x + (sigma_next - sigma) * eps
            eps = eps_of_denoised(x_next, denoise(x_next, nxt), sigma_next)
        x_next = x + (sigma_next - sigma) * eps
        if callback is not None:
            callback(here, x - sigma * eps, x_next)
        x = x_next
    return x


def steps_from_clean(levels, first_t: int) -> bool:
    """The seed convention's one rule for the clean input (``invert_sigmas``' ``clean_step``): on a grid whose first
    timestep ``first_t`` is the table's t = 0 a DDPM-style clean input stands there (VP x_0 = x0, ᾱ_0 ≈ 1: the DDIM
    grid of Asyrp's official inversion); on a grid that starts above 0, and always on flow matching, whose point at
    σ_1 is (1 − σ_1)·x0 + σ_1·ε and not x0, a first Euler step 0 → σ_1 with ε(x0, σ_1) takes it there."""
    return first_t != 0 or (levels is not None and levels.flow)


def inversion_steps(num_sigmas: int, convention: str, clean_start: bool, clean_step: bool = False) -> list[tuple]:
    """(k, k + 1, k_ε) for each step of ``invert_sigmas`` over ``num_sigmas`` increasing sigmas: ε is taken at
    sigmas[k_ε] (tests/ddim_reference.py ``inversion_steps`` by index).  The seed convention evaluates at k, except from the clean
    input (σ = 0), where it evaluates at 1 (``clean_step``) or does not step (x0 stands at sigmas[1])."""
    if convention == "diffusers":
        return [(k, k + 1, k + 1) for k in range(num_sigmas - 1)]
    first = 1 if clean_start and not clean_step else 0
    return [(k, k + 1, k + 1 if clean_start and k == 0 else k) for k in range(first, num_sigmas - 1)]
