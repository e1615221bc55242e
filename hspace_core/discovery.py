"""Directions nobody had to label, better supervised ones, and algebra on directions.

- ``pca_directions``: principal components of h_t over many images (Haas et al. 2023, "Discovering interpretable
  directions in h-space of diffusion models", §3: PCA of the bottleneck activations, per timestep or pooled).
- ``jacobian_directions``: the top right-singular vectors of J = ∂ε(x_t | h)/∂h (or ∂x̂0/∂h) for one image at one
  timestep, by block power (subspace) iteration with ``torch.func.jvp`` / ``torch.func.vjp``; J is never built.
  (Park et al., NeurIPS 2023, "Understanding the latent space of diffusion models through the lens of Riemannian
  geometry", use the singular vectors of a Jacobian to find a local latent basis; they differentiate from x_t to h,
  here — as issue 16 asks — the decoder side h → output is differentiated, whose right-singular vectors live in h.)
- ``probe_direction``: the normal of a linear classifier of h (logistic regression, or a linear SVM as in
  BoundaryDiffusion, Zhu et al. 2023; Diffusion Autoencoders' linear attribute classifier, Preechakul et al. 2022
  §4.2), next to the mean difference.
- ``orthogonalise``, ``normalise``, ``combine``, ``relative_strength``: Gram–Schmidt projection removal (Haas et al.'s
  disentangling), a target ‖Δh‖ relative to ‖h‖, weighted sums of any number of directions, ‖Δh‖/‖h‖.
- ``explore``: one x_T edited along each direction at each strength (the Direction Explorer's grid; its picture
  is drawn by the nodes' ``nodes/comfy/grids.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .adapters.base import HSpaceModel
from .ddim import ddim_step
from .processes import run_reverse
from .schedules import step_pairs, timestep_grid
from .sites import check_same_site, common_site, site_of
from .direction import Direction
from .file_format import check_fingerprint
from .settings import EditSchedule
from .trajectory import HTrajectory

__all__ = ["NORMALISATIONS", "PROBE_METHODS", "PCAResult", "principal_components", "pca_directions",
           "latent_at", "jacobian_directions", "linear_probe", "probe_direction", "orthogonalise", "rescale_like", "normalise", "combine",
           "relative_strength", "explore"]

NORMALISATIONS = ("position", "standardise", "none")
PROBE_METHODS = ("logistic", "svm", "mean_difference")


# ---------------------------------------------------------------------------------------------------------- PCA

@dataclass(frozen=True)
class PCAResult:
    """Unit principal axes in h units (k, D), the variance of the data along each (k,) and its share of the total."""

    axes: torch.Tensor
    variance: torch.Tensor
    explained: torch.Tensor


def _check_rows(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{what} must be (rows, features); got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf: capture the trajectories again (the model or its input diverged).")
    return x.double()


def _position_scale(x: torch.Tensor, h_shape: tuple[int, ...], normalisation: str) -> torch.Tensor:
    """The per-feature scale s that the data is divided by before PCA (1 for "none").

    "position": s is the RMS norm over the data of the centred channel vector at each spatial position, shared by
    that position's channels — every position then carries the same variance, so a few high-norm outlier positions
    cannot take the leading components.  "standardise": s is each coordinate's own standard deviation (z-scores)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} is unknown; use one of {NORMALISATIONS}.")
    if normalisation == "none":
        return torch.ones(x.shape[1], dtype=x.dtype)
    if normalisation == "standardise":
        return x.std(0).clamp_min(1e-12)
    c, hh, ww = h_shape
    per_position = x.reshape(x.shape[0], c, hh * ww).pow(2).sum(1).mean(0).sqrt()  # (H·W,)
    return per_position.clamp_min(1e-12)[None].expand(c, -1).reshape(-1)


