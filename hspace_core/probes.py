"""Directions from labelled examples: the normal of a linear classifier of h (logistic regression, or a linear SVM as
in BoundaryDiffusion, Zhu et al. 2023; Diffusion Autoencoders' linear attribute classifier, Preechakul et al. 2022
§4.2), and the mean difference."""
from __future__ import annotations

import torch

from .devices import wide
from .direction import Direction
from .file_format import check_fingerprint
from .hmath import check_rows
from .sites import check_same_site
from .trajectory import HTrajectory, check_same_grid, stack_trajectories

__all__ = ["PROBE_METHODS", "linear_probe", "probe_direction", "direction_from_examples"]

PROBE_METHODS = ("logistic", "svm", "mean_difference")


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
    x = check_rows(x, "h")
    labels = torch.as_tensor(labels).reshape(-1).to(x.device)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {x.shape[0]} rows of h: give one label per image.")
    if not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype, device=x.device)).all():
        raise ValueError("Labels must be 0 (negative) or 1 (positive).")
    pos, neg = labels == 1, labels == 0
    if not pos.any() or not neg.any():
        empty = "positive" if not pos.any() else "negative"
        raise ValueError(f"The {empty} class is empty: a probe needs examples of both classes.")
    w_pos, w_neg = pos.to(x.dtype), neg.to(x.dtype)  # class means as weighted sums: no mask indexing (a host sync)
    diff = w_pos @ x / w_pos.sum() - w_neg @ x / w_neg.sum()
    if method == "mean_difference":
        return diff / diff.norm().clamp_min(1e-30)
    with torch.inference_mode(False), torch.enable_grad():  # a ComfyUI node runs under inference mode
        centred = x.clone() - x.mean(0)
        xs = centred / centred.norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-30)
        y = labels.to(x.dtype) * 2 - 1
        w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
        b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
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
    if not normal.norm() > 0:  # zero (or NaN)
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
    check_examples_differ(positive, negative)
    h, first = stack_trajectories([positive, negative], ["positive", "negative"])
    n_pos, shape = positive.batch_size, first.h_shape
    labels = (torch.arange(h.shape[1], device=h.device) < n_pos).long()
    h = wide(h)

    def fit(rows: torch.Tensor, lab: torch.Tensor, d: torch.Tensor):
        normal = linear_probe(rows, lab, method, l2)
        accuracy = float((((rows - rows.mean(0)) @ normal > 0).long() == lab).to(rows.dtype).mean())
        return (d @ normal) * normal, accuracy

    diffs = h[:, :n_pos].mean(1) - h[:, n_pos:].mean(1)  # (steps, D)
    if form == "global":
        pooled = (h - h.mean(1, keepdim=True)).reshape(-1, h.shape[-1])
        delta, accuracy = fit(pooled, labels.repeat(h.shape[0]), diffs.mean(0))
        meta = {"method": method, "l2": l2, "train_accuracy": accuracy}
        return Direction("global", delta.float().reshape(shape), fingerprint=first.fingerprint, name=name, metadata=meta,
                         site=first.site, made_with=first.made_with)
    fitted = [fit(h[s], labels, diffs[s]) for s in range(h.shape[0])]
    meta = {"method": method, "l2": l2, "train_accuracy": sum(a for _, a in fitted) / len(fitted)}
    return Direction("per_timestep", torch.stack([d for d, _ in fitted]).float().reshape(-1, *shape), first.timesteps,
                     fingerprint=first.fingerprint, name=name, metadata=meta, site=first.site,
                     made_with=first.made_with)


def check_examples_differ(positive: HTrajectory, negative: HTrajectory) -> None:
    """Refuse positive and negative examples that hold the same h: no probe or mean difference can tell them apart."""
    if positive.timesteps == negative.timesteps and positive.h.shape == negative.h.shape and \
            torch.equal(positive.h, negative.h):
        raise ValueError("The positive and negative examples hold the same h (the same images): nothing tells them "
                         "apart, so no setting can give a direction. Connect trajectories of images that have the "
                         "attribute to positive and of images that lack it to negative.")


def direction_from_examples(positive: HTrajectory, negative: HTrajectory, *, name: str = "") -> Direction:
    """Per-timestep Δh_t = mean(h_t | positive) − mean(h_t | negative) (Diffusion Autoencoders §4.2's linear
    attribute directions, in h-space).  ``.global_mean()`` gives one Δh."""
    check_same_grid(positive, negative, "positive", "negative")
    check_examples_differ(positive, negative)
    if positive.h_shape != negative.h_shape:
        raise ValueError(f"h shapes differ: {positive.h_shape} vs {negative.h_shape}; use same-size images.")
    if positive.fingerprint and negative.fingerprint:
        check_fingerprint(negative.fingerprint, positive.fingerprint, "negative examples' trajectory",
                          hint="capture the positive and the negative examples with the same MODEL")
    check_same_site(negative.site, positive.site, "negative examples' trajectory")
    pos = positive.conditional().mean(1)
    neg = negative.conditional().mean(1)
    return Direction("per_timestep", pos - neg, positive.timesteps, fingerprint=positive.fingerprint, name=name,
                     site=positive.site, made_with=positive.made_with)
