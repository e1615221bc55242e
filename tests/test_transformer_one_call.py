"""An edited step on a transformer (Flux, SD3.x) is one denoiser call on [x; x], as on a U-Net (issue 38 item 6): the
dit patch records h from the plain rows and edits it in the copies of the edited branches only, and the plain and
edited predictions equal the two-call reference path to float rounding; the h recorded is the same."""
import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning
from test_comfy_one_call import SHIFT, counted, relative
from test_transformers import SIZE, flux, sd3  # noqa: F401 -- the tiny models' fixtures


def predictions(comfy_model, model, cond, cfg, site, edit_branches, rows=1):
    """(one call, two calls, no edit) at two sigmas of a SAMPLER's run: each (D plain, h, D edited), and the
    number of denoiser calls each took."""
    import comfy.sample
    import comfy.samplers

    found = []

    def body(denoiser, x, sigmas, extra_args=None, callback=None, disable=None):
        hs = comfy_model.ComfyHSpaceModel.for_guider(denoiser, extra_args, model, edit_branches, site)
        calls = counted(hs)
        for sigma in sigmas[:2]:
            hs.one_call = True
            fast = hs.denoised(x, sigma, 500, SHIFT)
            fast_calls = len(calls)
            hs.one_call = False
            slow = hs.denoised(x, sigma, 500, SHIFT)
            slow_calls = len(calls) - fast_calls
            found.append((fast, slow, hs.denoised(x, sigma, 500)[0], fast_calls, slow_calls))
            calls.clear()
        return x

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4)
    x = torch.randn(rows, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        comfy.sample.sample_custom(model, x, cfg, comfy.samplers.KSAMPLER(body), sigmas, cond(0), cond(1),
                                   torch.zeros_like(x), disable_pbar=True, seed=0)
    return found


@pytest.mark.parametrize("family,site,cfg,edit_branches,rows", [
    ("flux", "double.1.attn", 1.0, "cond", 1), ("flux", "single.0", 1.0, "cond", 2), ("flux", "double.0", 1.0, "cond", 1),
    ("sd3", "joint.1.attn", 3.0, "cond", 1), ("sd3", "joint.0", 3.0, "both", 2)])
def test_one_call_matches_two_calls_on_transformers(pack, request, family, site, cfg, edit_branches, rows):
    comfy_model, _ = pack
    model = request.getfixturevalue(family)
    cond = flux_conditioning if family == "flux" else sd3_conditioning
    for (plain, h, edited), (plain2, h2, edited2), unedited, fast_calls, slow_calls in predictions(
            comfy_model, model, cond, cfg, site, edit_branches, rows):
        assert (fast_calls, slow_calls) == (1, 2)
        assert plain.shape == edited.shape == (rows, 16, SIZE, SIZE)
        # measured here: ≤ 1.1e-6 relative (2× the rows changes the kernels' blocking, not the math; SD3: equal)
        assert relative(plain, plain2) < 1e-5 and relative(edited, edited2) < 1e-5
        assert relative(plain, unedited) < 1e-5
        assert torch.equal(h, h2) or relative(h, h2) < 1e-5
        assert relative(edited, plain) > 1e-3, "the edit shows"
