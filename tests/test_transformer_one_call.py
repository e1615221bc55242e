"""An edited step on a transformer (Flux, SD3.x) is one denoiser call on [x; x], as on a U-Net (issue 38 item 6): the
dit patch records h from the plain rows and edits it in the copies of the edited branches only, and the plain and
edited predictions equal the two-call reference path to float rounding; the h recorded is the same."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning
from test_comfy_one_call import SHIFT, counted, relative
from test_transformers import SIZE


def blocks(model):
    dm = model.get_model_object("diffusion_model")
    if hasattr(dm, "joint_blocks"):
        return list(dm.joint_blocks)
    return list(dm.double_blocks) + list(dm.single_blocks)


def predictions(comfy_model, model, cond, cfg, site, edit_branches, rows=1, seen=None):
    """(one call, two calls, no edit) at two sigmas of a SAMPLER's run: each (D plain, h, D edited), and the
    number of denoiser calls each took.  ``seen`` gets the rows each block ran in the one-call steps."""
    import comfy.sample
    import comfy.samplers

    found, counting = [], [False]
    hooks = [block.register_forward_pre_hook(
        lambda m, args, kwargs, k=k: seen.append((k, (args[0] if args else kwargs["img"]).shape[0]))
        if counting[0] else None, with_kwargs=True) for k, block in enumerate(blocks(model))] if seen is not None else []

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        hs = comfy_model.ComfyHSpaceModel.for_guider(denoiser, extra_args, model, edit_branches, site)
        calls = counted(hs)
        for sigma in sigmas[:2]:
            hs.one_call, counting[0] = True, True
            fast = hs.denoised(x, sigma, SHIFT, t=500)
            counting[0] = False
            fast_calls = len(calls)
            hs.one_call = False
            slow = hs.denoised(x, sigma, SHIFT, t=500)
            slow_calls = len(calls) - fast_calls
            found.append((fast, slow, hs.denoised(x, sigma, t=500)[0], fast_calls, slow_calls))
            calls.clear()
        return x

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    x = torch.randn(rows, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    try:
        with torch.inference_mode():
            comfy.sample.sample_custom(model, x, cfg, comfy.samplers.KSAMPLER(body), sigmas, cond(0), cond(1),
                                       torch.zeros_like(x), disable_pbar=True, seed=0)
    finally:
        for hook in hooks:
            hook.remove()
    return found


# the rows each block runs in a one-call edited step (Flux: double 0, 1 then single 0, 1; SD3: joint 0, 1): before
# the site the plain rows, at an attention site every row, after it the plain rows and the edited copies
CASES = [("flux", "double.1.attn", 1.0, "cond", 1, [1, 2, 2, 2]), ("flux", "single.0", 1.0, "cond", 2, [2, 2, 2, 4]),
         ("flux", "double.0", 1.0, "cond", 1, [1, 2, 2, 2]), ("sd3", "joint.1.attn", 3.0, "cond", 1, [2, 4]),
         ("sd3", "joint.0.attn", 3.0, "cond", 1, [4, 3]), ("sd3", "joint.0", 3.0, "both", 2, [4, 8])]


@pytest.mark.parametrize("family,site,cfg,edit_branches,rows,block_rows", CASES)
def test_one_call_matches_two_calls_on_transformers(pack, request, family, site, cfg, edit_branches, rows,
                                                    block_rows):
    comfy_model, _ = pack
    model = request.getfixturevalue(family)
    cond = flux_conditioning if family == "flux" else sd3_conditioning
    seen = []
    for (plain, edited, h), (plain2, edited2, h2), unedited, fast_calls, slow_calls in predictions(
            comfy_model, model, cond, cfg, site, edit_branches, rows, seen):
        assert (fast_calls, slow_calls) == (1, 2)
        assert plain.shape == edited.shape == (rows, 16, SIZE, SIZE)
        # measured here: ≤ 1.1e-6 relative (2× the rows changes the kernels' blocking, not the math; SD3: equal)
        assert relative(plain, plain2) < 1e-5 and relative(edited, edited2) < 1e-5
        assert relative(plain, unedited) < 1e-5
        assert torch.equal(h, h2) or relative(h, h2) < 1e-5
        assert relative(edited, plain) > 1e-3, "the edit shows"
    assert seen == list(enumerate(block_rows)) * 2, seen


def test_shared_rows_fall_back_to_every_row_where_the_layout_matters(pack, flux, caplog):
    """Blocks run only the rows that differ unless attention patches are set (they see the batch's layout inside
    the blocks) or another node's replace patch holds the block; both logged.  The rows of a [plain; copies] batch
    under CFG with cond edited: before the site the plain rows, after it also the cond copies."""
    import logging

    from hspace_pack.nodes.comfy import dit
    from hspace_core.sites import block_site

    dm = flux.get_model_object("diffusion_model")
    where, edited = block_site("double.1.attn"), lambda branch: branch == "cond"
    shared = dit.with_shared_rows({}, dm, where, edited)["patches_replace"]["dit"]
    assert sorted(shared) == [("double_block", 0), ("single_block", 0), ("single_block", 1)]
    assert not shared[("double_block", 0)].after and shared[("single_block", 0)].after
    other = object()
    dit._told.clear()
    with caplog.at_level(logging.INFO, logger="hspace"):
        kept = dit.with_shared_rows({"patches_replace": {"dit": {("single_block", 1): other}}}, dm, where, edited)
        assert kept["patches_replace"]["dit"][("single_block", 1)] is other
        patched = {"patches": {"attn1_patch": [lambda *a: a]}}
        assert dit.with_shared_rows(patched, dm, where, edited) == patched
    assert "holds another patch" in caplog.text and "attention patches are set" in caplog.text
    options = {"cond_or_uncond": [1, 0]}  # uncond chunk, then cond: each [plain; copy] of 1 row
    before, after = dit.SharedRows(False, edited), dit.SharedRows(True, edited)
    run, source = before.rows(4, options, "cpu")
    assert run.tolist() == [0, 2] and source.tolist() == [0, 0, 1, 1]
    run, source = after.rows(4, options, "cpu")
    assert run.tolist() == [0, 2, 3] and source.tolist() == [0, 0, 1, 2]
    assert dit.SharedRows(True, lambda branch: True).rows(4, options, "cpu") is None  # every row differs


def test_dit_cost_benchmark_dry_run(pack):
    """benchmarks/dit_cost.py's CPU path (tiny widths): what benchmarks/gpu.sh runs as --dry-run, the table of both
    architectures with the three edited columns, and FluxSpace Edit's on Flux with two (one call, three calls)."""
    import re

    from benchmarks import dit_cost

    text = dit_cost.main(["--dry-run"])
    rows = [line for line in text.splitlines() if line.startswith("| Flux.1") or line.startswith("| SD3.5")]
    assert len(rows) == 3 and "(double.1.attn)" in rows[0] and "(joint.2.attn)" in rows[1], text
    assert "| FluxSpace Edit, every double block" in text and "distilled guidance" not in rows[2], text
    for row, ratios in zip(rows, (3, 3, 2)):
        assert len(re.findall(r"\| \d+\.\d\d×", row)) == ratios, row
