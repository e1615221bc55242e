"""One test of flow matching (``NoiseLevels.flow``, from the MODEL's ``model_sampling``) and one inversion on flow
(review of issue 38 round 1, findings 1 and 2), in-process on both ComfyUI versions:

- a U-Net whose sampling ComfyUI's ModelSamplingSD3 node made CONST is refused by name (before, it passed as EPS and
  its inversion ran the flow step with the U-Net's x_T scaling), by the process nodes' check and by the SAMPLERs';
- on the tiny Flux the library's ``invert`` and H-Space DDIM Inversion's inversion (``samplers.ddim_inversion``,
  ``run_inversion``) are one inversion: the same x_T and latents, with and without refinement."""
import pytest
import torch

from harness.inprocess import run_in_comfy
from harness.tiny_dit import flux_conditioning
from harness.tiny_sdxl import sdxl_conditioning, tiny_sdxl, tiny_sdxl_clip

from test_comfy_one_call import relative

STEPS = 6
ROUNDING = 1e-5  # float32: the two paths run the same operations; measured 0 (bit-equal) here


@pytest.fixture(scope="module")
def sdxl_sd3_sampled(pack):
    """The tiny SDXL, and the same MODEL through ComfyUI's own ModelSamplingSD3 node (shift 3)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    clip = tiny_sdxl_clip()
    unet = tiny_sdxl()
    patched = ModelSamplingSD3().patch(unet, 3.0)[0]
    return unet, patched, sdxl_conditioning(clip, "a lighthouse", 128, 128)


def test_a_unet_sampled_as_flow_is_refused_naming_the_modelsampling_node(sdxl_sd3_sampled):
    import comfy.sample

    import hspace_pack.nodes.comfy.samplers as samplers
    from hspace_pack.nodes.comfy.checks import check_has_h_space
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    unet, patched, positive = sdxl_sd3_sampled
    check_has_h_space(unet)  # the U-Net as trained passes
    assert patched.model.model_type.name == "EPS" and noise_levels(patched).flow and not noise_levels(unet).flow
    with pytest.raises(ValueError, match="ModelSamplingSD3.*remove that ModelSampling node"):
        check_has_h_space(patched)
    # the SAMPLER path (no MODEL input on the node): refused when the guider's MODEL reaches the sampler
    sampler = samplers.inversion_sampler("H-Space Inversion Sampler", refine_iters=0, site="middle",
                                         record=samplers.InversionRecord())
    sigmas = noise_levels(patched).grid_sigmas(4).float().flip(0)[:-1]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), pytest.raises(ValueError, match="ModelSamplingSD3"):
        comfy.sample.sample_custom(patched, torch.zeros_like(x), 1.0, sampler, sigmas, positive, positive, x,
                                   disable_pbar=True, seed=0)


@pytest.mark.parametrize("refine_iters", [0, 1])
def test_ddim_inversion_is_the_librarys_invert_on_flux(flux, refine_iters):
    import hspace_pack.nodes.comfy.samplers as samplers
    from hspace_core import invert

    x0 = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.8

    def body(m, x):
        ours = samplers.ddim_inversion(m, x, STEPS, refine_iters=refine_iters)
        theirs = invert(m, x, STEPS, refine_iters=refine_iters, report=False)
        return ours, theirs, m.levels

    with torch.inference_mode():
        ours, theirs, levels = run_in_comfy(flux, x0, body, positive=flux_conditioning(0))
    assert levels.flow and ours.timesteps == theirs.timesteps and ours.timesteps[0] == levels.num_timesteps - 1
    assert ours.latents.shape == theirs.latents.shape == (STEPS + 1, 1, 16, 16, 16)
    assert relative(ours.x_T, theirs.x_T) < ROUNDING
    assert relative(ours.latents, theirs.latents) < ROUNDING
    # the flow rule: a first Euler step from the clean input (latents[1] is not latents[0]) ...
    assert relative(ours.latents[1], ours.latents[0]) > 1e-6
    # ... and x_T is the point at σ = 1 (unit_scale 1), the noise the reverse pass starts from
    assert levels.unit_scale(levels.sigma_max) == 1.0


def test_a_transformer_sampled_otherwise_than_flow_is_refused(flux):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    from hspace_pack.nodes.comfy.checks import check_has_h_space
    from hspace_pack.nodes.comfy.noise_levels import noise_levels

    check_has_h_space(flux)
    eps = ModelSamplingDiscrete().patch(flux, "eps", False)[0]
    assert eps.model.model_type.name == "FLUX" and not noise_levels(eps).flow
    with pytest.raises(ValueError, match=r"samples as FLUX \(ModelSamplingAdvanced\), not flow matching"):
        check_has_h_space(eps)
