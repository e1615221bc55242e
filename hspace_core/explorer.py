"""The Direction Explorer: one x_T edited along each direction at each strength (its picture is drawn by the
nodes' grid renderer)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .adapters.base import HSpaceModel
from .direction import Direction
from .direction_algebra import scaled_strength
from .processes import run_reverse
from .progress import offset
from .settings import EditSchedule, t_edit_label
from .sites import check_same_site, site_of

__all__ = ["check_one_x_T", "explorer_rows", "explore", "row_edit"]


def explorer_rows(directions: Sequence[Direction], t_edits: Sequence[int] = ()) -> list[tuple[Direction, int | None, str]]:
    """The explorer's rows, direction-major: (direction, t_edit or None, label) for each direction, or with
    ``t_edits`` for each direction and t_edit; the label is the direction's name (or 'direction i'), with
    '@ t≥t_edit' on a t_edit axis."""
    rows = []
    for i, d in enumerate(directions):
        name = d.name or f"direction {i}"
        rows += [(d, t, name if t is None else f"{name} @ t≥{t}") for t in (list(t_edits) or [None])]
    return rows


def check_one_x_T(x_T: torch.Tensor) -> None:
    """The explorer edits one image: refuse a batch of x_T."""
    if x_T.shape[0] != 1:
        raise ValueError(f"The explorer takes one x_T, got a batch of {x_T.shape[0]}: pick one latent of the batch.")


def row_edit(direction: Direction, strengths: torch.Tensor, num_steps: int | None):
    """The h edit of one explorer row: h̃ = h + s_j·Δh in batch row j (one row per strength, ``scaled_strength``
    for ``num_steps``), so strength 0's row is the plain process."""
    scale = scaled_strength(direction, strengths, num_steps)
    on_device = {}  # the strengths copied once per device and dtype, not once a model call

    def shift(h, t, branch):
        key = (h.device, h.dtype)
        if key not in on_device:
            on_device[key] = scale.to(h).reshape(-1, *([1] * (h.dim() - 1)))
        return h + on_device[key] * direction.at(h, t)

    return shift


def explore(model: HSpaceModel, x_T: torch.Tensor, directions: Sequence[Direction], strengths: Sequence[float],
            schedule: EditSchedule, *, t_edits: Sequence[int] = (), seed: int = 0, progress=None,
            should_stop=None) -> torch.Tensor:
    """Asyrp edits of one x_T (1, ...) along each direction at each strength: (rows, columns, ...) with rows =
    directions (``explorer_rows``: with ``t_edits``, one row per direction and t_edit, the schedule's t_edit replaced)
    and columns = strengths.  Each row runs one batched reverse process (one row of the batch per strength:
    h̃ = h + s_j·Δh), so a column at strength 0 is the plain reconstruction."""
    check_one_x_T(x_T)
    directions, strengths = list(directions), [float(s) for s in strengths]
    if not directions or not strengths:
        raise ValueError("Give at least one direction and one strength.")
    for d in directions:
        check_same_site(site_of(d), site_of(model), "direction")
    # t ≥ t_edit for each (a percent window's timesteps are replaced); validated before anything runs
    schedules = {t: dataclasses.replace(schedule, t_edit=int(t), edit_timesteps=None, made_with=t_edit_label(t))
                 for t in t_edits}
    pairs = explorer_rows(directions, t_edits)
    s = torch.tensor(strengths, dtype=x_T.dtype, device=x_T.device)
    rows = []
    for i, (d, t_edit, _) in enumerate(pairs):
        row_schedule = schedule if t_edit is None else schedules[t_edit]
        report = offset(progress, i * schedule.num_steps, len(pairs) * schedule.num_steps)
        rows.append(run_reverse(model, x_T.expand(len(strengths), *x_T.shape[1:]), row_schedule,
                                edit=row_edit(d, s, schedule.num_steps), seed=seed, progress=report,
                                should_stop=should_stop).x0)
    return torch.stack(rows)
