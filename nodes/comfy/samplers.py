"""The h-space processes as ComfyUI SAMPLERs: ``comfy.samplers.KSAMPLER`` over the sigmas and the guider they get.

Each sampler function has k-diffusion's signature ``(model, x, sigmas, extra_args, callback, disable)``: ``model``
is whatever guider SamplerCustomAdvanced was given (CFGGuider, DualCFGGuider, PerpNegGuider, …) and ``sigmas``
whatever scheduler made.  The h patch (and the one-call [x; x] batch of ``edit_batch``) goes into a per-call copy of
``model_options``, so every guider pass sees it; the loops are ``hspace_core.sampling``'s.  ComfyUI's ``callback``
gets every step (latent previews, progress, Cancel).  The guider reserved memory for the latent's rows; before its
first step each edit sampler reserves for the rows it really runs (``memory.rows_run``, ``memory.reserve_rows``); the
inversion sampler runs the latent's own rows.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

import comfy.samplers

from ...hspace_core.devices import FiniteWatch, host_ready, step_dtype, to_host
from ...hspace_core.flow import nudge_latent
from ...hspace_core.sampling import (EditPlan, SigmaWindow, check_window_steps, clip_denoised, inversion_steps, invert_sigmas,
                                     sample_h_edit, steps_from_clean, strided)
from ...hspace_core.sigmas import sigmas_problem, ve_to_vp
from ...hspace_core.sites import site_of
from ...hspace_core.trajectory import HStorage, HTrajectory, Inversion
from .memory import reserve_rows, rows_run
from .model import ComfyHSpaceModel
from .noise_levels import boost_t_boost, noise_levels

log = logging.getLogger("hspace")
CLEAN = 1e-3  # a first sigma below this only marks the clean input (FlipSigmas puts 1e-4 where 0 was)


def timesteps_of(model_patcher, sigmas: list[float]) -> list[int]:
    """The model's timestep nearest (in log σ) to each σ > 0: where h edits and trajectories are looked up.  A σ
    between table entries is logged once per sampler run."""
    levels = noise_levels(model_patcher)
    positive = [s for s in sigmas if s > 0]
    if off := levels.off_table(positive):
        log.info("h-space: %d of these sigmas lie between the model's timesteps; h edits use the nearest timestep.", off)
    return levels.timesteps(positive)


def _host(sigmas: torch.Tensor) -> list[float]:
    return sigmas.detach().float().cpu().tolist()  # one copy before the loop, none inside it


# The nodes that make or change SIGMAS, for a refusal that cannot find the one in the graph (what each gets wrong).
_SIGMAS_MAKERS = "a scheduler node, SplitSigmas (its high part can be one σ), FlipSigmas (increasing)"


def sigmas_source(input_name: str = "sigmas") -> str:
    """The node that feeds ``input_name`` of the node ComfyUI is running now (SamplerCustomAdvanced, for a SAMPLER's
    sample function), read from the prompt being run: "the sigmas from SplitSigmas (node 12)".  Where that cannot be
    read (no server, a prompt not from the queue), the input and the nodes that typically make it."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        running = list(PromptServer.instance.prompt_queue.currently_running.values())
        prompt = next(item[2] for item in running if item[1] == context.prompt_id)
        link = prompt[context.node_id]["inputs"][input_name]
        source = prompt[link[0]]
        kind, title = source["class_type"], (source.get("_meta") or {}).get("title")
        named = f"'{title}' ({kind}, node {link[0]})" if title and title != kind else f"{kind} (node {link[0]})"
        return f"the {input_name} from {named}"
    except Exception:  # noqa: BLE001 -- only the wording of a refusal depends on it
        return f"the {input_name} given to SamplerCustomAdvanced (made by {_SIGMAS_MAKERS})"


_SIGMAS_FIX = {False: "give SamplerCustomAdvanced a scheduler's sigmas (at least one step; without FlipSigmas)",
               True: "put FlipSigmas between a scheduler (at least one step) and SamplerCustomAdvanced"}