def principal_components(x: torch.Tensor, k: int, h_shape: tuple[int, ...], normalisation: str = "position") -> PCAResult:
    """PCA of already centred rows ``x`` (N, D) after dividing each feature by ``_position_scale``; the axes are
    mapped back to h units (a unit axis ṽ of the scaled data is h-direction s⊙ṽ, renormalised) and the variance
    reported is the raw data's along that h-direction.  Exact SVD (``torch.linalg.svd``) in float64."""
    x = _check_rows(x, "h")
    scale = _position_scale(x, h_shape, normalisation)
    _, singular, vh = torch.linalg.svd(x / scale, full_matrices=False)
    rank = int((singular > singular.max() * max(x.shape) * torch.finfo(x.dtype).eps * 16).sum())
    if not 1 <= k <= rank:
        raise ValueError(f"k = {k} principal directions were asked for, but the centred h of these {x.shape[0]} rows "
                         f"has rank {rank}: set k between 1 and {rank}, or add images.")
    axes = vh[:k] * scale
    axes = axes / axes.norm(dim=1, keepdim=True)
    axes = axes * _sign(axes)[:, None]
    variance = (x @ axes.T).pow(2).sum(0) / max(x.shape[0] - 1, 1)
    total = x.pow(2).sum() / max(x.shape[0] - 1, 1)
    return PCAResult(axes, variance, variance / total)


def _sign(v: torch.Tensor) -> torch.Tensor:
    """+1/−1 per row so that each row's largest-magnitude entry is positive (singular vectors have no sign)."""
    idx = v.abs().argmax(dim=1, keepdim=True)
    return torch.where(v.gather(1, idx)[:, 0] >= 0, 1.0, -1.0).to(v.dtype)


def _rows(traj: HTrajectory) -> torch.Tensor:
    """(steps, B, C·H·W): the conditional (or only) branch's h."""
    k = traj.branches.index("cond") if "cond" in traj.branches else 0
    h = traj.h.chunk(len(traj.branches), dim=1)[k]
    return h.float().flatten(2)


def _stack_trajectories(trajectories: HTrajectory | Sequence[HTrajectory]) -> tuple[torch.Tensor, HTrajectory]:
    """Several trajectories (same grid, model and h shape) → (steps, N, D) and the first trajectory."""
    if isinstance(trajectories, HTrajectory):
        trajectories = [trajectories]
    trajectories = list(trajectories)
    if not trajectories:
        raise ValueError("Give at least one h trajectory.")
    first = trajectories[0]
    for other in trajectories[1:]:
        if other.timesteps != first.timesteps:
            raise ValueError("The trajectories were captured on different timestep grids; capture them with the same steps.")
        if other.h_shape != first.h_shape:
            raise ValueError(f"h shapes differ ({first.h_shape} vs {other.h_shape}): use the same model and image size.")
        check_fingerprint(other.fingerprint, first.fingerprint, "h trajectory")
    common_site(trajectories, "h trajectories")
    return torch.cat([_rows(t) for t in trajectories], dim=1), first


def pca_directions(trajectories: HTrajectory | Sequence[HTrajectory], k: int, *, form: str = "global",
                   normalisation: str = "position", name: str = "pca") -> list[Direction]:
    """The top ``k`` principal directions of h over the images of ``trajectories`` (Haas et al. 2023).

    ``form="global"`` pools every (image, timestep) row after removing each timestep's mean h (so the components
    describe how images differ, not how h changes with t) and gives one Δh per component.  ``form="per_timestep"``
    runs a PCA at each timestep and gives Δh_t; component i's sign at each t is chosen to agree with t's neighbour
    (its order is the PCA's own at each t).  ``normalisation`` (see ``_position_scale``, default per-position
    normalisation) tames high-norm outlier positions.  Each Δh (Δh_t) has the length of one standard deviation of h
    along it, so strength 1 moves h by one typical between-image difference.  Metadata: method, component index,
    explained variance (share; per timestep: the mean over t) and the normalisation.
    """
    if form not in ("global", "per_timestep"):
        raise ValueError(f"form must be 'global' or 'per_timestep', got {form!r}.")
    h, first = _stack_trajectories(trajectories)
    if h.shape[1] < 2:
        raise ValueError(f"PCA needs at least 2 images, got {h.shape[1]}: invert or capture more images.")
    shape = first.h_shape
    centred = h.double() - h.double().mean(1, keepdim=True)
    meta = lambda i, explained: {"method": "pca", "component": i, "explained_variance": float(explained),
                                 "normalisation": normalisation, "images": int(h.shape[1])}
    if form == "global":
        pca = principal_components(centred.reshape(-1, centred.shape[-1]), k, shape, normalisation)
        return [Direction("global", (pca.axes[i] * pca.variance[i].sqrt()).float().reshape(shape),
                          fingerprint=first.fingerprint, name=f"{name} {i}", metadata=meta(i, pca.explained[i]),
                          site=first.site)
                for i in range(k)]
    per_t = [principal_components(centred[s], k, shape, normalisation) for s in range(centred.shape[0])]
    deltas, signs = [], torch.ones(k, dtype=torch.float64)
    for s, pca in enumerate(per_t):
        axes = pca.axes
        if s:
            signs = torch.where((axes * deltas[-1]).sum(1) >= 0, 1.0, -1.0).to(axes.dtype)
        deltas.append(axes * signs[:, None] * pca.variance.sqrt()[:, None])
    stacked = torch.stack(deltas, 1)  # (k, steps, D)
    explained = torch.stack([p.explained for p in per_t]).mean(0)
    return [Direction("per_timestep", stacked[i].float().reshape(-1, *shape), first.timesteps,
                      fingerprint=first.fingerprint, name=f"{name} {i}", metadata=meta(i, explained[i]),
                      site=first.site)
            for i in range(k)]


