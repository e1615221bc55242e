"""The library API: invert, capture, edit (Asyrp), inject (DiffStyle), interpolate (Diffusion Autoencoders).

Every process runs one loop, ``run_reverse``: ``sampling.sample_h_edit`` over the sigmas of an explicit
``EditSchedule``'s grid, whose steps in [T, t_edit] may change h, through the model's σ view (``denoise_at``).  Loops report through ``progress(done, total)`` (and the step's x0, P_t, to a callback that takes a third
argument: ``progress.takes_x0``) and stop when
``should_stop()`` is true, raising ``Cancelled``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adapters.base import HEdit, HSpaceModel, denoise_at, levels_of
from .devices import FiniteWatch, host_ready, step_dtype, to_host
from .hmath import check_gamma, lerp, mask_to_h_grid, masked_blend, masked_normalized_slerp, normalized_slerp, slerp
from .progress import Cancelled, ProgressFn, StepLoop, StopFn, check_batch, offset
from .sampling import (EditPlan, clip_denoised, inversion_steps, invert_sigmas, sample_h_edit, steps_from_clean,
                       strided)
from .sites import check_same_site, site_of
from .direction import Direction
from .direction_algebra import combine_directions, scaled_strength
from .file_format import check_fingerprint
from .settings import EditSchedule
from .trajectory import HStorage, HTrajectory, Inversion, ReconstructionReport

log = logging.getLogger("hspace")
INVERSION_CONVENTIONS = ("seed", "diffusers")
H_SOURCES = ("inversion", "reconstruction")
__all__ = ["Cancelled", "INVERSION_CONVENTIONS", "H_SOURCES", "ReverseResult", "run_reverse", "invert", "capture",
           "generate", "edit", "content_injection", "injection_edit", "inject", "interpolate", "interpolation_frames",
           "interpolation_schedule", "interpolation_storage"]


@dataclass(frozen=True)
class ReverseResult:
    x0: torch.Tensor
    trajectory: HTrajectory | None = None


def run_reverse(model: HSpaceModel, x_T: torch.Tensor, schedule: EditSchedule, *,
                edit: HEdit | None = None, edit_every: int = 1, omega: float | None = None,
                asymmetric: bool = True, seed: int = 0, record_h: bool = False, h_storage: HStorage = HStorage(),
                h_only: bool = False, progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> ReverseResult:
    """The three-phase reverse process of Asyrp (Kwon et al. 2023, §3.3 and §4), run by ``sampling.sample_h_edit``
    over the sigmas of ``schedule``'s DDIM grid (``EditPlan.on_grid``) through the model's σ view (``denoise_at``):

    - t ≥ t_edit: two predictions per step, D(x | h̃_t) and D(x | h_t), joined by the asymmetric step (eq. 4),
      or by style calibration when ``omega`` is set (InjectFusion §3.3);
    - t_edit > t ≥ t_boost: plain DDIM (η = ``schedule.eta``), one U-Net pass;
    - t < t_boost: quality boosting, DDIM with η = ``schedule.eta_boost`` and noise from ``seed``.

    ``x_T`` and the result are VP samples (x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε); the loop holds the model's point
    x = x_t·√(a² + σ²) (``NoiseLevels.unit_scale``: x_t/√ᾱ_t on x = x0 + σ·ε, x_t itself at a flow model's σ = 1).
    ``edit_every`` > 1 edits only every k-th step of the edit phase (injection stride).
    ``asymmetric=False`` uses D(x | h̃_t) for both P_t and D_t (the ablation the paper shows cancels out).
    ``omega`` = 0 (or None) is no calibration, as in the official code.  ``schedule.clip_x0`` = c clamps each
    denoised x0 to [−c, c] (``sampling.clip_denoised``).
    ``record_h`` keeps h as ``h_storage`` says (precision, device, only t ≥ t_min), converted step by step;
    ``h_only`` stops after the last step whose h is kept (for callers that want h only: ``x0`` is then the x_t
    reached there, not a clean image).
    The step math runs in at least float32 (a half-precision x_T is widened, x0 cast back); finiteness is read once,
    after the loop.
    """
    check_batch(x_T, "x_T")
    levels = levels_of(model)
    if schedule.num_train_timesteps != levels.num_timesteps:
        raise ValueError(f"The schedule has {schedule.num_train_timesteps} timesteps but the model "
                         f"{levels.num_timesteps}; set EditSchedule.num_train_timesteps.")
    plan = EditPlan.on_grid(schedule, levels, edited=edit is not None, edit_every=edit_every,
                            stop_below=h_storage.t_min if h_only else None)
    grid = schedule.timesteps()
    x = x_T.to(step_dtype(x_T.dtype))
    sigmas = plan.sigmas.to(x.dtype)  # on the CPU: the loop reads its σ choices there (no host copy)
    loop, hs, watch, seen = StepLoop(len(grid), progress, should_stop), [], FiniteWatch(), [-1]

    def denoise(x_i, i, edit_now):
        first = seen[0] != i  # style calibration's second prediction is not a step's
        if first:
            seen[0] = i
            loop.tick()
        plain, edited, h = denoise_at(model, x_i, sigmas[i], edit if edit_now else None, t=grid[i])
        if first and record_h and h_storage.keeps(grid[i]):
            hs.append(h_storage.put(h))
        if edited is not None and not asymmetric and not omega:
            plain = edited
        return clip_denoised(plain, schedule.clip_x0), clip_denoised(edited, schedule.clip_x0)

    def step_done(i, denoised, x_next):  # denoised: the step's P_t (eq. 4), edited where the step is
        watch.see(x_next, grid[i])
        loop.show(denoised)

    x = sample_h_edit(denoise, x * levels.unit_scale(float(plan.sigmas[0])), sigmas, plan.edits, etas=plan.etas,
                      omega=omega, seed=seed, callback=step_done, levels=levels)
    if (t_bad := watch.first()) is not None:
        raise ValueError(f"The reverse process diverged (NaN/inf) at t={t_bad}; lower the edit strength or γ.")
    if len(plan.timesteps) < len(grid):
        x = x / levels.unit_scale(float(plan.sigmas[-1]))
    trajectory = None
    if record_h:
        trajectory = h_storage.trajectory(list(grid), hs, model.branches, model.fingerprint, "reconstruction",
                                          site_of(model))
    return ReverseResult(x.to(x_T.dtype), trajectory)


def invert(model: HSpaceModel, x0: torch.Tensor, num_steps: int = 40, *, grid: str = "asyrp",
           convention: str = "seed", refine_iters: int = 0, h_source: str = "inversion", report: bool = True,
           h_storage: HStorage = HStorage(), latents_on: str = "cpu", progress: ProgressFn | None = None,
           should_stop: StopFn | None = None) -> Inversion:
    """Deterministic DDIM inversion x0 → x_T on the grid the reverse process uses (DDIM §4.3), run by
    ``sampling.invert_sigmas`` on the grid's increasing sigmas through the model's σ view (``denoise_at``).

    ``convention`` says where each step t → t_next takes ε:
    - ``"seed"`` (default; Diffusion Autoencoders' encoder x_{t+1} = √ᾱ_{t+1}·f_θ(x_t, t) + √(1−ᾱ_{t+1})·ε_θ(x_t, t),
      and Asyrp's / InjectFusion's official inversion): at the current point, ε(x_t, t).  The clean input stands
      at the grid's first timestep (t = 0 on the "asyrp" grid), so N grid points take N − 1 steps; on a grid that
      starts above 0, a first step from the clean input (ᾱ = 1) takes ε(x0, t_first).
    - ``"diffusers"`` (diffusers' DDIMInverseScheduler, null-text inversion): ε(x_t, t_next), the input is the clean
      image (ᾱ = 1) and every grid point is a step.
    With ``refine_iters`` = k > 0 each step then solves x_next = inverse_step(x_t, ε(x_next, t_next)) by k
    fixed-point iterations, the exact inverse of the reverse DDIM step (from either convention's first guess).

    ``h_source`` says which h the returned trajectory holds:
    - ``"inversion"`` (default, InjectFusion's content h): h of each model evaluation along the inversion, at the
      timestep it was evaluated at (the last evaluation of a step when refining).  The seed convention never
      evaluates at T; there h is the last step's, as the official code's nearest-timestep lookup gives.
    - ``"reconstruction"``: h along the reverse process from x_T, exactly what an edit from x_T sees.
    ``report`` regenerates x0 from x_T and measures the error (``num_steps`` more passes; shared with the
    reconstruction source).  ``h_storage`` says how h is kept (precision, device, only t ≥ t_min).
    ``latents_on``: where the intermediate x_t (``Inversion.latents``, VP) are kept, "cpu" (copied asynchronously
    from a CUDA device) or "model" (on the model's device); x_T stays where the model computed it.
    The steps and the fixed-point refinement run in at least float32 (a half-precision x0 is widened); x_T and the
    latents are cast back to x0's dtype.  Finiteness is read once, after the loop.
    """
    check_batch(x0, "The input image / latent")
    if convention not in INVERSION_CONVENTIONS:
        raise ValueError(f"Inversion convention {convention!r} is unknown; use one of {INVERSION_CONVENTIONS}.")
    if h_source not in H_SOURCES:
        raise ValueError(f"h_source {h_source!r} is unknown; use one of {H_SOURCES}.")
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be ≥ 0, got {refine_iters}.")
    if latents_on not in ("cpu", "model"):
        raise ValueError(f"latents_on must be 'cpu' or 'model', got {latents_on!r}.")
    levels = levels_of(model)
    grid_desc = levels.grid(num_steps, grid)
    t_of = [-1, *reversed(grid_desc)]  # the clean input, then the grid ascending
    host = [0.0] + [levels.sigma(t) for t in t_of[1:]]
    clean_step = steps_from_clean(levels, t_of[1])
    regenerate = report or h_source == "reconstruction"
    steps = len(inversion_steps(len(host), convention, True, clean_step))
    loop = StepLoop(steps * (1 + refine_iters) + (num_steps if regenerate else 0), progress, should_stop)
    kept = (lambda x_t: to_host(x_t, x0.dtype)) if latents_on == "cpu" else (lambda x_t: x_t.to(x0.dtype))
    latents, h_at, last_h, watch = [kept(x0)], {}, [None], FiniteWatch()
    if convention == "seed" and not clean_step:
        latents.append(latents[0])  # the input is x at the first grid timestep

    def denoise(x_k, k):
        loop.tick()
        plain, _, h = denoise_at(model, x_k, host[k], t=t_of[k])
        last_h[0] = h
        if h_source == "inversion" and h_storage.keeps(t_of[k]):
            h_at[t_of[k]] = h_storage.put(h)
        return plain

    def step_done(k, predicted, x_next):  # predicted: the step's P (the clean input it predicts, DDIM §4.3)
        loop.show(predicted)
        watch.see(x_next, t_of[k + 1])
        latents.append(kept(x_next / levels.unit_scale(host[k + 1])))

    x = invert_sigmas(denoise, x0.to(step_dtype(x0.dtype)), host, clean_start=True, convention=convention,
                      clean_step=clean_step, refine_iters=refine_iters, callback=step_done, levels=levels)
    if (t_bad := watch.first()) is not None:
        raise ValueError(f"DDIM inversion diverged at t={t_bad}; check the input's range (images in [-1, 1]).")
    x = (x / levels.unit_scale(host[-1])).to(x0.dtype)
    host_ready(latents)
    trajectory = None
    if h_source == "inversion":  # at T (never evaluated by the seed convention): the last evaluation's h (see above)
        h_inv = [h_at[t] if t in h_at else h_storage.put(last_h[0]) for t in grid_desc if h_storage.keeps(t)]
        trajectory = h_storage.trajectory(grid_desc, h_inv, model.branches, model.fingerprint, "inversion",
                                          site_of(model))
    if not regenerate:
        return Inversion(x, torch.stack(latents), tuple(grid_desc), trajectory, convention=convention)
    sched = EditSchedule.reconstruction(num_steps, grid, levels.num_timesteps)
    recon = run_reverse(model, x, sched, record_h=h_source == "reconstruction", h_storage=h_storage,
                        progress=loop.sub())
    chosen = trajectory if h_source == "inversion" else recon.trajectory
    return Inversion(x, torch.stack(latents), tuple(grid_desc), chosen,
                     ReconstructionReport.compare(x0, recon.x0) if report else None, recon.x0, convention)


def capture(model: HSpaceModel, x_T: torch.Tensor, num_steps: int = 40, *, grid: str = "asyrp",
            h_storage: HStorage = HStorage(), progress: ProgressFn | None = None,
            should_stop: StopFn | None = None) -> HTrajectory:
    """h_t along the deterministic reverse process from x_T (a reconstruction if x_T came from ``invert``),
    kept as ``h_storage`` says; with ``h_storage.t_min`` > 0 the process stops there (no pass below it)."""
    sched = EditSchedule.reconstruction(num_steps, grid, model.schedule.num_train_timesteps)
    return run_reverse(model, x_T, sched, record_h=True, h_storage=h_storage, h_only=True, progress=progress,
                       should_stop=should_stop).trajectory


def generate(model: HSpaceModel, x_T: torch.Tensor, schedule: EditSchedule, *, seed: int = 0,
             progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """The reverse process with no edit (with quality boosting below t_boost)."""
    return run_reverse(model, x_T, schedule, seed=seed, progress=progress, should_stop=should_stop).x0


def edit(model: HSpaceModel, x_T: torch.Tensor, directions: Direction | Sequence[Direction],
         strengths: float | Sequence[float], schedule: EditSchedule, *, normalize: bool = False,
         asymmetric: bool = True, seed: int = 0, strict_fingerprint: bool = True,
         progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """Asyrp editing: x_T → edited x0 with h̃_t = h_t + Σ s_i·Δh_i over [T, t_edit] and the asymmetric step.

    Strengths may be negative (the opposite attribute).  An all-zero strength gives exactly ``generate``.
    A direction learnt on another number of steps is rescaled by train_steps / steps (``Direction.step_scale``).
    ``strict_fingerprint`` (default, as in ``inject``) refuses a direction made with another model; False applies
    it anyway (e.g. to a fine-tune of the model it was made with).
    """
    if isinstance(directions, Direction):
        directions = [directions]
    if isinstance(strengths, (int, float)):
        strengths = [float(strengths)] * len(directions)
    if len(directions) != len(strengths):
        raise ValueError(f"{len(directions)} directions but {len(strengths)} strengths; give one strength each.")
    for d in directions:
        check_same_site(site_of(d), site_of(model), "direction")
        if strict_fingerprint:
            check_fingerprint(d.fingerprint, model.fingerprint, "direction")
    strengths = [scaled_strength(d, s, schedule.num_steps) for d, s in zip(directions, strengths)]
    if all(s == 0 for s in strengths):
        return generate(model, x_T, schedule, seed=seed, progress=progress, should_stop=should_stop)
    shift = combine_directions(list(directions), list(strengths), normalize)
    return run_reverse(model, x_T, schedule, edit=shift, asymmetric=asymmetric, seed=seed,
                       progress=progress, should_stop=should_stop).x0


def content_injection(content: HTrajectory, gamma: float | Callable[[int], float], *,
                      mask: torch.Tensor | None = None, per_channel: bool = False,
                      mode: str = "slerp") -> HEdit:
    """The h edit of DiffStyle / InjectFusion: h̃_t = Slerp(h_t, h_c,t·‖h_t‖/‖h_c,t‖, γ_t).

    With a ``mask`` (local mixing) both maps are masked before the Slerp and the mixed region is inserted into
    the original map (``hmath.masked_normalized_slerp``).  ``mode="replace"`` is the naive baseline h̃_t = h_c,t
    (blended by the mask).
    """
    if mode not in ("slerp", "replace"):
        raise ValueError(f"mode must be 'slerp' or 'replace', got {mode!r}.")
    gamma_at = gamma if callable(gamma) else (lambda t: gamma)
    mask_cache: dict = {}

    def inject(h: torch.Tensor, t: int, branch: str) -> torch.Tensor:
        h_c = content.at(t, _content_branch(content, branch)).to(h.device, h.dtype)
        if h_c.shape[1:] != h.shape[1:] and content.file:  # its h is looked up at the site its file records
            raise ValueError(
                f"{content.file} records the h site {content.site!r}, where the style's h is {tuple(h.shape[1:])}, "
                f"but its h is {tuple(h_c.shape[1:])}: the file's site record does not match its h (if the record "
                "is wrong, capture and save the trajectory again), or it was captured with another model or image "
                "size: use images of the same size and the same model for content and style.")
        if h_c.shape[1:] != h.shape[1:]:
            raise ValueError(
                f"Content h is {tuple(h_c.shape[1:])} but the style's h is {tuple(h.shape[1:])}: use images of the "
                "same size and the same model for content and style."
            )
        if h_c.shape[0] not in (1, h.shape[0]):
            raise ValueError(f"{h_c.shape[0]} content images for {h.shape[0]} style images: give one content image, "
                             f"or as many as style images ({h.shape[0]}).")
        h_c = h_c.expand_as(h)
        if mask is not None and "m" not in mask_cache:
            mask_cache["m"] = mask_to_h_grid(mask, h.shape).to(h.device)
        m = mask_cache.get("m")
        if mode == "replace":
            return masked_blend(h, h_c, m)
        if m is None:
            return normalized_slerp(h, h_c, gamma_at(t), per_channel)
        return masked_normalized_slerp(h, h_c, gamma_at(t), m, per_channel)

    if mask is not None:  # fail early on a bad mask, not halfway through sampling
        mask_to_h_grid(mask, (content.batch_size, *content.h_shape))
    if not callable(gamma):
        check_gamma(gamma)
    return inject


def _content_branch(content: HTrajectory, branch: str) -> str:
    """The content's rows for a branch of the generation: the same branch, else its conditional (or only) one."""
    if branch in content.branches:
        return branch
    chosen = "cond" if "cond" in content.branches else content.branches[0]
    _note_branch(content.branches, branch, chosen)
    return chosen


@functools.lru_cache(maxsize=16)
def _note_branch(captured: tuple[str, ...], wanted: str, chosen: str) -> None:
    log.info("The h trajectory has branches %s and no %r branch; its %r rows are used.", captured, wanted, chosen)


def injection_edit(model: HSpaceModel, content: HTrajectory, gamma: float | Callable[[int], float],
                   schedule: EditSchedule, *, stride: int = 1, mask: torch.Tensor | None = None,
                   per_channel: bool = False, mode: str = "slerp", strict_fingerprint: bool = True) -> HEdit:
    """The checked h edit of a content injection on ``schedule`` (``inject``'s, and the nodes' through the σ loop):
    the content's site and (``strict_fingerprint``) model must be the model's, it must hold h at every edited
    timestep, and its branches must fit the model's; the hook (``content_injection``) reads only the injected steps
    (every ``stride``-th of the window, ``sampling.strided``)."""
    check_same_site(content.site, site_of(model), "content h trajectory")
    if strict_fingerprint:
        check_fingerprint(content.fingerprint, model.fingerprint, "content h trajectory")
    grid = schedule.timesteps()
    edited = [t for t in grid if schedule.edits_at(t)]
    content.require_timesteps(edited, "the injection", widget=levels_of(model).widget_at_most)
    injected = [t for t, on in zip(grid, strided([schedule.edits_at(t) for t in grid], stride)) if on]
    content = content.only_at(injected)  # the injection reads h at these steps only
    if content.branches != model.branches and "single" not in content.branches + model.branches:
        raise ValueError(f"Content was captured with branches {content.branches}, the model runs {model.branches}.")
    return content_injection(content, gamma, mask=mask, per_channel=per_channel, mode=mode)


def inject(model: HSpaceModel, style_x_T: torch.Tensor, content: HTrajectory,
           gamma: float | Callable[[int], float] = 0.5, schedule: EditSchedule | None = None, *,
           stride: int = 1, mask: torch.Tensor | None = None, omega: float | None = None,
           per_channel: bool = False, mode: str = "slerp", seed: int = 0, strict_fingerprint: bool = True,
           progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """DiffStyle / InjectFusion content injection: generate from the style image's inverted x_T while
    injecting the content image's h_t over [T, t_edit].

    ``gamma`` is a constant or a function of t; ``stride`` injects every k-th step; ``mask`` (any size,
    soft allowed) limits the mix to a region; ``omega`` > 0 turns on style calibration; ``schedule.t_boost``
    and ``eta_boost`` give quality boosting.  The content trajectory must hold h at every edited timestep of
    ``schedule`` (same steps and grid); anything else is refused (``injection_edit``).  ``strict_fingerprint``
    (default, as in ``edit``) refuses a content trajectory captured with another model.
    """
    schedule = schedule or EditSchedule(num_train_timesteps=model.schedule.num_train_timesteps)
    hook = injection_edit(model, content, gamma, schedule, stride=stride, mask=mask, per_channel=per_channel,
                          mode=mode, strict_fingerprint=strict_fingerprint)
    return run_reverse(model, style_x_T, schedule, edit=hook, edit_every=stride, omega=omega, seed=seed,
                       progress=progress, should_stop=should_stop).x0


def _check_interpolation(x_T_a: torch.Tensor, x_T_b: torch.Tensor, num_frames: int) -> None:
    """At least two frames, between two x_T of one shape."""
    if num_frames < 2:
        raise ValueError(f"num_frames must be ≥ 2, got {num_frames}.")
    if x_T_a.shape != x_T_b.shape:
        raise ValueError(f"The two inverted latents differ in shape: {tuple(x_T_a.shape)} vs {tuple(x_T_b.shape)}.")


def interpolation_storage(schedule: EditSchedule) -> HStorage:
    """How an interpolation keeps the h it captures: only the h it reads (t ≥ the schedule's t_edit, the lowest
    edited timestep), where the model computes (read back at every step of every frame)."""
    return HStorage("model", "model", t_min=min(schedule.t_edit, max(schedule.timesteps())))


def interpolation_frames(model: HSpaceModel, x_T_a: torch.Tensor, x_T_b: torch.Tensor, trajectory_a: HTrajectory,
                         trajectory_b: HTrajectory, num_frames: int,
                         schedule: EditSchedule) -> list[tuple[torch.Tensor, HEdit, EditSchedule]]:
    """Diffusion Autoencoders' frames (Preechakul et al. 2022, §4.1), (x_T(α), h edit, schedule) for
    α = k/(num_frames − 1): x_T(α) = Slerp(x_T^a, x_T^b, α) and h_t(α) = Lerp(h_t^a, h_t^b, α) over the edited steps,
    after the checks (sites, every edited timestep captured): ``interpolate``'s and the node's through the σ loop.
    The end frames run without ``clip_x0`` (``interpolation_schedule``), so they are the inputs' reconstructions."""
    _check_interpolation(x_T_a, x_T_b, num_frames)
    edited = [t for t in schedule.timesteps() if schedule.edits_at(t)]
    for trajectory in (trajectory_a, trajectory_b):
        check_same_site(trajectory.site, site_of(model), "h trajectory")
        trajectory.require_timesteps(edited, "the interpolation", widget=levels_of(model).widget_at_most)
    frames = []
    for k in range(num_frames):
        alpha = k / (num_frames - 1)

        def mix(h, t, branch, alpha=alpha):
            ha = trajectory_a.at(t, _content_branch(trajectory_a, branch)).to(h)
            hb = trajectory_b.at(t, _content_branch(trajectory_b, branch)).to(h)
            return lerp(ha, hb, alpha)

        frames.append((slerp(x_T_a, x_T_b, alpha), mix, interpolation_schedule(schedule, k, num_frames)))
    return frames


def interpolation_schedule(schedule: EditSchedule, frame: int, num_frames: int) -> EditSchedule:
    """The schedule of frame ``frame``: the end frames (α = 0, 1) without ``clip_x0``. An end's x_T and h are its
    own image's, so unclipped it regenerates that image's reconstruction exactly (the trajectories are captured
    unclipped); clipping its predicted x0 would move it away from its input (by 35–39/255 on the bundled model's
    sample workflow). ``clip_x0`` is for the middle frames, whose x_T inverts no image."""
    if frame in (0, num_frames - 1) and schedule.clip_x0 is not None:
        return dataclasses.replace(schedule, clip_x0=None)
    return schedule


def interpolate(model: HSpaceModel, x_T_a: torch.Tensor, x_T_b: torch.Tensor, num_frames: int,
                schedule: EditSchedule, *, trajectory_a: HTrajectory | None = None,
                trajectory_b: HTrajectory | None = None, seed: int = 0,
                progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> torch.Tensor:
    """Diffusion Autoencoders' interpolation (Preechakul et al. 2022, §4.1) in h-space:
    x_T(α) = Slerp(x_T^a, x_T^b, α) and, over [T, t_edit], h_t(α) = Lerp(h_t^a, h_t^b, α), with the
    asymmetric step.  Returns (num_frames·B, C, H, W), frame-major; frame 0 reconstructs a, the last b.

    Missing trajectories are captured along each image's own reconstruction, so the end frames are exact.
    """
    _check_interpolation(x_T_a, x_T_b, num_frames)
    grid, storage = schedule.grid, interpolation_storage(schedule)
    steps, runs = schedule.num_steps, num_frames + (trajectory_a is None) + (trajectory_b is None)
    done = [0]  # steps of the runs before this one: progress counts the captures and every frame's run

    def report():  # the run that starts now, as part of the whole
        return offset(progress, done[0], runs * steps)

    def run_done():
        done[0] += steps

    if trajectory_a is None:
        trajectory_a = capture(model, x_T_a, steps, grid=grid, h_storage=storage, progress=report(),
                               should_stop=should_stop)
        run_done()
    if trajectory_b is None:
        trajectory_b = capture(model, x_T_b, steps, grid=grid, h_storage=storage, progress=report(),
                               should_stop=should_stop)
        run_done()
    out = []
    for x_T, mix, frame_schedule in interpolation_frames(model, x_T_a, x_T_b, trajectory_a, trajectory_b, num_frames,
                                                         schedule):
        out.append(run_reverse(model, x_T, frame_schedule, edit=mix, seed=seed, progress=report(),
                               should_stop=should_stop).x0)
        run_done()
    return torch.cat(out)
