"""Directions nobody had to label, from one image: the top right-singular vectors of J = ∂ε(x_t | h)/∂h (or
∂x̂0/∂h) at one timestep, by block power (subspace) iteration with ``torch.func.jvp`` / ``torch.autograd.grad``; J is
never built.  (Park et al., NeurIPS 2023, "Understanding the latent space of diffusion models through the lens of
Riemannian geometry", use the singular vectors of a Jacobian to find a local latent basis; they differentiate
from x_t to h, here the decoder side h → output is differentiated, whose right-singular vectors live in h.)"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .adapters.base import HSpaceModel, denoise_at, levels_of
from .devices import wide_dtype
from .direction import Direction
from .hmath import fix_signs
from .processes import run_reverse
from .progress import ProgressFn, StepLoop, StopFn, offset
from .schedules import timestep_grid
from .settings import EditSchedule
from .sites import site_of
from .trajectory import HStorage

__all__ = ["latent_at", "jacobian_directions"]


def latent_at(model: HSpaceModel, x_T: torch.Tensor, t: int, num_steps: int, *, grid: str = "asyrp",
              progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> tuple[torch.Tensor, int]:
    """x_t on the deterministic DDIM path from x_T (plain steps down the ``num_steps`` grid: ``run_reverse`` stopped
    above the grid timestep nearest to ``t``); returns (x_t, that timestep)."""
    timesteps = timestep_grid(num_steps, model.schedule.num_train_timesteps, grid)
    target = min(timesteps, key=lambda s: (abs(s - int(t)), s))
    schedule = EditSchedule.reconstruction(num_steps, grid, model.schedule.num_train_timesteps)
    with torch.no_grad():
        x = run_reverse(model, x_T, schedule, h_storage=HStorage(t_min=target + 1), h_only=True,
                        progress=offset(progress, 0, list(timesteps).index(target)), should_stop=should_stop).x0
    return x, target


def jacobian_directions(model: HSpaceModel, x_t: torch.Tensor, t: int, k: int, *, output: str = "eps",
                        iterations: int = 12, oversample: int = 2, relative_norm: float = 0.1, seed: int = 0,
                        name: str = "jacobian", progress: ProgressFn | None = None,
                        should_stop: StopFn | None = None) -> list[Direction]:
    """The top ``k`` right-singular vectors of J = ∂f(h)/∂h at h = h_t(x_t) for one image (Park et al. 2023's
    Jacobian / pullback-metric basis, on the decoder side; see the module docstring).

    f(h) is ε(x_t | h) (``output="eps"``) or the predicted x0 (``output="x0"``: the same vectors, singular values
    × σ/a(σ)), read through the model's σ view (``denoise_at``, the edit replacing h by the probe) at the model's point
    x = x_t·√(a² + σ²) (``NoiseLevels.unit_scale``) with σ = σ_t: x0 = D(x | h) and ε = (x − a(σ)·D(x | h))/σ, so
    J_ε = −(a/σ)·J_x0 (a = 1 on a U-Net's x = x0 + σ·ε, the VP x̂0 = (x_t − √(1−ᾱ)·ε)/√ᾱ; a = 1 − σ on flow
    matching, where ε at σ = 1 is x itself and has no Jacobian: refused).  Block power (subspace) iteration on JᵀJ:
    V ← orth(Jᵀ(J V)) with J V from ``torch.func.jvp`` and Jᵀ U from ``torch.autograd.grad``, all k + ``oversample``
    vectors at once (x_t is repeated, one row per vector: rows are independent), then a Rayleigh–Ritz rotation; J is
    never materialised.  The start block is seeded Gaussian noise (``seed``).  Attention runs on PyTorch's math
    kernel here, the only one with forward-mode derivatives.

    Each direction is global, of norm ``relative_norm``·‖h_t‖, sign-fixed (largest entry positive); metadata holds
    the method, component index, t, σ_t, output and singular value σ_i.
    """
    if output not in ("eps", "x0"):
        raise ValueError(f"output must be 'eps' or 'x0', got {output!r}.")
    if x_t.shape[0] != 1:
        raise ValueError(f"Jacobian directions are for one image; got a batch of {x_t.shape[0]}: pick one.")
    if iterations < 1 or oversample < 0:
        raise ValueError("iterations must be ≥ 1 and oversample ≥ 0.")
    if not torch.isfinite(x_t).all():
        raise ValueError("x_t contains NaN or inf; give a finite latent.")
    levels, t = levels_of(model), max(int(t), 0)
    sigma = levels.sigma(t)
    out_scale = 1.0 if output == "x0" else -levels.signal(sigma) / sigma
    if out_scale == 0:
        raise ValueError(f"output 'eps' at σ = {sigma:g} of a flow-matching model: ε is x itself there, whatever h is, "
                         "so it has no Jacobian; set output to 'x0' or take a lower t.")
    with torch.inference_mode(False), torch.no_grad():
        x = x_t.clone() * levels.unit_scale(sigma)
        h0 = denoise_at(model, x, sigma, t=t)[2][-1:].clone()
    dim, rank = h0[0].numel(), min(h0[0].numel(), x_t[0].numel())
    if not 1 <= k <= rank:
        raise ValueError(f"k = {k} but the Jacobian from h ({dim} entries) to the output ({x_t[0].numel()}) has rank "
                         f"at most {rank}: set k between 1 and {rank}.")
    block = min(k + oversample, dim)
    x_rep = x.expand(block, *x.shape[1:])

    def f(h: torch.Tensor) -> torch.Tensor:
        return out_scale * denoise_at(model, x_rep, sigma, lambda _h, _t, _b: h, t=t)[1]

    generator = torch.Generator().manual_seed(int(seed))
    # drawn and orthonormalised on the CPU (the same start on every device), then moved to h's device
    wide = wide_dtype(h0.device)
    v = torch.linalg.qr(torch.randn(dim, block, generator=generator, dtype=torch.float64))[0].to(h0.device, wide)
    ready = getattr(model, "autograd_ready", None)  # weights frozen, inference tensors swapped (ComfyUI)
    with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), \
            (ready() if ready else contextlib.nullcontext()):
        h_rep = h0.expand(block, *h0.shape[1:]).clone()
        h_in = h_rep.clone().requires_grad_(True)
        y = f(h_in)  # recorded once; Jᵀ U by autograd on it (a model's saved-tensor hooks work there, not in vjp)

        def jtj(v):
            tangents = v.T.reshape(block, *h0.shape[1:]).to(h0.dtype)
            _, jv = torch.func.jvp(f, (h_rep,), (tangents,))
            jtu = torch.autograd.grad(y, h_in, jv.detach(), retain_graph=True)[0]
            return jtu.detach().reshape(block, dim).T.to(wide)

        loop = StepLoop(iterations + 1, progress, should_stop)  # one jvp and one vjp pass of the block each
        for _ in range(iterations):
            loop.tick()
            v = torch.linalg.qr(jtj(v))[0]
        loop.tick()
        w = jtj(v)
    eigenvalues, rotation = torch.linalg.eigh(v.T @ w)  # Rayleigh–Ritz, ascending
    order = eigenvalues.argsort(descending=True)[:k]
    vectors = (v @ rotation[:, order]).T
    vectors = vectors * fix_signs(vectors)[:, None]
    singular = eigenvalues[order].clamp_min(0).sqrt()
    target = relative_norm * float(h0.norm())
    return [Direction("global", (target * vectors[i]).float().reshape(h0.shape[1:]), fingerprint=model.fingerprint,
                      name=f"{name} {i}", metadata={"method": "jacobian", "component": i, "t": t, "sigma": sigma,
                                                    "output": output, "singular_value": float(singular[i])},
                      site=site_of(model), made_with=f"Jacobian of {output} at t = {t}")
            for i in range(k)]