# ----------------------------------------------------------------------------------------------------- Jacobian

def latent_at(model: HSpaceModel, x_T: torch.Tensor, t: int, num_steps: int, *, grid: str = "asyrp") -> tuple[torch.Tensor, int]:
    """x_t on the deterministic DDIM path from x_T (plain steps down the ``num_steps`` grid) at the grid timestep
    nearest to ``t``; returns (x_t, that timestep)."""
    timesteps = timestep_grid(num_steps, model.schedule.num_train_timesteps, grid)
    target = min(timesteps, key=lambda s: (abs(s - int(t)), s))
    x = x_T
    with torch.no_grad():
        for here, below in step_pairs(timesteps):
            if here == target:
                break
            x = ddim_step(x, model.predict(x, here).eps, model.schedule.alpha_bar(here), model.schedule.alpha_bar(below))
    return x, target


def jacobian_directions(model: HSpaceModel, x_t: torch.Tensor, t: int, k: int, *, output: str = "eps",
                        iterations: int = 12, oversample: int = 2, relative_norm: float = 0.1, seed: int = 0,
                        name: str = "jacobian") -> list[Direction]:
    """The top ``k`` right-singular vectors of J = ∂f(h)/∂h at h = h_t(x_t) for one image (Park et al. 2023's
    Jacobian / pullback-metric basis, on the decoder side; see the module docstring).

    f(h) is ε(x_t | h) from ``model.predict(x_t, t, edit=lambda ...: h)`` (``output="eps"``) or the predicted
    x̂0 = (x_t − √(1−ᾱ)·ε)/√ᾱ (``output="x0"``: the same vectors, singular values × √((1−ᾱ)/ᾱ)).  Block power
    (subspace) iteration on JᵀJ: V ← orth(Jᵀ(J V)) with J V from ``torch.func.jvp`` and Jᵀ U from ``torch.func.vjp``,
    all k + ``oversample`` vectors at once (x_t is repeated, one row per vector: rows are independent), then a
    Rayleigh–Ritz rotation; J is never materialised.  The start block is seeded Gaussian noise (``seed``).
    Attention runs on PyTorch's math kernel here, the only one with forward-mode derivatives.

    Each direction is global, of norm ``relative_norm``·‖h_t‖, sign-fixed (largest entry positive); metadata holds
    the method, component index, t, output and singular value σ_i.
    """
    if output not in ("eps", "x0"):
        raise ValueError(f"output must be 'eps' or 'x0', got {output!r}.")
    if x_t.shape[0] != 1:
        raise ValueError(f"Jacobian directions are for one image; got a batch of {x_t.shape[0]}: pick one.")
    if iterations < 1 or oversample < 0:
        raise ValueError("iterations must be ≥ 1 and oversample ≥ 0.")
    if not torch.isfinite(x_t).all():
        raise ValueError("x_t contains NaN or inf; give a finite latent.")
    a = model.schedule.alpha_bar(max(int(t), 0))
    out_scale = 1.0 if output == "eps" else -math.sqrt((1 - a) / a)
    with torch.inference_mode(False), torch.no_grad():
        x_t = x_t.clone()
        h0 = model.predict(x_t, t).h[-1:].clone()
    dim, rank = h0[0].numel(), min(h0[0].numel(), x_t[0].numel())
    if not 1 <= k <= rank:
        raise ValueError(f"k = {k} but the Jacobian from h ({dim} entries) to the output ({x_t[0].numel()}) has rank "
                         f"at most {rank}: set k between 1 and {rank}.")
    block = min(k + oversample, dim)
    x_rep = x_t.expand(block, *x_t.shape[1:])

    def f(h: torch.Tensor) -> torch.Tensor:
        return out_scale * model.predict(x_rep, t, edit=lambda _h, _t, _b: h).eps_edited

    generator = torch.Generator().manual_seed(int(seed))
    v = torch.linalg.qr(torch.randn(dim, block, generator=generator, dtype=torch.float64))[0]
    ready = getattr(model, "autograd_ready", None)  # weights frozen, inference tensors swapped (ComfyUI)
    with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), \
            (ready() if ready else contextlib.nullcontext()):
        h_rep = h0.expand(block, *h0.shape[1:]).clone()
        _, vjp_fn = torch.func.vjp(f, h_rep)

        def jtj(v):
            tangents = v.T.reshape(block, *h0.shape[1:]).to(h0.dtype)
            _, jv = torch.func.jvp(f, (h_rep,), (tangents,))
            return vjp_fn(jv.detach())[0].detach().reshape(block, dim).T.double()

        for _ in range(iterations):
            v = torch.linalg.qr(jtj(v))[0]
        w = jtj(v)
    eigenvalues, rotation = torch.linalg.eigh(v.T @ w)  # Rayleigh–Ritz, ascending
    order = eigenvalues.argsort(descending=True)[:k]
    vectors = (v @ rotation[:, order]).T
    vectors = vectors * _sign(vectors)[:, None]
    sigma = eigenvalues[order].clamp_min(0).sqrt()
    target = relative_norm * float(h0.norm())
    return [Direction("global", (target * vectors[i]).float().reshape(h0.shape[1:]), fingerprint=model.fingerprint,
                      name=f"{name} {i}", metadata={"method": "jacobian", "component": i, "t": int(t),
                                                    "output": output, "singular_value": float(sigma[i])},
                      site=site_of(model))
            for i in range(k)]


