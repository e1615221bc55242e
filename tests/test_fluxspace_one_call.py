"""FluxSpace's edit-prompt and null-prompt rows run as rows of the model call that edits (issue 38 item 6): the
result equals the path that ran each prompt as its own call to float rounding (float32 and bfloat16), each block runs
the rows it needs (every row up to the last edited block, the own rows after it), prompts of other token counts run
as separate calls (logged), and ComfyUI reserves memory for three rows per latent row."""
import logging

import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux, tiny_sd3
from test_comfy_one_call import relative
from test_memory_rows import reserved  # noqa: F401 (fixture)
from test_transformers import SIZE

STEPS = 4  # "simple" σ of the tiny models: the window 0–60 % holds the first 3 steps
INSIDE = 3
# one call against separate calls, max |Δ| / max |x| over the whole run: measured here ≤ 8.0e-7 in float32 (Flux
# 2.9e-7, SD3 8.0e-7) and ≤ 4.3e-3 in bfloat16 (Flux; SD3 bit-equal), worst of 2 model seeds × 1 and 2 latents × 2
# noises × both block choices: more rows change the kernels' blocking, not the math.  The edit itself moves the image
# by ≥ 0.12 of its max.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _blocks(model):
    dm = model.get_model_object("diffusion_model")
    return list(dm.joint_blocks) if hasattr(dm, "joint_blocks") else list(dm.double_blocks) + list(dm.single_blocks)