def check_sigmas(node: str, host: list[float], increasing: bool = False) -> None:
    """Refuse sigmas a SAMPLER cannot run (``sigmas.sigmas_problem``: too few, non-finite, negative, the wrong
    order), naming the node, what is wrong and the node that made them (``sigmas_source``)."""
    problem = sigmas_problem(host, increasing)
    if problem is not None:
        raise ValueError(f"{node}: {sigmas_source()} {problem}: {_SIGMAS_FIX[increasing]}.")


def _comfy_callback(callback, sigmas):
    if callback is None:
        return None
    return lambda i, denoised, x: callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                                            "denoised": denoised})


def guider_patcher(model, node: str):
    """The ModelPatcher of the guider SamplerCustomAdvanced runs (``KSamplerX0Inpaint.inner_model``)."""
    patcher = getattr(getattr(model, "inner_model", None), "model_patcher", None)
    if patcher is None:
        raise ValueError(f"{node}: this SAMPLER runs inside SamplerCustomAdvanced (or SamplerCustom) with a guider; "
                         "connect it there.")
    return patcher


def _refuse_noise_mask(extra_args: dict, node: str) -> None:
    if extra_args.get("denoise_mask") is not None:
        raise ValueError(f"{node} does not take a latent noise mask: remove SetLatentNoiseMask from its latent "
                         "(an injection's region is its 'mask' input).")