# ------------------------------------------------------------------------------------------------------ probes

def linear_probe(x: torch.Tensor, labels: torch.Tensor, method: str = "logistic", l2: float = 1e-3,
                 max_iter: int = 300) -> torch.Tensor:
    """The unit normal ŵ (D,) of a linear classifier of rows ``x`` (N, D) with ``labels`` in {0, 1}, pointing to
    class 1.  Full-batch L-BFGS from zero on

    - ``"logistic"``: mean log(1 + exp(−y·(w·x̃ + b))) + l2/2·‖w‖²  (Diffusion Autoencoders' linear classifier);
    - ``"svm"``: mean max(0, 1 − y·(w·x̃ + b))² + l2/2·‖w‖², the L2-loss linear SVM (liblinear's default), whose
      normal BoundaryDiffusion uses;
    - ``"mean_difference"``: mean(x | 1) − mean(x | 0), normalised.

    y = ±1; x̃ is x centred and divided by one global scalar (its RMS row norm), which leaves the normal's direction
    unchanged.  Deterministic."""
    if method not in PROBE_METHODS:
        raise ValueError(f"method {method!r} is unknown; use one of {PROBE_METHODS}.")
    x = _check_rows(x, "h")
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {x.shape[0]} rows of h: give one label per image.")
    if not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype)).all():
        raise ValueError("Labels must be 0 (negative) or 1 (positive).")
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        empty = "positive" if not pos.any() else "negative"
        raise ValueError(f"The {empty} class is empty: a probe needs examples of both classes.")
    diff = x[pos].mean(0) - x[neg].mean(0)
    if method == "mean_difference":
        return diff / diff.norm().clamp_min(1e-30)
    with torch.inference_mode(False), torch.enable_grad():  # a ComfyUI node runs under inference mode
        centred = x.clone() - x.mean(0)
        xs = centred / centred.norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-30)
        y = labels.double().clone() * 2 - 1
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                                      history_size=20, line_search_fn="strong_wolfe")

        def loss():
            optimiser.zero_grad()
            margin = y * (xs @ w + b)
            data = torch.nn.functional.softplus(-margin) if method == "logistic" else (1 - margin).clamp_min(0).pow(2)
            value = data.mean() + 0.5 * l2 * w.pow(2).sum()
            value.backward()
            return value

        optimiser.step(loss)
    normal = w.detach()
    if normal.norm() == 0:
        raise ValueError("The probe learnt nothing (all weights zero); lower l2.")
    return normal / normal.norm()


