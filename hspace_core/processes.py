"""The library API: invert, capture, edit (Asyrp), inject (DiffStyle), interpolate (Diffusion Autoencoders).

Every process runs one loop, ``run_reverse``: a DDIM reverse process over an explicit ``EditSchedule``
whose steps in [T, t_edit] may change h.  Loops report through ``progress(done, total)`` and stop when
``should_stop()`` is true, raising ``Cancelled``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adapters.base import HEdit, HSpaceModel
from .ddim import calibrated_x_t, clipped_eps, ddim_inverse_step, ddim_sigma, ddim_step
from .hmath import lerp, mask_to_h_grid, masked_blend, normalized_slerp, slerp
from .schedules import step_pairs, timestep_grid
from .state import Direction, EditSchedule, HTrajectory, Inversion, ReconstructionReport, check_fingerprint

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised when ``should_stop()`` asks a loop to end."""


@dataclass(frozen=True)
class ReverseResult:
    x0: torch.Tensor
    trajectory: HTrajectory | None = None


def _check_latent(x: torch.Tensor, what: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"{what} must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf; check the image or latent you passed.")


class _Loop:
    """Progress and cancellation for one loop."""

    def __init__(self, total: int, progress: ProgressFn | None, should_stop: StopFn | None):
        self.total, self.done, self.progress, self.should_stop = total, 0, progress, should_stop

    def tick(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"Stopped after {self.done} of {self.total} steps.")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def run_reverse(model: HSpaceModel, x_T: torch.Tensor, schedule: EditSchedule, *,
                edit: HEdit | None = None, edit_every: int = 1, omega: float | None = None,
                asymmetric: bool = True, seed: int = 0, record_h: bool = False,
                progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> ReverseResult:
    """The three-phase reverse process of Asyrp (Kwon et al. 2023, §3.3 and §4):

    - t ≥ t_edit: two predictions per step, ε(x_t | h̃_t) and ε(x_t | h_t), joined by the asymmetric
      DDIM step (eq. 4), or by style calibration when ``omega`` is set (InjectFusion §3.3);
    - t_edit > t ≥ t_boost: plain DDIM (η = ``schedule.eta``), one U-Net pass;
    - t < t_boost: quality boosting, DDIM with η = ``schedule.eta_boost`` and noise from ``seed``.

    ``edit_every`` > 1 edits only every k-th step of the edit phase (injection stride).
    ``asymmetric=False`` uses ε(x_t | h̃_t) for both P_t and D_t (the ablation the paper shows cancels out).
    """
    _check_latent(x_T, "x_T")
    if edit_every < 1:
        raise ValueError(f"edit_every (injection stride) must be ≥ 1, got {edit_every}.")
    if schedule.num_train_timesteps != model.schedule.num_train_timesteps:
        raise ValueError(f"The schedule has {schedule.num_train_timesteps} timesteps but the model "
                         f"{model.schedule.num_train_timesteps}; set EditSchedule.num_train_timesteps.")
    generator = torch.Generator().manual_seed(int(seed))
    pairs = step_pairs(schedule.timesteps())
    loop = _Loop(len(pairs), progress, should_stop)
    x, hs, edit_index = x_T, [], 0
    for t, t_prev in pairs:
        loop.tick()
        active = edit is not None and schedule.edits_at(t) and edit_index % edit_every == 0
        edit_index += edit is not None and schedule.edits_at(t)
        pred = model.predict(x, t, edit if active else None)
        if record_h:
            hs.append(pred.h)
        a, a_prev = model.schedule.alpha_bar(t), model.schedule.alpha_bar(t_prev)
        clip = (lambda x_in, e: clipped_eps(x_in, e, a, schedule.clip_x0)) if schedule.clip_x0 else (lambda x_in, e: e)
        eps = clip(x, pred.eps)
        eps_edited = clip(x, pred.eps_edited) if pred.eps_edited is not None else None
        eta = schedule.eta_at(t)
        noise = None
        if ddim_sigma(a, a_prev, eta) > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        if not active:
            x = ddim_step(x, eps, a, a_prev, eta, noise)
        elif omega is not None:
            x_cal = calibrated_x_t(x, eps, eps_edited, a, omega)
            x = ddim_step(x_cal, clip(x_cal, model.predict(x_cal, t).eps), a, a_prev, eta, noise)
        elif asymmetric:
            x = ddim_step(x, eps_edited, a, a_prev, eta, noise, eps_direction=eps)
        else:
            x = ddim_step(x, eps_edited, a, a_prev, eta, noise)
        if not torch.isfinite(x).all():
            raise ValueError(f"The reverse process diverged (NaN/inf) at t={t}; lower the edit strength or γ.")
    trajectory = None
    if record_h:
        trajectory = HTrajectory(tuple(t for t, _ in pairs), torch.stack(hs), model.branches, model.fingerprint)
    return ReverseResult(x, trajectory)


def invert(model: HSpaceModel, x0: torch.Tensor, num_steps: int = 40, *, grid: str = "asyrp",
           refine_iters: int = 0, report: bool = True,
           progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> Inversion:
    """Deterministic DDIM inversion x0 → x_T on the same grid the reverse process uses (DDIM §4.3).

    The step t_prev → t takes ε at (x_{t_prev}, t).  With ``refine_iters`` = k > 0 it then solves the implicit
    equation x_t = inverse_step(x_{t_prev}, ε(x_t, t)) by k fixed-point iterations, so that the reverse DDIM
    step from x_t lands on x_{t_prev} exactly (at convergence).
    ``report`` regenerates x0 from x_T, measures the error (another ``num_steps`` passes) and records h along
    that reconstruction: exactly the h a later edit or injection from x_T sees.  Without ``report``, h comes
    from the last evaluation of each inversion step: at (x_t, t) when refining, at (x_{t_prev}, t) otherwise.
    """
    _check_latent(x0, "The input image / latent")
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be ≥ 0, got {refine_iters}.")
    grid_desc = timestep_grid(num_steps, model.schedule.num_train_timesteps, grid)
    ascending = list(reversed(grid_desc))
    loop = _Loop(len(ascending) * (1 + refine_iters) + (num_steps if report else 0), progress, should_stop)
    x, t_prev, latents, hs = x0, -1, [x0], []
    for t in ascending:
        a_prev, a = model.schedule.alpha_bar(t_prev), model.schedule.alpha_bar(t)
        loop.tick()
        pred = model.predict(x, t)
        x_next = ddim_inverse_step(x, pred.eps, a_prev, a)
        for _ in range(refine_iters):
            loop.tick()
            pred = model.predict(x_next, t)
            x_next = ddim_inverse_step(x, pred.eps, a_prev, a)
        if not torch.isfinite(x_next).all():
            raise ValueError(f"DDIM inversion diverged at t={t}; check the input's range (images in [-1, 1]).")
        hs.append(pred.h)
        latents.append(x_next)
        x, t_prev = x_next, t
    trajectory = HTrajectory(tuple(grid_desc), torch.stack(hs[::-1]), model.branches, model.fingerprint)
    result = Inversion(x, torch.stack(latents), tuple(grid_desc), trajectory)
    if not report:
        return result
    sched = EditSchedule(num_steps, t_edit=0, t_boost=0, grid=grid, num_train_timesteps=model.schedule.num_train_timesteps)
    recon = run_reverse(model, x, sched, record_h=True, progress=lambda d, n: loop.tick())
    return Inversion(x, result.latents, result.timesteps, recon.trajectory,
                     ReconstructionReport.compare(x0, recon.x0), recon.x0)


def capture(model: HSpaceModel, x_T: torch.Tensor, num_steps: int = 40, *, grid: str = "asyrp",
            progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> HTrajectory:
    """h_t along the deterministic reverse process from x_T (a reconstruction if x_T came from ``invert``)."""
    sched = EditSchedule(num_steps, t_edit=0, t_boost=0, grid=grid, num_train_timesteps=model.schedule.num_train_timesteps)
    return run_reverse(model, x_T, sched, record_h=True, progress=progress, should_stop=should_stop).trajectory


def generate(model: HSpaceModel, x_T: torch.Tensor, schedule: EditSchedule, *, seed: int = 0,
             progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """The reverse process with no edit (with quality boosting below t_boost)."""
    return run_reverse(model, x_T, schedule, seed=seed, progress=progress, should_stop=should_stop).x0


def combine_directions(directions: Sequence[Direction], strengths: Sequence[float],
                       normalize: bool = False) -> HEdit:
    """h̃ = h + c·Σ_i s_i·Δh_i(h, t), c = 1/√k when ``normalize`` (Asyrp §5.3: edits add up linearly)."""
    if len(directions) != len(strengths):
        raise ValueError(f"{len(directions)} directions but {len(strengths)} strengths; give one strength each.")
    if not directions:
        raise ValueError("Give at least one direction.")
    c = 1 / math.sqrt(len(directions)) if normalize else 1.0

    def shift(h: torch.Tensor, t: int, branch: str) -> torch.Tensor:
        total = torch.zeros_like(h)
        for d, s in zip(directions, strengths):
            if s != 0:
                total = total + s * d.at(h, t)
        return h + c * total

    return shift


def edit(model: HSpaceModel, x_T: torch.Tensor, directions: Direction | Sequence[Direction],
         strengths: float | Sequence[float], schedule: EditSchedule, *, normalize: bool = False,
         asymmetric: bool = True, seed: int = 0, strict_fingerprint: bool = False,
         progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """Asyrp editing: x_T → edited x0 with h̃_t = h_t + Σ s_i·Δh_i over [T, t_edit] and the asymmetric step.

    Strengths may be negative (the opposite attribute).  An all-zero strength gives exactly ``generate``.
    A direction learnt on another number of steps is rescaled by train_steps / steps (``Direction.step_scale``).
    """
    if isinstance(directions, Direction):
        directions = [directions]
    if isinstance(strengths, (int, float)):
        strengths = [float(strengths)] * len(directions)
    if len(directions) != len(strengths):
        raise ValueError(f"{len(directions)} directions but {len(strengths)} strengths; give one strength each.")
    for d in directions:
        if strict_fingerprint:
            check_fingerprint(d.fingerprint, model.fingerprint, "direction")
    strengths = [s * d.step_scale(schedule.num_steps) for d, s in zip(directions, strengths)]
    if all(s == 0 for s in strengths):
        return generate(model, x_T, schedule, seed=seed, progress=progress, should_stop=should_stop)
    shift = combine_directions(list(directions), list(strengths), normalize)
    return run_reverse(model, x_T, schedule, edit=shift, asymmetric=asymmetric, seed=seed,
                       progress=progress, should_stop=should_stop).x0


def content_injection(content: HTrajectory, gamma: float | Callable[[int], float], *,
                      mask: torch.Tensor | None = None, per_channel: bool = False,
                      mode: str = "slerp") -> HEdit:
    """The h edit of DiffStyle / InjectFusion: h̃_t = Slerp(h_t, h_c,t·‖h_t‖/‖h_c,t‖, γ_t), blended by a mask.

    ``mode="replace"`` is the naive baseline h̃_t = h_c,t.
    """
    if mode not in ("slerp", "replace"):
        raise ValueError(f"mode must be 'slerp' or 'replace', got {mode!r}.")
    gamma_at = gamma if callable(gamma) else (lambda t: gamma)
    mask_cache: dict = {}

    def inject(h: torch.Tensor, t: int, branch: str) -> torch.Tensor:
        branch_name = branch if branch in content.branches else content.branches[-1]
        h_c = content.at(t, branch_name).to(h.device, h.dtype)
        if h_c.shape[1:] != h.shape[1:]:
            raise ValueError(
                f"Content h is {tuple(h_c.shape[1:])} but the style's h is {tuple(h.shape[1:])}: use images of the "
                "same size and the same model for content and style."
            )
        if h_c.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"{h_c.shape[0]} content images for {h.shape[0]} style images; pass 1 or {h.shape[0]}.")
        h_c = h_c.expand_as(h)
        h_new = h_c if mode == "replace" else normalized_slerp(h, h_c, gamma_at(t), per_channel)
        if mask is None:
            return h_new
        if "m" not in mask_cache:
            mask_cache["m"] = mask_to_h_grid(mask, h.shape).to(h.device)
        return masked_blend(h, h_new, mask_cache["m"])

    if mask is not None:  # fail early on a bad mask, not halfway through sampling
        mask_to_h_grid(mask, (content.batch_size, *content.h_shape))
    if not callable(gamma):
        from .hmath import _check_gamma

        _check_gamma(gamma)
    return inject


def inject(model: HSpaceModel, style_x_T: torch.Tensor, content: HTrajectory,
           gamma: float | Callable[[int], float] = 0.5, schedule: EditSchedule | None = None, *,
           stride: int = 1, mask: torch.Tensor | None = None, omega: float | None = None,
           per_channel: bool = False, mode: str = "slerp", seed: int = 0, strict_fingerprint: bool = True,
           progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """DiffStyle / InjectFusion content injection: generate from the style image's inverted x_T while
    injecting the content image's h_t over [T, t_edit].

    ``gamma`` is a constant or a function of t; ``stride`` injects every k-th step; ``mask`` (any size,
    soft allowed) limits the mix to a region; ``omega`` turns on style calibration; ``schedule.t_boost``
    and ``eta_boost`` give quality boosting.
    """
    schedule = schedule or EditSchedule(num_train_timesteps=model.schedule.num_train_timesteps)
    if strict_fingerprint:
        check_fingerprint(content.fingerprint, model.fingerprint, "content h trajectory")
    if content.branches != model.branches and "single" not in content.branches + model.branches:
        raise ValueError(f"Content was captured with branches {content.branches}, the model runs {model.branches}.")
    hook = content_injection(content, gamma, mask=mask, per_channel=per_channel, mode=mode)
    return run_reverse(model, style_x_T, schedule, edit=hook, edit_every=stride, omega=omega, seed=seed,
                       progress=progress, should_stop=should_stop).x0


def interpolate(model: HSpaceModel, x_T_a: torch.Tensor, x_T_b: torch.Tensor, num_frames: int,
                schedule: EditSchedule, *, trajectory_a: HTrajectory | None = None,
                trajectory_b: HTrajectory | None = None, seed: int = 0,
                progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """Diffusion Autoencoders' interpolation (Preechakul et al. 2022, §4.1) in h-space:
    x_T(α) = Slerp(x_T^a, x_T^b, α) and, over [T, t_edit], h_t(α) = Lerp(h_t^a, h_t^b, α), with the
    asymmetric step.  Returns (num_frames·B, C, H, W), frame-major; frame 0 reconstructs a, the last b.

    Missing trajectories are captured along each image's own reconstruction, so the end frames are exact.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be ≥ 2, got {num_frames}.")
    if x_T_a.shape != x_T_b.shape:
        raise ValueError(f"The two inverted latents differ in shape: {tuple(x_T_a.shape)} vs {tuple(x_T_b.shape)}.")
    grid = schedule.grid
    trajectory_a = trajectory_a or capture(model, x_T_a, schedule.num_steps, grid=grid, should_stop=should_stop)
    trajectory_b = trajectory_b or capture(model, x_T_b, schedule.num_steps, grid=grid, should_stop=should_stop)
    frames = []
    for k in range(num_frames):
        alpha = k / (num_frames - 1)

        def mix(h, t, branch, alpha=alpha):
            ha = trajectory_a.at(t, branch if branch in trajectory_a.branches else None).to(h)
            hb = trajectory_b.at(t, branch if branch in trajectory_b.branches else None).to(h)
            return lerp(ha, hb, alpha)

        x_T = slerp(x_T_a, x_T_b, alpha)
        frames.append(run_reverse(model, x_T, schedule, edit=mix, seed=seed, should_stop=should_stop).x0)
        if progress is not None:
            progress(k + 1, num_frames)
    return torch.cat(frames)


def direction_from_examples(positive: HTrajectory, negative: HTrajectory, *, name: str = "") -> Direction:
    """Per-timestep Δh_t = mean(h_t | positive) − mean(h_t | negative) (Diffusion Autoencoders §4.2's linear
    attribute directions, in h-space).  ``.global_mean()`` gives one Δh."""
    if positive.timesteps != negative.timesteps:
        raise ValueError("Positive and negative examples were captured on different timestep grids; use the same steps.")
    if positive.h_shape != negative.h_shape:
        raise ValueError(f"h shapes differ: {positive.h_shape} vs {negative.h_shape}; use same-size images.")
    if positive.fingerprint and negative.fingerprint:
        check_fingerprint(positive.fingerprint, negative.fingerprint, "negative examples' trajectory")
    pos = _branch_rows(positive).mean(1)
    neg = _branch_rows(negative).mean(1)
    return Direction("per_timestep", pos - neg, positive.timesteps, fingerprint=positive.fingerprint, name=name)


def _branch_rows(traj: HTrajectory) -> torch.Tensor:
    """The rows of the conditional branch (or the only branch): (steps, B, C, H, W)."""
    k = traj.branches.index("cond") if "cond" in traj.branches else 0
    return traj.h.chunk(len(traj.branches), dim=1)[k]
