"""The strength is scaled once (``direction_algebra.scaled_strength`` / ``strength_edit``): h̃ = h + s·k·Δh_t with
k = train_steps/steps, None at strength 0; the editing nodes, the SAMPLERs, H-Space Shift and the library's edit and
explorer read that one rule (a grep-level check)."""
import glob
import os

import torch

from hspace_core import Direction
from hspace_core.direction_algebra import scaled_strength, strength_edit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _direction(**metadata):
    delta = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(0))
    return Direction("global", delta, h_shape=(4, 2, 2), metadata=metadata)


def test_strength_edit_is_h_plus_scaled_strength_times_delta():
    d, h = _direction(train_steps=40), torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    assert strength_edit(d, 0.0, 20) is None and strength_edit(d, 0) is None
    assert torch.equal(strength_edit(d, 1.5, 20)(h, 500, "cond"), h + 3.0 * d.delta[None])  # 1.5 · 40/20
    assert torch.equal(strength_edit(d, 1.5)(h, 500, "cond"), h + 1.5 * d.delta[None])  # steps unknown: s
    assert torch.equal(strength_edit(_direction(), -2.0, 20)(h, 500, "cond"), h - 2.0 * _direction().delta[None])
    rows = torch.tensor([0.5, -1.0])  # the explorer's strengths as a tensor
    assert torch.equal(scaled_strength(d, rows, 10), rows * 4.0)


def test_the_shift_patch_uses_the_samplers_rule(pack):
    from hspace_pack.nodes.comfy.patches import HShift
    from hspace_core.sampling import SigmaWindow

    d, h = _direction(train_steps=40), torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    patch = HShift(d, 1.5, SigmaWindow(10.0, 0.0), "cond", lambda sigma: 300, 0)
    options = {"sigmas": torch.tensor([1.0]), "cond_or_uncond": [1, 0], "block": ("output", 0)}
    shifted, _ = patch.output_block(h, None, options)
    assert torch.equal(shifted[:1], h[:1])  # cond_or_uncond [1, 0]: the uncond chunk first, unmoved
    assert torch.equal(shifted[1:], strength_edit(d, 1.5)(h[1:], 300, "cond"))
    assert HShift(d, 0.0, SigmaWindow(10.0, 0.0), "cond", lambda sigma: 300, 0).output_block(h, None, options)[0] is h


def test_no_other_module_scales_a_strength():
    strays = []
    for folder in ("hspace_core", "nodes"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, ROOT)
            if rel in (os.path.join("hspace_core", "direction.py"), os.path.join("hspace_core", "direction_algebra.py")):
                continue
            strays += [f"{rel}:{n}" for n, line in enumerate(open(path, encoding="utf-8"), 1) if "step_scale(" in line]
    assert not strays, "a strength scaled outside direction_algebra.scaled_strength: " + ", ".join(strays)
