"""Inversion that holds under classifier-free guidance.

- Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion"): invert at guidance 1 with the
  source prompt c; reconstruct and edit at guidance w with c as the *negative* as well, so that the guided
  ε_∅' + w·(ε_c − ε_∅') with ∅' = c equals the ε the inversion used.
- Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images", Alg. 1): invert at
  guidance 1 (the pivot x*_t), then for t = T … 1 optimise the unconditional embedding ∅_t so that the guided
  DDIM step from x̄_t lands on x*_{t−1}; the per-step ∅_t ride in ``Conditioning.negative_at``.
- Fixed-point refinement under guidance needs nothing here: ``invert(..., refine_iters=k)`` on a guided model
  solves the implicit equation with the guided ε.

These need a model whose conditioning can be swapped (``with_conditioning``, as ``DiffusersUNet``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .adapters.diffusers_unet import Conditioning
from .ddim import ddim_step
from .processes import generate, invert
from .progress import ProgressFn, StepLoop, StopFn, check_latent
from .schedules import step_pairs
from .state import EditSchedule, Inversion, ReconstructionReport

CFG_INVERSIONS = ("plain", "negative_prompt", "null_text")


def negative_prompt_conditioning(conditioning: Conditioning) -> Conditioning:
    """The conditioning for reconstructing / editing after negative-prompt inversion: the source prompt is also
    the negative (Miyake et al. 2023, eq. 9), at the same guidance scale."""
    return dataclasses.replace(conditioning, negative=conditioning.positive, negative_at={})


@dataclass(frozen=True)
class GuidedInversion:
    """An inversion for use at guidance ``conditioning.guidance_scale``: x_T and h come from ``inversion``; edit and
    reconstruct with ``model.with_conditioning(conditioning)``."""

    inversion: Inversion
    conditioning: Conditioning
    method: str
    report: ReconstructionReport | None = None
    reconstruction: torch.Tensor | None = None


def invert_guided(model, x0: torch.Tensor, num_steps: int = 40, *, method: str = "negative_prompt",
                  grid: str = "asyrp", convention: str = "seed", refine_iters: int = 0, report: bool = True,
                  inner_steps: int = 10, lr: float = 1e-2, early_stop: float = 1e-5,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> GuidedInversion:
    """Invert ``x0`` for reconstruction and editing at the guidance of ``model.conditioning``.

    ``method``: "plain" (DDIM inversion with the guided ε; add ``refine_iters`` for fixed-point refinement under
    guidance), "negative_prompt" or "null_text" (both invert at guidance 1; see the module docstring).
    ``inner_steps``, ``lr`` and ``early_stop`` are null-text's Adam iterations per step, learning rate and
    loss threshold (Mokady et al.: 10, 0.01, 1e-5 growing by 2e-5 per iteration).
    """
    if method not in CFG_INVERSIONS:
        raise ValueError(f"CFG inversion {method!r} is unknown; use one of {CFG_INVERSIONS}.")
    c = getattr(model, "conditioning", None)
    if c is None or not hasattr(model, "with_conditioning"):
        raise ValueError("Guided inversion needs a conditioned model (DiffusersUNet with a Conditioning).")
    check_latent(x0, "The input image / latent")
    kw = dict(grid=grid, convention=convention, refine_iters=refine_iters)
    if method == "plain":
        inv = invert(model, x0, num_steps, report=report, progress=progress, should_stop=should_stop, **kw)
        return GuidedInversion(inv, c, method, inv.report, inv.reconstruction)
    single = model.with_conditioning(dataclasses.replace(c, guidance_scale=1.0, negative_at={}))
    inv = invert(single, x0, num_steps, report=False, progress=progress, should_stop=should_stop, **kw)
    if method == "negative_prompt":
        conditioning = negative_prompt_conditioning(c)
    else:
        conditioning = _null_text(model, inv, num_steps, grid, inner_steps, lr, early_stop, should_stop)
    if not report:
        return GuidedInversion(inv, conditioning, method)
    sched = EditSchedule(num_steps, t_edit=0, t_boost=0, grid=grid, num_train_timesteps=model.schedule.num_train_timesteps)
    with torch.no_grad():
        recon = generate(model.with_conditioning(conditioning), inv.x_T, sched, should_stop=should_stop)
    return GuidedInversion(inv, conditioning, method, ReconstructionReport.compare(x0, recon), recon)


def _null_text(model, pivot: Inversion, num_steps: int, grid: str, inner_steps: int, lr: float, early_stop: float,
               should_stop: StopFn | None) -> Conditioning:
    """Mokady et al. 2023, Alg. 1: per-step unconditional embeddings that pull the guided path onto the pivot."""
    c = model.conditioning
    w, sched = c.guidance_scale, model.schedule
    ascending = list(reversed(pivot.timesteps))
    target_of = {t: pivot.latents[k + 1] for k, t in enumerate(ascending)}
    target_of[-1] = pivot.latents[0]
    cond_only = model.with_conditioning(dataclasses.replace(c, guidance_scale=1.0, negative_at={}))

    def uncond_only(embedding):  # the unconditional branch alone, SDXL's negative added conds included
        added = {k: (v[0], v[0]) for k, v in c.added_cond.items()}
        return model.with_conditioning(Conditioning(positive=embedding, added_cond=added))

    loop = StepLoop(num_steps, None, should_stop)
    uncond = c.negative.detach().clone().float()
    x, negative_at = pivot.x_T, {}
    with torch.inference_mode(False), torch.enable_grad(), model.autograd_ready():
        for t, t_prev in step_pairs(pivot.timesteps):
            loop.tick()
            a, a_prev = sched.alpha_bar(t), sched.alpha_bar(t_prev)
            x_t, target = x.detach().clone(), target_of[t_prev].detach().clone()
            with torch.no_grad():
                eps_c = cond_only.predict(x_t, t).eps
            uncond = uncond.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([uncond], lr=lr)
            for j in range(inner_steps):
                eps_u = uncond_only(uncond).predict(x_t, t).eps
                x_prev = ddim_step(x_t, eps_u + w * (eps_c - eps_u), a, a_prev)
                loss = torch.nn.functional.mse_loss(x_prev, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if loss.item() < early_stop + j * 2e-5:
                    break
            negative_at[t] = uncond.detach().clone()
            with torch.no_grad():
                eps_u = uncond_only(negative_at[t]).predict(x_t, t).eps
                x = ddim_step(x_t, eps_u + w * (eps_c - eps_u), a, a_prev)
    return dataclasses.replace(c, negative_at=negative_at)
