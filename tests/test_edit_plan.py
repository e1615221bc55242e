"""The edit plan as data (``sampling.EditPlan``): an EditSchedule resolved on a model's noise levels is its grid's
sigmas, the steps that edit (t ≥ t_edit or a window's timesteps, strided), η per step, and a prefix for stop_below."""
import dataclasses

import pytest
import torch

from hspace_core import EditSchedule, betas_linear, schedule_from_betas
from hspace_core.noise_levels import NoiseLevels
from hspace_core.sampling import EditPlan

LEVELS = NoiseLevels.of_schedule(schedule_from_betas(betas_linear()))


def test_plan_of_a_t_edit_schedule_with_boost_and_stride():
    schedule = EditSchedule(10, t_edit=400, t_boost=200, eta_boost=0.5)
    plan = EditPlan.on_grid(schedule, LEVELS, edit_every=2)
    grid = schedule.timesteps()
    assert plan.timesteps == grid and torch.equal(plan.sigmas, LEVELS.sigmas_at(grid)) and float(plan.sigmas[-1]) == 0
    inside = [t >= 400 for t in grid]
    assert sum(inside) == 6 and plan.edits == tuple(i and k % 2 == 0 for k, i in enumerate(inside))
    assert plan.etas == tuple(0.5 if t < 200 else 0.0 for t in grid) and 0.5 in plan.etas
    assert not any(EditPlan.on_grid(schedule, LEVELS, edited=False).edits)


def test_plan_of_a_window_and_a_stopped_run():
    windowed = dataclasses.replace(EditSchedule(10, t_edit=0), edit_timesteps=(777, 666))
    plan = EditPlan.on_grid(windowed, LEVELS)
    assert [t for t, e in zip(plan.timesteps, plan.edits) if e] == [777, 666]
    stopped = EditPlan.on_grid(EditSchedule(10, t_edit=400), LEVELS, stop_below=500)
    assert stopped.timesteps == (999, 888, 777, 666, 555)  # t ≥ 500: a prefix of the decreasing grid
    assert float(stopped.sigmas[-1]) == LEVELS.sigma(444)  # it ends at the noise level of the first step below


def test_a_plan_needs_one_flag_and_eta_per_step():
    with pytest.raises(ValueError, match="3 steps needs 3 timesteps"):
        EditPlan(torch.tensor([3.0, 2.0, 1.0, 0.0]), (3, 2, 1), (True,), (0.0, 0.0, 0.0))