def probe_direction(positive: HTrajectory, negative: HTrajectory, method: str = "logistic", *,
                    form: str = "per_timestep", l2: float = 1e-3, name: str = "") -> Direction:
    """A direction from labelled examples: the normal ŵ of a linear classifier of h (``linear_probe``) separating
    ``positive`` from ``negative``, scaled to Δh = (d·ŵ)ŵ with d the mean difference, i.e. as long as the mean
    difference's component along the normal (so it always points toward the positives and equals the mean
    difference for ``method="mean_difference"``).  ``form="per_timestep"`` fits one probe per timestep;
    ``"global"`` pools all timesteps (each timestep's mean over both classes removed) and gives one Δh with d the
    mean over t of the mean differences.  Metadata: method, l2, the probe's training accuracy."""
    if form not in ("global", "per_timestep"):
        raise ValueError(f"form must be 'global' or 'per_timestep', got {form!r}.")
    h, first = _stack_trajectories([positive, negative])
    n_pos, shape = positive.batch_size, first.h_shape
    labels = torch.cat([torch.ones(n_pos), torch.zeros(h.shape[1] - n_pos)]).long()
    h = h.double()

    def fit(rows: torch.Tensor, lab: torch.Tensor, d: torch.Tensor):
        normal = linear_probe(rows, lab, method, l2)
        accuracy = float((((rows - rows.mean(0)) @ normal > 0).long() == lab).double().mean())
        return (d @ normal) * normal, accuracy

    diffs = h[:, :n_pos].mean(1) - h[:, n_pos:].mean(1)  # (steps, D)
    if form == "global":
        pooled = (h - h.mean(1, keepdim=True)).reshape(-1, h.shape[-1])
        delta, accuracy = fit(pooled, labels.repeat(h.shape[0]), diffs.mean(0))
        meta = {"method": method, "l2": l2, "train_accuracy": accuracy}
        return Direction("global", delta.float().reshape(shape), fingerprint=first.fingerprint, name=name, metadata=meta,
                         site=first.site)
    fitted = [fit(h[s], labels, diffs[s]) for s in range(h.shape[0])]
    meta = {"method": method, "l2": l2, "train_accuracy": sum(a for _, a in fitted) / len(fitted)}
    return Direction("per_timestep", torch.stack([d for d, _ in fitted]).float().reshape(-1, *shape), first.timesteps,
                     fingerprint=first.fingerprint, name=name, metadata=meta,
                         site=first.site)


# ------------------------------------------------------------------------------------------------------ algebra

def _check_linear(directions: Sequence[Direction]) -> None:
    if not directions:
        raise ValueError("Give at least one direction.")
    common_site(directions, "directions")
    for d in directions:
        if d.form == "implicit":
            raise ValueError("Implicit (learnt f_t) directions have no fixed Δh; use global or per-timestep ones here.")
        if d.h_shape != directions[0].h_shape:
            raise ValueError(f"The directions have different h shapes {directions[0].h_shape} and {d.h_shape}: "
                             "use directions made with the same model at the same image size.")


def _common_form(directions: Sequence[Direction]) -> tuple[str, tuple[int, ...]]:
    """global if all are global, else per_timestep on the first per-timestep direction's grid."""
    grids = [d.timesteps for d in directions if d.form == "per_timestep"]
    return ("per_timestep", grids[0]) if grids else ("global", ())


def _delta_on(d: Direction, form: str, timesteps: tuple[int, ...]) -> torch.Tensor:
    """Δh·scale as (C, H, W) (global) or (steps, C, H, W) on ``timesteps`` (interpolated as ``Direction.at``)."""
    if form == "global":
        return d.scale * d.delta
    return torch.stack([d.scale * (d.delta if d.form == "global" else d.delta_at(t)) for t in timesteps])


