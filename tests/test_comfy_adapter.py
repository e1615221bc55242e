"""In-process check of the ComfyUI adapter against the diffusers adapter on the same pixel U-Net.

ComfyUI's sampler works in VE space and returns denoised x0 for any prediction type; the adapter converts back to
VP-space ε.  For ε- and v-prediction models both adapters must agree, with and without an h edit.
"""
import pytest
import torch

from harness.inprocess import run_in_comfy
from harness.tiny import tiny_pixel_unet
from hspace_core import DiffusersUNet, schedule_from_diffusers_config


@pytest.mark.parametrize("prediction_type,site", [("epsilon", "middle"), ("v_prediction", "middle"), ("epsilon", "up1")])
def test_comfy_adapter_matches_diffusers_adapter(pack, prediction_type, site):
    _, pixel_model = pack
    unet = tiny_pixel_unet(size=16)
    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
              "prediction_type": prediction_type}
    patcher = pixel_model.pixel_model_patcher(unet, config)
    reference = DiffusersUNet(unet, schedule_from_diffusers_config(config), site=site)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shift = lambda h, t, branch: h * 1.2 + 0.05

    def body(model, latent):
        assert torch.allclose(model.schedule.alphas_cumprod, reference.schedule.alphas_cumprod, atol=1e-6)
        return [(t, model.predict(x, t), model.predict(x, t, shift)) for t in (999, 500, 20)]

    with torch.inference_mode():
        results = run_in_comfy(patcher, torch.zeros_like(x), body, site=site)
        for t, plain, edited in results:
            want, want_edit = reference.predict(x, t), reference.predict(x, t, shift)
            assert torch.allclose(plain.eps, want.eps, atol=2e-3, rtol=1e-3), t
            assert torch.allclose(plain.h, want.h, atol=1e-4), t
            assert torch.allclose(edited.eps_edited, want_edit.eps_edited, atol=2e-3, rtol=1e-3), t
            if t == 500:  # at t = 999 a v-model's ε = √ᾱ·v + √(1−ᾱ)·x barely depends on the network (√ᾱ ≈ 0.006)
                assert (edited.eps_edited - edited.eps).abs().max() > 1e-3


def test_models_without_a_middle_block_are_refused(pack):
    _, pixel_model = pack
    from diffusers import UNet2DModel

    from hspace_pack.nodes.comfy.checks import check_has_h_space

    with pytest.raises(ValueError, match="no middle block"):
        pixel_model.DiffusersPixelUNet(UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                                                   norm_num_groups=8, mid_block_type=None,
                                                   down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))

    class FakeDiT(torch.nn.Module):  # stands for Flux / SD3 / PixArt: a diffusion_model with no middle_block
        pass

    patcher = pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), {"prediction_type": "epsilon"})
    patcher.model.diffusion_model = FakeDiT()
    with pytest.raises(ValueError, match="no U-Net middle block.*SD1.x, SD2.x"):
        check_has_h_space(patcher)


@pytest.mark.parametrize("form", ["global", "implicit"])
def test_direction_training_through_comfy_matches_diffusers(pack, form):
    """Under inference mode (as ComfyUI runs nodes), on inference-tensor weights, the same losses and direction."""
    from harness.tiny import tiny_clip
    from test_clip_directions import SOURCE, TARGET, config

    from hspace_core.clip_directions import train_direction

    _, pixel_model = pack
    clip = tiny_clip()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    settings = config(form, epochs=2)
    reference = train_direction(DiffusersUNet(tiny_pixel_unet(size=16)), images, clip, SOURCE, TARGET, settings)
    with torch.inference_mode():
        patcher = pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), {"prediction_type": "epsilon"})
        weights = dict(patcher.model.diffusion_model.named_parameters())
        result = run_in_comfy(
            patcher, images,
            lambda m, x: train_direction(m, images, clip, SOURCE, TARGET, settings, latents=x))
    assert all(p is weights[n] for n, p in patcher.model.diffusion_model.named_parameters()), "weights put back"
    assert len(result.losses) == len(reference.losses)
    assert torch.allclose(torch.tensor(result.losses), torch.tensor(reference.losses), rtol=1e-3, atol=1e-3)
    h = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = result.direction.at(h, 700), reference.direction.at(h, 700)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-2
