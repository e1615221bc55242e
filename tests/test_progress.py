"""Progress callbacks: the x0 rule (a callback with a third argument gets each step's P_t, a 2-argument one keeps
working) and the x0 the loops hand over, against the DDIM equations on the analytic Gaussian denoiser."""
import pytest
import torch

from harness.tiny import GaussianData
from hspace_core import EditSchedule, invert, run_reverse, step_pairs
from hspace_core.ddim import ddim_step, predicted_x0
from hspace_core.explorer import explore
from hspace_core.direction import Direction
from hspace_core.progress import StepLoop, offset, takes_x0


@pytest.fixture
def analytic():
    g = torch.Generator().manual_seed(5)
    return GaussianData(mu=torch.randn(1, 3, 8, 8, generator=g) * 0.3, s=0.5)


def test_the_rule_two_arguments_get_counts_three_get_x0():
    assert not takes_x0(None) and not takes_x0(lambda done, total: None)
    assert takes_x0(lambda done, total, x0: None) and takes_x0(lambda done, total, x0=None: None)
    assert takes_x0(lambda *args: None)
    seen = []
    loop = StepLoop(2, lambda d, n: seen.append((d, n)))
    loop.tick()
    loop.show(torch.ones(1))  # a 2-argument callback is never given an x0
    assert not loop.wants_x0 and seen == [(1, 2)]
    shifted = offset(lambda d, n, x0=None: seen.append((d, n, x0)), 10, 30)
    shifted(2, 5, "x0")
    assert seen[-1] == (12, 30, "x0")
    assert offset(None, 0, 1) is None


def test_run_reverse_hands_over_each_steps_P_t(analytic):
    """x0 after step k is P_t = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t (DDIM eq. 12) of that step's x_t, at the step's count."""
    schedule = EditSchedule.reconstruction(6, "asyrp", 1000)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    got, counts = [], []
    out = run_reverse(analytic, x_T, schedule, progress=lambda d, n, x0=None: (counts.append(d), got.append(x0)))
    shown = [x0 for x0 in got if x0 is not None]
    expected, x = [], x_T.double()  # in float64: the loop's float32 rounding is the tolerance
    for t, t_prev in step_pairs(schedule.timesteps()):
        a, a_prev = analytic.schedule.alpha_bar(t), analytic.schedule.alpha_bar(t_prev)
        eps = analytic.eps(x, t)
        expected.append(predicted_x0(x, eps, a))
        x = ddim_step(x, eps, a, a_prev)
    assert len(shown) == len(expected) == 6
    # against float64: 5.1e-5 at σ_T ≈ 157 (the ᾱ-space loop in float32: 5.5e-5), at most 1.1e-5 after
    for g, e in zip(shown, expected):
        torch.testing.assert_close(g.double(), e, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.x0.double(), x, atol=1e-5, rtol=0)
    assert sorted(set(counts)) == list(range(1, 7))  # every count still reported; x0 at the step's own count
    # a 2-argument callback gets the same counts as before, once each
    plain = []
    run_reverse(analytic, x_T, schedule, progress=lambda d, n: plain.append(d))
    assert plain == list(range(1, 7))


def test_an_edited_step_shows_the_edited_prediction(analytic):
    """Where the step is edited, x0 is P_t of ε(x_t | h̃_t), the prediction the asymmetric step takes x0 from."""
    schedule = EditSchedule(num_steps=4, t_edit=0)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    shift = lambda h, t, branch: h + 0.5  # noqa: E731
    shown = []
    run_reverse(analytic, x_T, schedule, edit=shift, progress=lambda d, n, x0=None: x0 is None or shown.append(x0))
    t = schedule.timesteps()[0]
    edited = predicted_x0(x_T, analytic.predict(x_T, t, shift).eps_edited, analytic.schedule.alpha_bar(t))
    plain = predicted_x0(x_T, analytic.eps(x_T, t), analytic.schedule.alpha_bar(t))
    torch.testing.assert_close(shown[0], edited)
    assert (shown[0] - plain).abs().max() > 0.1


def test_inversion_shows_each_steps_prediction_and_counts_stay_whole(analytic):
    x0 = (analytic.mu + 0.1).clamp(-1, 1)
    counts, shown = [], []
    inv = invert(analytic, x0, 5, progress=lambda d, n, x=None: counts.append((d, n)) if x is None else shown.append(x))
    total = counts[0][1]
    assert [d for d, _ in counts] == list(range(1, total + 1))
    assert len(shown) == total  # the inversion's steps, then the reconstruction's
    steps_up = list(reversed(inv.timesteps))
    a_here = analytic.schedule.alpha_bar(steps_up[0])
    torch.testing.assert_close(shown[0], predicted_x0(x0, analytic.eps(x0, steps_up[0]), a_here))


def test_the_explorer_passes_x0_through_its_rows(analytic):
    d = Direction("global", torch.ones(3, 4, 4))
    schedule = EditSchedule(num_steps=3, t_edit=0)
    shown, plain = [], []
    explore(analytic, torch.zeros(1, 3, 8, 8), [d], [0.0, 1.0], schedule,
            progress=lambda n, total, x0=None: x0 is None or shown.append((n, total, x0.shape[0])))
    explore(analytic, torch.zeros(1, 3, 8, 8), [d], [0.0, 1.0], schedule, progress=lambda n, total: plain.append(n))
    assert [(n, total) for n, total, _ in shown] == [(1, 3), (2, 3), (3, 3)] and {b for *_, b in shown} == {2}
    assert plain == [1, 2, 3]