def h_edit_sampler(node: str, edit_for, window_for, *, edit_branches: str, site: str, boost=None, seed: int = 0,
                   omega: float | None = None, edit_every: int = 1, check=None, hs_for=None, clip_x0: float | None = None,
                   record=None, stop_below: int | None = None, reserved: bool = False):
    """A KSAMPLER running Asyrp's asymmetric process (``sampling.sample_h_edit``) under the guider it is given: the
    SAMPLER nodes' and (through ``run.sample_process``, on their DDIM grid's real sigmas) the process nodes'.

    ``edit_for(num_steps, hs_model, window_timesteps)`` makes the h edit (an ``HEdit``, or None for none) once the
    sigmas and the model are known (``window_timesteps``: the timesteps of the steps inside the window, stride aside);
    ``window_for(model_patcher)`` the ``SigmaWindow`` it acts in.  ``boost`` (a QualityBoost) makes the steps below
    its t_boost (or its start percent: ``noise_levels.boost_t_boost``) stochastic (η, noise from ``seed``); ``omega``
    calibrates and ``edit_every`` strides (content injection).  A window holding no step of the sigmas, or one
    below the boost's start, is refused as the nodes refuse it (``sampling.check_window_steps``); then
    ``check(window_timesteps, hs_model)`` may refuse the sigmas given.

    ``hs_for(guider, extra_args, model_patcher)`` makes the ``ComfyHSpaceModel`` (default: ``for_guider``; the
    process nodes name their branches by their cfg and put in a null-text inversion's negatives); ``clip_x0``
    and ``record(t, h)`` are ``run_plan``'s; ``stop_below`` = t_min runs only the steps at t ≥ t_min (a capture's
    h_only) and returns the model-space x reached there; ``reserved``: the caller's sampling already reserved
    memory for the rows run (``memory.with_row_reservation``), else it is reserved here (``memory.reserve_rows``)."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        _refuse_noise_mask(extra_args, node)
        patcher = guider_patcher(model, node)
        host = _host(sigmas)
        check_sigmas(node, host)
        ts = timesteps_of(patcher, host)
        hs = (hs_for or ComfyHSpaceModel.for_guider)(model, extra_args, patcher, edit_branches, site)
        window = window_for(patcher)
        inside = [window.contains(sigma) for sigma in host[:-1]]
        window_ts = [t for t, i in zip(ts, inside) if i]
        t_boost = boost_t_boost(boost, patcher)  # its t_boost, or its start percent on this model's σ
        try:
            check_window_steps(window.made_with, window_ts, len(host) - 1, t_boost)  # the nodes' rule
        except ValueError as refused:
            raise ValueError(f"{node}: {refused}") from None
        if check is not None:
            check(window_ts, hs)
        edits = strided(inside, edit_every)
        etas = [boost.eta if t < t_boost else 0.0 for t in ts]
        etas += [0.0] * (len(host) - 1 - len(etas))
        if boost is not None and boost.eta > 0 and not any(e > 0 and s > 0 for e, s in zip(etas, host[1:])):
            # a step to σ = 0 has no posterior noise (DDIM eq. 16 at ᾱ_prev = 1), on every parameterisation
            log.info("%s: the H-Space Quality Boost makes none of these %d steps stochastic (its start: t < %d of this "
                     "model's %d-entry σ table; a step to σ = 0 never is); lower boost_start_percent (window = "
                     "percent) to boost.", node, len(host) - 1, t_boost, hs.levels.num_timesteps)
        edit = edit_for(len(host) - 1, hs, window_ts)
        if edit is None:
            edits = [False] * len(edits)
        if not reserved:
            reserve_rows(model.inner_model, rows_run(patcher, x.shape[0], edited=any(edits)), x.shape)
        n = len(host) - 1 if stop_below is None else sum(t >= stop_below for t in ts[:len(host) - 1])
        return run_plan(hs, x, sigmas[:n + 1], ts[:n], edits[:n], etas[:n], edit, omega=omega, seed=seed,
                        clip_x0=clip_x0, record=record, callback=_comfy_callback(callback, sigmas))

    return comfy.samplers.KSAMPLER(sample)


def run_plan(hs, x: torch.Tensor, sigmas: torch.Tensor, timesteps, edits, etas, edit, *, omega: float | None = None,
             seed: int = 0, clip_x0: float | None = None, record=None, callback=None) -> torch.Tensor:
    """The one body of the reverse processes: ``sampling.sample_h_edit`` from the model-space point ``x`` over
    ``sigmas`` (n + 1, decreasing) through ``hs.denoised`` at ``timesteps`` (n), editing with ``edit`` where
    ``edits`` says, η per step from ``etas`` (noise from ``seed``), ``omega`` calibrating.

    - ``clip_x0`` = c clamps each denoised x0, D(x | h) and D(x | h̃), to [−c, c] (``clip_denoised``:
      ``ddim.clipped_eps`` in σ space).
    - ``record(t, h)`` is told each step's timestep and its original (unedited) h, as ``hs.denoised`` returns it
      (one call a step; style calibration's second prediction is not a step's).
    - ``callback(i, denoised, x)`` after every step (k-diffusion's order: the sampler's callback, for previews).

    The step math runs in at least float32 (x cast back to its dtype); finiteness is read once, after the loop."""
    seen = [-1]  # the last step whose h was recorded

    def denoise(x_i, i, edit_now):
        plain, edited, h = hs.denoised(x_i, sigmas[i], edit if edit_now else None, timesteps[i])
        if record is not None and seen[0] != i:
            seen[0] = i
            record(timesteps[i], h)
        return clip_denoised(plain, clip_x0), clip_denoised(edited, clip_x0)

    watch = FiniteWatch()

    def step_done(i, denoised, x_next):
        watch.see(x_next, timesteps[i])
        if callback is not None:
            callback(i, denoised, x_next)

    out = sample_h_edit(denoise, x.to(step_dtype(x.dtype)), sigmas, edits, etas=etas, omega=omega, seed=seed,
                        callback=step_done, levels=hs.levels)
    if (t_bad := watch.first()) is not None:
        raise ValueError(f"The reverse process diverged (NaN/inf) at t={t_bad}; lower the edit strength or γ.")
    return out.to(x.dtype)


def refuse_on_flow(node: str, *, convention: str = "seed") -> None:
    """What has no meaning on flow matching (docs/transformers.md): the diffusers inversion convention rescales the
    point to the next ᾱ, which the flow path has no use for (its model input is the sample itself).  The quality
    boost and style calibration do have one (``flow.flow_ddim_step``, ``sampling._calibrated``)."""
    if convention != "seed":
        raise ValueError(f"{node}: convention {convention!r} rescales the point to the next ᾱ, which flow matching "
                         "does not have: set convention to 'seed' (Euler inversion at the current point).")


def run_h_edit(hs, x_T: torch.Tensor, edit, schedule, *, seed: int = 0, progress=None, edit_every: int = 1,
               omega: float | None = None, record=None) -> torch.Tensor:
    """The reverse process x_T → x0 on ``schedule``'s DDIM grid (``sampling.EditPlan.on_grid``) through ``run_plan``,
    the body of ``h_edit_sampler``, for a loop run inside ``run_in_comfy`` (the DDIM Inversion's guided
    reconstruction, StyleID's).  It is ``processes.run_reverse`` in σ space (to 1e-5): ``edit`` None is the
    reconstruction, ``edit_every`` = k edits every k-th step of the edit window, ``omega`` > 0 is InjectFusion's style
    calibration, η and t_boost are ``schedule``'s (noise from ``seed``), ``schedule.clip_x0`` clamps x0 and
    ``record(t, h)`` is ``run_plan``'s.  x_T (VP) starts at the model's point x_T·√(a² + σ²) (``unit_scale``: x_T
    itself on a flow model, whose grid starts at σ = 1).
    ``progress(done, total, x0)`` is told after every step (x0: the step's denoised latent, for previews)."""
    grid = list(schedule.timesteps())
    plan = EditPlan.on_grid(schedule, hs.levels, edited=edit is not None, edit_every=edit_every)
    sigmas = plan.sigmas.float().to(x_T.device)
    callback = None if progress is None else lambda i, denoised, x: progress(i + 1, len(grid), denoised)
    x = x_T.to(step_dtype(x_T.dtype)) * hs.levels.unit_scale(float(plan.sigmas[0]))
    x = run_plan(hs, x, sigmas, plan.timesteps, plan.edits, plan.etas, edit, omega=omega, seed=seed,
                 clip_x0=schedule.clip_x0, record=record, callback=callback)
    return x.to(x_T.dtype)


class CaptureRecord:
    """What a capture (an unedited ``h_edit_sampler`` run with ``record`` and ``edit_for``) saw: h at each step kept
    as ``storage`` says, and the model it ran, whose branches, fingerprint and site the trajectory carries."""

    def __init__(self, storage: HStorage):
        self.storage, self.kept, self.hs = storage, [], None

    def record(self, t: int, h: torch.Tensor) -> None:
        if self.storage.keeps(t):
            self.kept.append(self.storage.put(h))

    def edit_for(self, num_steps, hs, window_timesteps):
        self.hs = hs
        return None  # a capture edits nothing

    def trajectory(self, timesteps) -> HTrajectory:
        """h along the reverse process on the grid ``timesteps`` (``processes.run_reverse(record_h=True)``'s)."""
        if self.hs is None:
            raise ValueError("This capture never ran: its sampler got no sigmas.")
        return self.storage.trajectory(timesteps, self.kept, self.hs.branches, self.hs.fingerprint, "reconstruction",
                                       site_of(self.hs))


def capture_sampler(node: str, storage: HStorage | None, *, site: str, edit_branches: str, hs_for,
                    h_only: bool = False):
    """(a KSAMPLER recording h along the plain reverse process, its ``CaptureRecord``); ``h_only`` stops below the
    storage's t_min (the x returned is then no clean sample); ``storage`` None records nothing (a reconstruction)."""
    record = CaptureRecord(storage)
    sampler = h_edit_sampler(node, record.edit_for, lambda patcher: _EVERY_STEP, edit_branches=edit_branches,
                             site=site, hs_for=hs_for, record=record.record if storage is not None else None,
                             stop_below=storage.t_min if h_only else None, reserved=True)
    return sampler, record


_EVERY_STEP = SigmaWindow(float("inf"), 0.0, "every step")  # a run that edits nothing


@dataclass(frozen=True)
class InversionRun:
    """One DDIM inversion in σ space (``run_inversion``): the increasing ``sigmas`` it ran on, the model's timestep
    of each σ > 0 (``timesteps``, increasing), x_T as the VE point at sigmas[-1], the VP latents x_t it passed
    (the clean input first; empty unless kept), h of every evaluation kept as asked ({t: h}, the last one at each
    timestep) and the last evaluation's h."""

    sigmas: tuple[float, ...]
    timesteps: tuple[int, ...]
    x_T: torch.Tensor
    latents: tuple
    h_at: dict
    last_h: torch.Tensor
    fingerprint: str
    site: str
    convention: str = "seed"
    flow: bool = False  # a flow-matching model's inversion: x_T = (1 − σ)·x0 + σ·ε at sigmas[-1] < 1

    def x_T_vp(self) -> torch.Tensor:
        """x_T in the pack's convention (unit variance, VP at the last σ); for flow matching, what ComfyUI's LATENT
        holds after the sampler, x_T/(1 − σ) (``CONST.inverse_noise_scaling``), which a reverse pass on the same
        sigmas with DisableNoise starts from; at σ = 1 (H-Space DDIM Inversion's grid), where that is undefined,
        x_T itself: the noise, which the process nodes start from as it is (``run.starting_at``)."""
        if self.flow:
            return self.x_T if self.sigmas[-1] >= 1 - 1e-6 else self.x_T / (1 - self.sigmas[-1])
        return ve_to_vp(self.x_T, self.sigmas[-1])

    def latent_view(self) -> torch.Tensor:
        """x_T as the sampler's output LATENT holds it (model space): x_T itself, or x_T/(1 − σ) for flow."""
        return self.x_T_vp() if self.flow else self.x_T

    def inversion(self, grid, h_storage: HStorage | None, batch: int) -> Inversion:
        """The library's ``Inversion`` of a run on the DDIM grid ``grid`` (decreasing; the latents kept), with the
        trajectory along it where ``h_storage`` (the one the run kept h with) is given."""
        trajectory = self.trajectory(h_storage, batch) if h_storage is not None else None
        return Inversion(self.x_T_vp(), torch.stack(self.latents), tuple(grid), trajectory, convention=self.convention)

    def trajectory(self, h_storage: HStorage, batch: int, made_with: str | None = None) -> HTrajectory:
        """h along the inversion (InjectFusion's content h, ``h_source='inversion'``) at each timestep, decreasing,
        as ``processes.invert`` reads it: the last evaluation at each timestep; at T, which the seed convention never
        evaluates, the last evaluation's.  ``h_storage`` must be the one the run kept h with; ``made_with`` replaces
        its record of the grid (a SAMPLER's sigmas)."""
        ts = tuple(reversed(self.timesteps))
        hs = [self.h_at[t] if t in self.h_at else h_storage.put(self.last_h) for t in ts if h_storage.keeps(t)]
        branches = ("single",) if self.last_h.shape[0] == batch else ("uncond", "cond")
        trajectory = h_storage.trajectory(ts, hs, branches, self.fingerprint, "inversion", self.site)
        return trajectory if made_with is None else dataclasses.replace(trajectory, made_with=made_with)


def run_inversion(hs, x: torch.Tensor, sigmas: torch.Tensor, timesteps, *, convention: str = "seed",
                  refine_iters: int = 0, h_storage: HStorage | None = HStorage(), latents_on: str | None = None,
                  callback=None, node: str = "H-Space Inversion Sampler", handed_on: bool = True) -> InversionRun:
    """DDIM inversion on increasing ``sigmas`` (``sampling.invert_sigmas``) through ``hs`` (a ``ComfyHSpaceModel``):
    the one code path of the H-Space Inversion Sampler and H-Space DDIM Inversion.

    A first σ below ``CLEAN`` marks the clean input ``x`` (FlipSigmas' 1e-4, or 0); ``timesteps`` are the model's
    timesteps of the other sigmas, where h is looked up.  The seed convention's rule for the clean input is
    ``processes.invert``'s (``sampling.steps_from_clean``: it stands at the DDIM grid's t = 0 on a DDPM-style model,
    a first step takes it there otherwise and always on flow matching).  ``h_storage`` keeps every evaluation's h
    (None: none); ``latents_on`` ("cpu", asynchronously from CUDA, or "model"; None: not kept) keeps the VP latents
    for ``Inversion.latents``.  ``callback(i, P, x)`` is ComfyUI's sampler-callback shape after each step (P: the
    clean sample the step predicts).  The step math runs in at least float32 (x_T and the latents in ``x``'s dtype);
    finiteness is read once, after the loop.  The latents are the library's, x/√(a² + σ²)
    (``NoiseLevels.unit_scale``); ``handed_on`` (the SAMPLER, whose x_T ComfyUI hands on as a LATENT) refuses flow
    sigmas that end at σ = 1, which H-Space DDIM Inversion (not handed on: it reads the record) runs to; ``node``
    names the node in refusals."""
    if latents_on not in (None, "cpu", "model"):
        raise ValueError(f"latents_on must be 'cpu' or 'model', got {latents_on!r}.")
    host = sigmas.detach().double().cpu().tolist()  # one copy, before the loop
    sigmas = sigmas.to(x.device, torch.float32)
    clean = host[0] < CLEAN
    t_of = ([-1] if clean else []) + [int(t) for t in timesteps]
    if len(t_of) != len(host):
        raise ValueError(f"{len(host)} sigmas but {len(timesteps)} timesteps for them.")
    h_at, last, watch = {}, [None], FiniteWatch()
    kept = (lambda v: to_host(v, x.dtype)) if latents_on == "cpu" else (lambda v: v.to(x.dtype))
    flow, unit = hs.levels.flow, hs.levels.unit_scale
    latents = [] if latents_on is None else [kept(x if clean else x / unit(host[0]))]
    clean_step = clean and len(t_of) > 1 and steps_from_clean(hs.levels, t_of[1])
    if latents and clean and convention == "seed" and not clean_step:
        latents.append(latents[0])  # the input is x at the first grid timestep

    def denoise(x_k, k):
        plain, _, h = hs.denoised(x_k, sigmas[k], t=t_of[k])
        last[0] = h
        if h_storage is not None and h_storage.keeps(t_of[k]):
            h_at[t_of[k]] = h_storage.put(h)
        return plain

    def step_done(k, predicted, x_next):
        watch.see(x_next, t_of[k + 1])
        if latents_on is not None:
            latents.append(kept(x_next / unit(host[k + 1])))
        if callback is not None:
            callback(k, predicted, x_next)

    if flow:
        refuse_on_flow(node, convention=convention)
        if handed_on and host[-1] >= 1 - 1e-6:
            raise ValueError(f"{node}: these sigmas end at σ = 1. ComfyUI hands a flow-matching "
                             "LATENT on as x/(1 − σ), which σ = 1 cannot carry: end the inversion below 1 (the "
                             "scheduler's denoise below 1, or SplitSigmas dropping its first σ) and run the reverse "
                             "pass on the same sigmas.")
    x_T = invert_sigmas(denoise, x.to(step_dtype(x.dtype)), host, clean_start=clean, convention=convention,
                        clean_step=clean_step, refine_iters=refine_iters, callback=step_done, levels=hs.levels)
    if (t_bad := watch.first()) is not None:
        raise ValueError(f"DDIM inversion diverged at t={t_bad}; check the input's range (images in [-1, 1]).")
    host_ready(latents)
    return InversionRun(tuple(host), tuple(t_of[1:] if clean else t_of), x_T.to(x.dtype), tuple(latents), h_at,
                        last[0], hs.fingerprint, hs.site, convention, flow)


def ddim_inversion(hs, x0: torch.Tensor, num_steps: int, *, convention: str = "seed", refine_iters: int = 0,
                   h_storage: HStorage | None = HStorage(), latents_on: str = "cpu", progress=None,
                   node: str = "H-Space DDIM Inversion") -> Inversion:
    """H-Space DDIM Inversion's inversion (``processes.invert`` without the reconstruction, to 1e-5): x0 → x_T on the
    pack's DDIM grid ('asyrp') at the model's sigmas, through ``run_inversion``.  The Inversion holds the VP x_T, the
    latents and, with ``h_storage``, the trajectory along the inversion (else None).  ``progress(done, total, x0)``
    counts U-Net passes (``inversion_passes``).  As the node, it reads x_T from the run (not handed on: a flow
    inversion ends at σ = 1); ``node`` names the node in refusals."""
    grid = hs.levels.grid(num_steps)
    ascending = list(reversed(grid))
    sigmas = hs.levels.sigmas_at(grid).float().flip(0)  # FlipSigmas of the DDIM sigmas, as the sampler gets them
    total, passes = inversion_passes(num_steps, convention, refine_iters, hs.levels), [0]

    def step_done(i, predicted, x):
        passes[0] += 1 + refine_iters
        progress(passes[0], total, predicted)

    run = run_inversion(hs, x0, sigmas, ascending, convention=convention, refine_iters=refine_iters,
                        h_storage=h_storage, latents_on=latents_on, callback=step_done if progress else None,
                        node=node, handed_on=False)
    return run.inversion(grid, h_storage, x0.shape[0])


def inversion_passes(num_steps: int, convention: str, refine_iters: int, levels=None) -> int:
    """U-Net passes of ``ddim_inversion``: its steps (``sampling.inversion_steps`` on the DDIM grid, which starts at
    t = 0, with the clean input's rule ``sampling.steps_from_clean`` of the model's ``levels``), each
    1 + ``refine_iters``."""
    clean_step = steps_from_clean(levels, 0)
    return len(inversion_steps(num_steps + 1, convention, clean_start=True, clean_step=clean_step)) * (1 + refine_iters)


class InversionRecord:
    """What an inversion sampler saw on its last run (read by 'H-Space Inverted x_T'): its ``InversionRun``."""

    def __init__(self):
        self.run: InversionRun | None = None


def inversion_sampler(node: str, *, refine_iters: int, site: str, record: InversionRecord, convention: str = "seed",
                      hs_for=None, h_storage: HStorage | None = HStorage(), latents_on: str | None = None,
                      nudge: float = 1.0, handed_on: bool = True):
    """A KSAMPLER doing DDIM inversion on increasing (flipped) sigmas (``run_inversion``), ``convention`` 'seed' or
    'diffusers'; decreasing sigmas are refused, naming FlipSigmas.  ``nudge`` ≠ 1 (flow models only) multiplies the
    clean latent first (``flow.nudge_latent``: Stable Flow's latent nudging).  ``hs_for``, ``h_storage`` and
    ``latents_on`` as in ``h_edit_sampler`` and ``run_inversion`` (H-Space DDIM Inversion keeps the latents for
    null-text inversion); ``handed_on`` False: the caller reads x_T from ``record``, not from the output LATENT
    (``run_inversion``: a flow inversion may then end at σ = 1)."""

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        _refuse_noise_mask(extra_args, node)
        model_patcher = guider_patcher(model, node)
        host = _host(sigmas)
        check_sigmas(node, host, increasing=True)
        ts = timesteps_of(model_patcher, host[1:] if host[0] < CLEAN else host)
        hs = (hs_for or ComfyHSpaceModel.for_guider)(model, extra_args, model_patcher, "both", site)
        if nudge != 1 and not hs.levels.flow:
            raise ValueError(f"{node}: latent_nudging {nudge} is Stable Flow's aid for inverting flow-matching "
                             "transformers (Flux, SD3.x); this model inverts by DDIM: set latent_nudging to 1.")
        x = nudge_latent(x, nudge)
        record.run = run_inversion(hs, x, sigmas, ts, convention=convention, refine_iters=refine_iters,
                                   h_storage=h_storage, latents_on=latents_on,
                                   callback=_comfy_callback(callback, sigmas), node=node, handed_on=handed_on)
        return record.run.x_T.clone()

    return comfy.samplers.KSAMPLER(sample)
