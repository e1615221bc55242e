"""Inversion that holds under classifier-free guidance.

- Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion"): invert at guidance 1 with the
  source prompt c; reconstruct and edit at guidance w with c as the *negative* as well, so that the guided
  ε_∅' + w·(ε_c − ε_∅') with ∅' = c equals the ε the inversion used.
- Null-text inversion (Mokady et al. 2023, "Null-text Inversion for Editing Real Images", Alg. 1): invert at
  guidance 1 (the pivot x*_t), then for t = T … 1 optimise the unconditional embedding ∅_t so that the guided
  DDIM step from x̄_t lands on x*_{t−1}; the per-step ∅_t ride in ``Conditioning.negative_at``.
- Fixed-point refinement under guidance needs nothing here: ``invert(..., refine_iters=k)`` on a guided model
  solves the implicit equation with the guided ε.

Each works on any ``adapters.base.GuidedModel`` (``DiffusersUNet`` with a ``Conditioning``, ComfyUI's MODEL).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .adapters.base import GuidedModel, denoise_at, levels_of
from .processes import generate, invert
from .progress import ProgressFn, StepLoop, StopFn, check_batch
from .sampling import asymmetric_step
from .schedules import step_pairs
from .settings import EditSchedule
from .sigmas import ve_scale, ve_to_vp
from .trajectory import Inversion, ReconstructionReport

log = logging.getLogger("hspace")
CFG_INVERSIONS = ("plain", "negative_prompt", "null_text")


@dataclass(frozen=True)
class GuidedInversion:
    """An inversion for use at guidance ``model.guidance_scale``: x_T and h come from ``inversion``; reconstruct and
    edit with ``model.with_negative(negative)`` (None: the model as it is)."""

    inversion: Inversion
    method: str
    negative: object = None  # "positive" (negative-prompt) or {t: embedding} (null-text)
    report: ReconstructionReport | None = None
    reconstruction: torch.Tensor | None = None

    def guided(self, model: GuidedModel) -> GuidedModel:
        """``model`` with the negative this inversion needs at guidance."""
        return model if self.negative is None else model.with_negative(self.negative)


def invert_guided(model: GuidedModel, x0: torch.Tensor, num_steps: int = 40, *, method: str = "negative_prompt",
                  grid: str = "asyrp", convention: str = "seed", refine_iters: int = 0, h_source: str = "inversion",
                  report: bool = True, inner_steps: int = 10, lr: float = 1e-2, early_stop: float = 1e-5,
                  progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> GuidedInversion:
    """Invert ``x0`` for reconstruction and editing at ``model.guidance_scale``.

    ``method``: "plain" (DDIM inversion with the guided ε; ``refine_iters`` adds fixed-point refinement under
    guidance), "negative_prompt" or "null_text" (both invert at guidance 1; see the module docstring).
    ``inner_steps``, ``lr`` and ``early_stop`` are null-text's Adam iterations per step, learning rate and
    loss threshold (Mokady et al.: 10, 0.01, 1e-5 growing by 2e-5 per iteration).
    """
    if method not in CFG_INVERSIONS:
        raise ValueError(f"CFG inversion {method!r} is unknown; use one of {CFG_INVERSIONS}.")
    if not all(hasattr(model, name) for name in ("with_guidance", "with_negative", "negative_embedding")):
        raise ValueError("Guided inversion needs a conditioned model with a negative branch (a DiffusersUNet with "
                         "Conditioning(positive, negative, guidance_scale), or a ComfyUI MODEL).")
    check_batch(x0, "The input image / latent")
    if method != "plain" and math.isclose(model.guidance_scale, 1.0):
        log.info("Guidance scale 1 has no negative branch: %s inversion is plain inversion here.", method)
        method = "plain"
    kw = dict(grid=grid, convention=convention, refine_iters=refine_iters, h_source=h_source, should_stop=should_stop)
    if method == "plain":
        inv = invert(model, x0, num_steps, report=report, progress=progress, **kw)
        return GuidedInversion(inv, method, None, inv.report, inv.reconstruction)
    inv = invert(model.with_guidance(1.0), x0, num_steps, report=False, progress=progress, **kw)
    negative = "positive" if method == "negative_prompt" else null_text_embeddings(
        model, inv, inner_steps=inner_steps, lr=lr, early_stop=early_stop, should_stop=should_stop)
    result = GuidedInversion(inv, method, negative)
    if not report:
        return result
    sched = EditSchedule.reconstruction(num_steps, grid, model.schedule.num_train_timesteps)
    with torch.no_grad():
        recon = generate(result.guided(model), inv.x_T, sched, should_stop=should_stop)
    return GuidedInversion(inv, method, negative, ReconstructionReport.compare(x0, recon), recon)


def null_text_embeddings(model: GuidedModel, pivot: Inversion, *, inner_steps: int = 10, lr: float = 1e-2,
                         early_stop: float = 1e-5, progress: ProgressFn | None = None,
                         should_stop: StopFn | None = None) -> dict:
    """Mokady et al. 2023, Alg. 1: {t: ∅_t}, per-step negative embeddings that pull the guided DDIM path from the
    pivot's x_T onto the pivot (the guidance-1 inversion's latents).  ∅_t starts from ∅_{t+1} (the model's own
    negative at T) and takes up to ``inner_steps`` Adam steps on ‖DDIM(x̄_t, ε_w(x̄_t; ∅_t)) − x*_{t−1}‖²."""
    levels = levels_of(model)
    ascending = list(reversed(pivot.timesteps))
    target_of = {t: pivot.latents[k + 1] for k, t in enumerate(ascending)}
    target_of[-1] = pivot.latents[0]
    loop = StepLoop(len(pivot.timesteps), progress, should_stop)
    embedding = model.negative_embedding().float()
    x, found = pivot.x_T * ve_scale(levels.sigma(pivot.timesteps[0])), {}  # the σ loop's x = x_t/√ᾱ

    def step(x_t, negative, t, sigma, sigma_prev):  # the DDIM step through the σ view; D for previews
        d = denoise_at(model.with_negative(negative), x_t, sigma, t=t)[0]
        return asymmetric_step(x_t, d, d, sigma, sigma_prev), d

    with torch.inference_mode(False), torch.enable_grad(), model.autograd_ready():
        for t, t_prev in step_pairs(pivot.timesteps):
            loop.tick()
            sigma, sigma_prev = levels.sigma(t), (levels.sigma(t_prev) if t_prev >= 0 else 0.0)
            x_t, target = x.detach().clone(), target_of[t_prev].detach().to(x.device, x.dtype, copy=True)
            embedding = embedding.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([embedding], lr=lr)
            for j in range(inner_steps):  # the loss on the VP latents, as the pivot holds them
                loss = torch.nn.functional.mse_loss(ve_to_vp(step(x_t, embedding, t, sigma, sigma_prev)[0],
                                                             sigma_prev), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if loss.item() < early_stop + j * 2e-5:
                    break
            found[t] = embedding.detach().clone()
            with torch.no_grad():
                x, d = step(x_t, found[t], t, sigma, sigma_prev)
                loop.show(d)
    return found
