"""The one check of the sigmas a SAMPLER is given (``hspace_core.sigmas.sigmas_problem``, raised by
``nodes/comfy/samplers.check_sigmas``) and the one rule for an edit window on the steps it runs on
(``hspace_core.sampling.check_window_steps``)."""
import math

import pytest

from hspace_core.sampling import check_window_steps
from hspace_core.sigmas import sigmas_problem

KARRAS = [14.6, 6.1, 2.3, 0.7, 0.0]  # a scheduler's decreasing sigmas, ending at 0


@pytest.mark.parametrize("sigmas, increasing, phrase", [
    ([], False, "are empty"), ([], True, "are empty"),
    ([14.6], False, "one noise level only (σ = 14.6)"), ([0.0], True, "one noise level only"),
    (KARRAS[::-1], False, "increase (σ 0 then 0.7 at positions 0, 1)"),
    (KARRAS, True, "do not increase (σ 14.6 then 6.1"),
    ([math.nan, 6.1, 0.0], False, "hold nan at position 0"), ([0.0, math.inf], True, "hold inf at position 1"),
    ([14.6, -1.0, 0.0], False, "negative σ (-1) at position 1"),
    ([0.0, 1.0, 1.0], True, "do not increase"),
    ([14.6, 0.0, 0.0], False, "hold σ = 0 at position 1, before the last"),
])
def test_sigmas_a_sampler_cannot_run_are_described(sigmas, increasing, phrase):
    problem = sigmas_problem(sigmas, increasing)
    assert problem is not None and phrase in problem, problem


@pytest.mark.parametrize("sigmas, increasing", [(KARRAS, False), ([14.6, 14.6, 0.0], False),
                                                ([1e-4, *KARRAS[-2::-1]], True), ([0.0, 1.0], True)])
def test_usable_sigmas_pass(sigmas, increasing):
    assert sigmas_problem(sigmas, increasing) is None


def test_check_sigmas_names_the_node_and_says_what_to_change_without_a_server(pack):
    from hspace_pack.nodes.comfy.samplers import check_sigmas

    with pytest.raises(ValueError, match=r"^H-Space Asyrp Sampler: the sigmas given to SamplerCustomAdvanced \(made "
                                         r"by .*FlipSigmas.*\) increase .*without FlipSigmas"):
        check_sigmas("H-Space Asyrp Sampler", KARRAS[::-1])
    with pytest.raises(ValueError, match="^H-Space Inversion Sampler: .* do not increase .*put FlipSigmas between"):
        check_sigmas("H-Space Inversion Sampler", KARRAS, increasing=True)
    check_sigmas("H-Space Asyrp Sampler", KARRAS)


def test_an_edit_window_must_hold_a_step_and_end_before_the_boost():
    with pytest.raises(ValueError, match="^No step of the 6-step schedule lies in the edit window percent 0.50–0.50"):
        check_window_steps("percent 0.50–0.50", [], 6)
    with pytest.raises(ValueError, match=r"reaches t = 150, below the quality boost's start \(t_boost 200\)"):
        check_window_steps("percent 0.00–1.00", [999, 600, 150], 6, t_boost=200)
    check_window_steps("percent 0.00–0.60", [999, 600], 6, t_boost=200)