def combine(directions: Sequence[Direction], weights: Sequence[float], *, normalize: bool = False,
            name: str = "") -> Direction:
    """Σ_i w_i·Δh_i (Asyrp §5.3: edits add up linearly), ×1/√n when ``normalize``.  Global and per-timestep
    directions mix (the result is per-timestep on the first per-timestep direction's grid)."""
    directions = list(directions)
    _check_linear(directions)
    if len(weights) != len(directions):
        raise ValueError(f"{len(directions)} directions but {len(weights)} weights; give one weight each.")
    form, timesteps = _common_form(directions)
    c = 1 / math.sqrt(len(directions)) if normalize else 1.0
    total = sum(float(w) * _delta_on(d, form, timesteps) for d, w in zip(directions, weights))
    return Direction(form, c * total, timesteps, fingerprint=directions[0].fingerprint,
                     name=name or "+".join(d.name for d in directions), metadata={"method": "combine"},
                     site=directions[0].site)


def orthogonalise(direction: Direction, against: Sequence[Direction], *, name: str = "") -> Direction:
    """Δh minus its projection on span(``against``) (Gram–Schmidt in float64, per timestep for per-timestep
    directions): the result is exactly orthogonal to every direction in ``against`` — Haas et al.'s removal of a
    correlated attribute.  Against nothing it returns ``direction`` unchanged."""
    against = list(against)
    if not against:
        return direction
    _check_linear([direction, *against])
    form, timesteps = _common_form([direction, *against])
    target = _delta_on(direction, form, timesteps).double()
    others = [_delta_on(d, form, timesteps).double() for d in against]
    flat = lambda x: x.reshape(1, -1) if form == "global" else x.flatten(1)
    result = flat(target).clone()
    for rows in range(result.shape[0]):
        basis = []
        for other in others:
            v = flat(other)[rows].clone()
            for _ in range(2):  # twice is enough (Giraud et al.): exact to rounding
                for q in basis:
                    v = v - (v @ q) * q
            if v.norm() > 1e-12 * flat(other)[rows].norm().clamp_min(1e-300):
                basis.append(v / v.norm())
        for _ in range(2):
            for q in basis:
                result[rows] = result[rows] - (result[rows] @ q) * q
    delta = result.reshape(target.shape).float()
    meta = {**direction.metadata, "orthogonal_to": [d.name for d in against]}
    return Direction(form, delta, timesteps, fingerprint=direction.fingerprint,
                     name=name or f"{direction.name} ⟂ {', '.join(d.name for d in against)}", metadata=meta,
                     site=direction.site)


def rescale_like(direction: Direction, like: Direction) -> Direction:
    """``direction`` rescaled to ``like``'s ‖Δh‖ (at each timestep of a per-timestep direction), e.g. after
    ``orthogonalise`` took part of it away."""
    _check_linear([direction, like])
    form, timesteps = _common_form([direction, like])
    delta, target = _delta_on(direction, form, timesteps).double(), _delta_on(like, form, timesteps).double()
    flat = (lambda x: x.reshape(1, -1)) if form == "global" else (lambda x: x.flatten(1))
    lengths = flat(delta).norm(dim=1)
    if (lengths == 0).any():
        raise ValueError("Nothing is left of the direction (it lies in the span of the others); it cannot be rescaled.")
    factor = (flat(target).norm(dim=1) / lengths).reshape(-1, *([1] * (delta.dim() - (form != "global"))))
    factor = factor[0] if form == "global" else factor
    return Direction(form, (delta * factor).float(), timesteps, fingerprint=direction.fingerprint, name=direction.name,
                     metadata=direction.metadata, site=direction.site)


def _mean_h_norm(reference: HTrajectory) -> torch.Tensor:
    """Mean over images of ‖h_t‖ at each captured timestep: (steps,)."""
    return _rows(reference).norm(dim=-1).mean(1).double()


def relative_strength(direction: Direction, reference: HTrajectory) -> torch.Tensor:
    """‖Δh_t‖ / mean‖h_t‖ at each timestep of ``reference`` (the direction's strength relative to h)."""
    _check_linear([direction])
    check_same_site(reference.site, direction.site, "reference h trajectory")
    delta = _delta_on(direction, "per_timestep", reference.timesteps).flatten(1).norm(dim=1).double()
    return delta / _mean_h_norm(reference).clamp_min(1e-30)


