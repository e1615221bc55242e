"""Algebra on directions: weighted sums (Asyrp §5.3: edits add up linearly), Gram–Schmidt projection removal (Haas
et al.'s disentangling), rescaling, and strength relative to ‖h‖."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from .adapters.base import HEdit
from .direction import Direction
from .sites import check_same_site, common_site
from .trajectory import HTrajectory

log = logging.getLogger("hspace")

__all__ = ["sum_weights", "combine_directions", "combine", "orthogonalise", "rescale_like", "relative_strength",
           "normalise"]


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


def sum_weights(directions: Sequence[Direction], weights: Sequence[float], normalize: bool = False) -> list[float]:
    """The weight each Δh_i takes in a sum Σ_i c·w_i·Δh_i, c = 1/√n when ``normalize`` (Asyrp §5.3: edits add up
    linearly; several attributes at once are scaled by 1/√n)."""
    if len(weights) != len(directions):
        raise ValueError(f"{len(directions)} directions but {len(weights)} weights; give one weight each.")
    if not directions:
        raise ValueError("Give at least one direction.")
    c = 1 / math.sqrt(len(directions)) if normalize else 1.0
    return [c * float(w) for w in weights]


def combine_directions(directions: Sequence[Direction], strengths: Sequence[float],
                       normalize: bool = False) -> HEdit:
    """The h edit h̃ = h + Σ_i c·s_i·Δh_i(h, t) (``sum_weights``); any form, implicit ones included."""
    directions = list(directions)
    weights = sum_weights(directions, strengths, normalize)

    def shift(h: torch.Tensor, t: int, branch: str) -> torch.Tensor:
        total = torch.zeros_like(h)
        for d, w in zip(directions, weights):
            if w != 0:
                total = total + w * d.at(h, t)
        return h + total

    return shift


def scaled_strength(direction: Direction, strength, num_steps: int | None):
    """s·train_steps/num_steps (``Direction.step_scale``: a direction learnt on another number of DDIM steps moves h
    that much more per step on fewer steps), or s where the steps are not known (a MODEL patch): the one place a
    strength meets the step count.  ``strength`` may be a tensor (the explorer's rows)."""
    return strength if num_steps is None else strength * direction.step_scale(num_steps)


def strength_edit(direction: Direction, strength: float, num_steps: int | None = None) -> HEdit | None:
    """The h edit of one direction at a strength, h̃ = h + ``scaled_strength``·Δh_t(h) (``combine_directions``), or
    None at strength 0, so that the process is exactly the plain one: the rule of the editing nodes, the SAMPLERs and
    H-Space Shift."""
    return None if strength == 0 else combine_directions([direction], [scaled_strength(direction, strength, num_steps)])


def combine(directions: Sequence[Direction], weights: Sequence[float], *, normalize: bool = False,
            name: str = "") -> Direction:
    """The direction Σ_i c·w_i·Δh_i (``sum_weights``).  Global and per-timestep directions mix (the result is
    per-timestep on the first per-timestep direction's grid); implicit ones have no fixed Δh (use
    ``combine_directions``)."""
    directions = list(directions)
    _check_linear(directions)
    weights = sum_weights(directions, weights, normalize)
    form, timesteps = _common_form(directions)
    total = sum(w * _delta_on(d, form, timesteps) for d, w in zip(directions, weights))
    return Direction(form, total, timesteps, fingerprint=directions[0].fingerprint,
                     name=name or "+".join(d.name for d in directions), metadata={"method": "combine"},
                     site=directions[0].site, made_with=_common_record(directions))


def _common_record(directions: Sequence[Direction]) -> str:
    """The ``made_with`` of a combination: the directions' one record, or the distinct ones joined with " + "."""
    records = list(dict.fromkeys(d.made_with for d in directions if d.made_with))
    return " + ".join(records)


def orthogonalise(direction: Direction, against: Sequence[Direction], *, name: str = "") -> Direction:
    """Δh minus its projection on span(``against``) (Gram–Schmidt in float64, per timestep for per-timestep
    directions): the result is exactly orthogonal to every direction in ``against`` — Haas et al.'s removal of a
    correlated attribute.  Against nothing it returns ``direction`` unchanged; a direction in their span (e.g. against
    itself) becomes exactly zero there, with a log line (never rescaled rounding noise)."""
    against = list(against)
    if not against:
        return direction
    _check_linear([direction, *against])
    form, timesteps = _common_form([direction, *against])
    target = _delta_on(direction, form, timesteps).double()
    others = [_delta_on(d, form, timesteps).double() for d in against]
    flat = lambda x: x.reshape(1, -1) if form == "global" else x.flatten(1)
    result = flat(target).clone()
    emptied = []
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
        if result[rows].norm() <= 1e-9 * flat(target)[rows].norm():  # in their span: rounding noise, not a direction
            result[rows] = 0
            emptied.append(rows)
    if emptied:
        log.info("%s lies in the span of %s%s: nothing is left of it, the result is exactly zero there.",
                 direction.name or "The direction", ", ".join(d.name or "a direction" for d in against),
                 "" if form == "global" else f" at {len(emptied)} of {result.shape[0]} timesteps")
    delta = result.reshape(target.shape).float()
    meta = {**direction.metadata, "orthogonal_to": [d.name for d in against]}
    return Direction(form, delta, timesteps, fingerprint=direction.fingerprint,
                     name=name or f"{direction.name} ⟂ {', '.join(d.name for d in against)}", metadata=meta,
                     site=direction.site, made_with=direction.made_with)


def rescale_like(direction: Direction, like: Direction) -> Direction:
    """``direction`` rescaled to ``like``'s ‖Δh‖ (at each timestep of a per-timestep direction), e.g. after
    ``orthogonalise`` took part of it away."""
    _check_linear([direction, like])
    form, timesteps = _common_form([direction, like])
    delta, target = _delta_on(direction, form, timesteps).double(), _delta_on(like, form, timesteps).double()
    flat = (lambda x: x.reshape(1, -1)) if form == "global" else (lambda x: x.flatten(1))
    lengths = flat(delta).norm(dim=1)
    if (lengths == 0).any():
        raise ValueError("Nothing is left of the direction (it lies in the span of the directions it was made "
                         "orthogonal to, e.g. itself): a zero direction cannot be rescaled. Turn keep_norm off to get "
                         "the zero direction, or orthogonalise against other directions.")
    factor = (flat(target).norm(dim=1) / lengths).reshape(-1, *([1] * (delta.dim() - (form != "global"))))
    factor = factor[0] if form == "global" else factor
    return Direction(form, (delta * factor).float(), timesteps, fingerprint=direction.fingerprint, name=direction.name,
                     metadata=direction.metadata, site=direction.site, made_with=direction.made_with)


def _mean_h_norm(reference: HTrajectory) -> torch.Tensor:
    """Mean over images of ‖h_t‖ at each captured timestep: (steps,), on the CPU, where directions live."""
    return reference.conditional().flatten(2).float().norm(dim=-1).mean(1).to("cpu", torch.float64)


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
                         metadata={**direction.metadata, "relative_norm": relative_norm}, site=direction.site,
                         made_with=direction.made_with)
    stack = _delta_on(direction, "per_timestep", reference.timesteps).double()
    lengths = stack.flatten(1).norm(dim=1)
    if (lengths == 0).any():
        raise ValueError("The direction is zero at some timestep and cannot be normalised there.")
    delta = stack * (relative_norm * norms / lengths).reshape(-1, 1, 1, 1)
    return Direction("per_timestep", delta.float(), reference.timesteps, fingerprint=direction.fingerprint,
                     name=direction.name, metadata={**direction.metadata, "relative_norm": relative_norm},
                     site=direction.site, made_with=direction.made_with)