def _run(model, patched, cond, cfg, rows=1, seen=None):
    """The patched MODEL under plain euler; ``seen`` gets (block, rows) of every block each model call runs."""
    import comfy.sample
    import comfy.samplers

    first = lambda args, kwargs: args[0] if args else kwargs.get("img", kwargs.get("x"))  # noqa: E731
    hooks = [] if seen is None else [block.register_forward_pre_hook(
        lambda m, args, kwargs, k=k: seen.append((k, first(args, kwargs).shape[0])), with_kwargs=True)
        for k, block in enumerate(_blocks(model))]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    x = torch.randn(rows, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    try:
        return comfy.sample.sample_custom(patched, x, cfg, comfy.samplers.sampler_object("euler"), sigmas, cond(0),
                                          cond(1), torch.zeros_like(x), disable_pbar=True, seed=0)
    finally:
        for hook in hooks:
            hook.remove()


def _patched(model, edit, empty, blocks="all", one_call=True, lam=1.0, lam_coarse=0.5):
    from hspace_pack.nodes.comfy.fluxspace import patched_with_fluxspace
    from hspace_pack.nodes.layer import edit_window

    window = edit_window("test", model, "percent", 0, 0.0, 0.6)
    return patched_with_fluxspace(model, edit[0], empty[0], lam, lam_coarse, window, blocks, one_call=one_call)


def _calls(seen):
    """The rows of each model call: the blocks' rows, cut where block 0 runs again."""
    calls = []
    for block, rows in seen:
        if block == 0:
            calls.append([])
        calls[-1].append(rows)
    return calls


# family, dtype, latent rows, cfg, blocks, rows per block of an edited call (Flux: double 0, 1 then single 0, 1 — the
# single blocks after the last edited one run the own rows only; SD3 under CFG: cond and uncond rows, ×3)
CASES = [("flux", torch.float32, 2, 1.0, "all", [6, 6, 2, 2]), ("sd3", torch.float32, 1, 3.0, "middle", [6, 6]),
         ("flux", torch.bfloat16, 1, 1.0, "middle", [3, 3, 1, 1]), ("sd3", torch.bfloat16, 1, 3.0, "all", [6, 6])]


@pytest.mark.parametrize("family,dtype,rows,cfg,blocks,edited_rows", CASES)
def test_fluxspace_one_call_matches_separate_calls(pack, family, dtype, rows, cfg, blocks, edited_rows):
    model = (tiny_flux if family == "flux" else tiny_sd3)(dtype=dtype)
    cond = flux_conditioning if family == "flux" else sd3_conditioning
    plain_rows = [r // 3 for r in edited_rows[:1]] * len(edited_rows)
    out, calls = {}, {}
    for one_call in (True, False):
        seen = []
        out[one_call] = _run(model, _patched(model, cond(5), cond(6), blocks, one_call), cond, cfg, rows, seen)
        calls[one_call] = _calls(seen)
    assert calls[True] == [edited_rows] * INSIDE + [plain_rows] * (STEPS - INSIDE), calls[True]
    assert len(calls[False]) == 3 * INSIDE + STEPS - INSIDE  # edit, null, own: the path before
    plain = _run(model, model, cond, cfg, rows)
    assert relative(out[True], out[False]) < TOLERANCE[dtype], relative(out[True], out[False])
    assert relative(out[True], plain) > 0.05, "the edit shows"


def test_prompts_of_other_lengths_run_as_separate_calls(pack, flux, caplog):
    """An edit prompt with more text tokens than the call's cannot be rows of its call (ComfyUI does not pad Flux's
    text): it runs as its own call, logged; the null prompt still joins the own rows; the result is the separate
    calls' to float rounding."""
    from hspace_pack.nodes.comfy import dit

    edit, empty = flux_conditioning(5, tokens=9), flux_conditioning(6)
    dit._told.clear()
    seen = []
    with caplog.at_level(logging.INFO, logger="hspace"):
        mixed = _run(flux, _patched(flux, edit, empty), flux_conditioning, 1.0, seen=seen)
    assert "different numbers of text tokens (own 7, edit 9, null 7)" in caplog.text
    assert _calls(seen)[:2] == [[1, 1, 1, 1], [2, 2, 1, 1]], _calls(seen)
    separate = _run(flux, _patched(flux, edit, empty, one_call=False), flux_conditioning, 1.0)
    assert relative(mixed, separate) < TOLERANCE[torch.float32]


def test_rows_are_kept_where_the_layout_matters(pack, flux, caplog):
    """After the last edited block the blocks run the own rows only, unless attention patches are set or another
    node's replace patch holds the block (both logged), as ``dit.with_shared_rows`` does."""
    from hspace_core.sites import block_site
    from hspace_pack.nodes.comfy import dit, fluxspace

    dm = flux.get_model_object("diffusion_model")
    dropped = fluxspace._with_rows_dropped({}, dm, block_site("double.0.attn"))["patches_replace"]["dit"]
    assert sorted(dropped) == [("double_block", 1), ("single_block", 0), ("single_block", 1)]
    other = object()
    dit._told.clear()
    with caplog.at_level(logging.INFO, logger="hspace"):
        kept = fluxspace._with_rows_dropped({"patches_replace": {"dit": {("single_block", 1): other}}}, dm,
                                            block_site("double.1.attn"))["patches_replace"]["dit"]
        assert kept == {("single_block", 0): fluxspace._FIRST_ROWS, ("single_block", 1): other}
        patched = {"patches": {"attn1_patch": [lambda *a: a]}}
        assert fluxspace._with_rows_dropped(patched, dm, block_site("double.0.attn")) == patched
    assert "holds another patch" in caplog.text and "attention patches are set" in caplog.text
    call = fluxspace._Call()
    call.layout = (("apply", 2), ("edit", 2), ("null", 2))
    run, source = fluxspace._FIRST_ROWS.rows(6, {fluxspace.KEY: call}, "cpu")
    assert run.tolist() == [0, 1] and source.tolist() == [0, 1, 0, 1, 0, 1]
    assert fluxspace._FIRST_ROWS.rows(6, {}, "cpu") is None  # a call FluxSpace did not batch


def test_memory_is_reserved_for_three_rows_per_latent_row(pack, flux, reserved):  # noqa: F811
    """ComfyUI reserves for a FluxSpace-patched MODEL what it reserves for a plain latent of three times the rows
    (the own, edit and null rows of each call); λ = λ_coarse = 0 (a plain clone) reserves as for the latent; the
    pack's one rule (``rows_run``) counts the three rows under its own processes too (an Asyrp one-call step: 2×)."""
    from hspace_pack.nodes.comfy.memory import rows_run

    edit, empty = flux_conditioning(5), flux_conditioning(6)
    assert rows_run(_patched(flux, edit, empty), 2) == 6 and rows_run(_patched(flux, edit, empty), 1, edited=True) == 6
    assert rows_run(_patched(flux, edit, empty, one_call=False), 2) == 2 and rows_run(flux, 2) == 2
    amounts = {}
    for name, patched, rows in (("plain 3", flux, 3), ("fluxspace 1", _patched(flux, edit, empty), 1),
                                ("plain 1", flux, 1), ("λ 0, 1", _patched(flux, edit, empty, lam=0, lam_coarse=0), 1)):
        before = len(reserved(flux))
        _run(flux, patched, flux_conditioning, 1.0, rows)
        amounts[name] = reserved(flux)[before:]
    assert amounts["fluxspace 1"] == amounts["plain 3"] and amounts["λ 0, 1"] == amounts["plain 1"], amounts
    assert amounts["plain 3"] != amounts["plain 1"], amounts


def test_every_input_of_the_call_is_repeated_per_prompt(pack, flux):
    """The model call's other inputs reach each prompt's rows as they reached its own call before: a ControlNet's
    residuals (added to the image tokens after each block), Flux Kontext's reference latents (more image tokens) and
    the guidance of two latent rows, called through ComfyUI's apply_model with the patched MODEL's wrappers and
    patches. One call equals the separate calls to float rounding (measured 3.3e-7 relative); the control and the
    references do change the output (by 0.62 of its max here), so rows without them would not pass."""
    from hspace_pack.nodes.comfy.fluxspace import FluxSpace

    dm = flux.get_model_object("diffusion_model")
    g = torch.Generator().manual_seed(9)
    rows, tokens, width = 2, (SIZE // 2) ** 2, dm.double_blocks[0].img_attn.proj.out_features
    x = torch.randn(rows, 16, SIZE, SIZE, generator=g)
    sigma = torch.full((rows,), 0.9)  # inside the window 0–60 % (σ 1 … 0.68)
    own = flux_conditioning(0)[0]
    control = {"input": [torch.randn(rows, tokens, width, generator=g), None],
               "output": [torch.randn(rows, tokens, width, generator=g)]}
    extra = {"y": own[1]["pooled_output"].expand(rows, -1), "guidance": torch.tensor([3.5, 2.0]),
             "ref_latents": [torch.randn(rows, 16, SIZE // 2, SIZE // 2, generator=g)]}
    out, calls = {}, []
    hook = dm.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        for one_call, inputs in ((True, True), (False, True), (True, False)):
            patched = _patched(flux, flux_conditioning(5), flux_conditioning(6), one_call=one_call)
            options = {**patched.model_options["transformer_options"], "wrappers": patched.wrappers,
                       "cond_or_uncond": [0], "sigmas": sigma}
            given = {"control": control, **extra} if inputs else {"y": extra["y"], "guidance": extra["guidance"]}
            with torch.inference_mode():
                out[one_call, inputs] = patched.model.apply_model(x, sigma, c_crossattn=own[0].expand(rows, -1, -1),
                                                                  transformer_options=options, **given)
            edit = next(w.__self__ for w in patched.wrappers["apply_model"]["hspace_fluxspace"])
            assert isinstance(edit, FluxSpace) and edit.one_call is one_call
    finally:
        hook.remove()
    assert calls == [3 * rows, rows, rows, rows, 3 * rows], calls  # one call, then edit, null and own as before
    assert out[True, True].shape == x.shape
    assert relative(out[True, True], out[False, True]) < TOLERANCE[torch.float32], relative(out[True, True],
                                                                                            out[False, True])
    assert relative(out[True, True], out[True, False]) > 1e-2, relative(out[True, True], out[True, False])


@pytest.mark.parametrize("family,cfg", [("flux", 1.0), ("sd3", 3.0)])
def test_the_coarse_edit_alone_runs_no_prompt_rows(pack, family, cfg):
    """λ = 0 with λ_coarse ≠ 0 (FluxSpace's coarse edit alone) only moves the pooled vector: plain euler on
    conditioning whose pooled outputs (the negative's too: the edit moves the whole call's y) are moved by
    λ_coarse·(ȳ_edit ⊥ ȳ_null) inside the window and not outside it equals it bit for bit, and every block runs the
    call's own rows (no edit or null rows, no block patch)."""
    import comfy.patcher_extension

    from hspace_pack.hspace_core.fluxspace import orthogonal_part
    from hspace_pack.nodes.layer import edit_window

    model = (tiny_flux if family == "flux" else tiny_sd3)()
    cond = flux_conditioning if family == "flux" else sd3_conditioning
    edit, empty = cond(5), cond(6)
    seen = []
    out = _run(model, _patched(model, edit, empty, lam=0.0, lam_coarse=0.7), cond, cfg, 1, seen)
    assert set(rows for _, rows in seen) == {2 if cfg != 1 else 1}
    move = 0.7 * orthogonal_part(edit[0][1]["pooled_output"], empty[0][1]["pooled_output"])

    window_sigma_end = edit_window("test", model, "percent", 0, 0.0, 0.6).sigma_end

    def moved_y(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        in_window = float(t.flatten()[0]) >= window_sigma_end  # the window starts at percent 0: σ ≤ its start
        y = kwargs["y"] + move.to(kwargs["y"]).expand_as(kwargs["y"]) if in_window else kwargs["y"]
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **{**kwargs, "y": y})

    written_out = model.clone()
    written_out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test", moved_y)
    assert torch.equal(out, _run(model, written_out, cond, cfg))
    assert not torch.equal(out, _run(model, model, cond, cfg))  # the coarse edit does change the image