def normalise(direction: Direction, reference: HTrajectory, relative_norm: float) -> Direction:
    """The direction rescaled so that ‖Δh‖ = ``relative_norm``·mean‖h‖: at each timestep of a per-timestep
    direction (against ``reference``'s h at that timestep; the direction is put on ``reference``'s grid), or, for a
    global one, against mean‖h_t‖ averaged over the reference's timesteps."""
    if not (math.isfinite(relative_norm) and relative_norm >= 0):
        raise ValueError(f"relative_norm must be a finite number ≥ 0, got {relative_norm}.")
    _check_linear([direction])
    check_same_site(reference.site, direction.site, "reference h trajectory")
    norms = _mean_h_norm(reference)
    if direction.form == "global":
        length = float((direction.scale * direction.delta).norm())
        if length == 0:
            raise ValueError("A zero direction cannot be normalised.")
        delta = direction.delta * direction.scale * (relative_norm * float(norms.mean()) / length)
        return Direction("global", delta, fingerprint=direction.fingerprint, name=direction.name,
                         metadata={**direction.metadata, "relative_norm": relative_norm}, site=direction.site)
    stack = _delta_on(direction, "per_timestep", reference.timesteps).double()
    lengths = stack.flatten(1).norm(dim=1)
    if (lengths == 0).any():
        raise ValueError("The direction is zero at some timestep and cannot be normalised there.")
    delta = stack * (relative_norm * norms / lengths).reshape(-1, 1, 1, 1)
    return Direction("per_timestep", delta.float(), reference.timesteps, fingerprint=direction.fingerprint,
                     name=direction.name, metadata={**direction.metadata, "relative_norm": relative_norm},
                     site=direction.site)


# ----------------------------------------------------------------------------------------------------- explorer

def explorer_rows(directions: Sequence[Direction], t_edits: Sequence[int] = ()) -> list[tuple[Direction, int | None, str]]:
    """The explorer's rows, direction-major: (direction, t_edit or None, label) for each direction, or with
    ``t_edits`` for each direction and t_edit; the label is the direction's name (or 'direction i'), with
    '@ t≥t_edit' on a t_edit axis."""
    rows = []
    for i, d in enumerate(directions):
        name = d.name or f"direction {i}"
        rows += [(d, t, name if t is None else f"{name} @ t≥{t}") for t in (list(t_edits) or [None])]
    return rows


def explore(model: HSpaceModel, x_T: torch.Tensor, directions: Sequence[Direction], strengths: Sequence[float],
            schedule: EditSchedule, *, t_edits: Sequence[int] = (), seed: int = 0, progress=None,
            should_stop=None) -> torch.Tensor:
    """Asyrp edits of one x_T (1, ...) along each direction at each strength: (rows, columns, ...) with rows =
    directions (``explorer_rows``: with ``t_edits``, one row per direction and t_edit, the schedule's t_edit replaced)
    and columns = strengths.  Each row runs one batched reverse process (one row of the batch per strength:
    h̃ = h + s_j·Δh), so a column at strength 0 is the plain reconstruction."""
    if x_T.shape[0] != 1:
        raise ValueError(f"The explorer takes one x_T, got a batch of {x_T.shape[0]}: pick one latent of the batch.")
    directions, strengths = list(directions), [float(s) for s in strengths]
    if not directions or not strengths:
        raise ValueError("Give at least one direction and one strength.")
    for d in directions:
        check_same_site(site_of(d), site_of(model), "direction")
    schedules = {t: dataclasses.replace(schedule, t_edit=int(t)) for t in t_edits}  # validated before anything runs
    pairs = explorer_rows(directions, t_edits)
    s = torch.tensor(strengths, dtype=x_T.dtype, device=x_T.device)
    rows = []
    for i, (d, t_edit, _) in enumerate(pairs):
        row_schedule = schedule if t_edit is None else schedules[t_edit]
        scale = s * d.step_scale(schedule.num_steps)

        def shift(h, t, branch, d=d, scale=scale):
            return h + scale.to(h).reshape(-1, *([1] * (h.dim() - 1))) * d.at(h, t)

        done = i * schedule.num_steps
        report = None if progress is None else (lambda n, total, done=done: progress(done + n, len(pairs) * total))
        rows.append(run_reverse(model, x_T.expand(len(strengths), *x_T.shape[1:]), row_schedule, edit=shift,
                                seed=seed, progress=report, should_stop=should_stop).x0)
    return torch.stack(rows)
