"""Inversion under classifier-free guidance: fixed-point refinement with the guided ε, negative-prompt inversion
(Miyake et al. 2023) and null-text inversion (Mokady et al. 2023), on a tiny class-conditional U-Net built in code
and on the shipped class-conditional demo model."""
import dataclasses
import os

import pytest
import torch

import hspace_core as hs
from hspace_demo.run import BUNDLED

CONDITIONAL = os.path.join(os.path.dirname(BUNDLED), "hspace-shapes-ddpm-cond")


def tiny_class_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=3).eval()


def guided_model(unet, labels, w, null=2):
    base = hs.DiffusersUNet(unet, class_labels=torch.zeros(1, dtype=torch.long))
    labels = torch.as_tensor(labels)
    c = hs.Conditioning(positive=base.class_embedding_of(labels),
                        negative=base.class_embedding_of(torch.full_like(labels, null)), guidance_scale=w)
    return base.with_conditioning(c)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)


def test_class_embeddings_are_the_conditioning(images):
    unet = tiny_class_unet()
    model = guided_model(unet, [0, 1], 1.0)
    with torch.no_grad():
        by_label = unet(images, torch.tensor([500, 500]), class_labels=torch.tensor([0, 1])).sample
        assert torch.allclose(model.predict(images, 500).eps, by_label, atol=1e-6)
        guided = guided_model(unet, [0, 1], 3.0).predict(images, 500).eps
        null = unet(images, torch.tensor([500, 500]), class_labels=torch.tensor([2, 2])).sample
        assert torch.allclose(guided, null + 3 * (by_label - null), atol=1e-5)


def test_negative_prompt_inversion_reconstructs_at_guidance_as_at_one(images):
    unet = tiny_class_unet()
    with torch.no_grad():
        at_one = hs.invert(guided_model(unet, [0, 1], 1.0), images, 10)
        npi = hs.invert_guided(guided_model(unet, [0, 1], 7.5), images, 10, method="negative_prompt")
    assert torch.allclose(npi.inversion.x_T, at_one.x_T)
    assert torch.allclose(npi.reconstruction, at_one.reconstruction, rtol=1e-4, atol=1e-4)
    assert npi.negative == "positive"
    guided = npi.guided(guided_model(unet, [0, 1], 7.5)).conditioning
    assert torch.equal(guided.negative, guided.positive)


def test_null_text_optimises_one_embedding_per_step_and_flows_to_edits(images):
    unet = tiny_class_unet()
    with torch.no_grad():
        unet.class_embedding.weight.mul_(0.05)  # a random model guided at 7.5 with its own embeddings diverges
    model = guided_model(unet, [0, 1], 7.5)
    null = hs.invert_guided(model, images, 8, method="null_text", inner_steps=3)
    assert set(null.negative) == set(null.inversion.timesteps)
    first = null.negative[null.inversion.timesteps[0]]
    assert not torch.equal(first, model.conditioning.negative)  # optimised
    assert unet.class_embedding.weight.requires_grad and not any(p.grad is not None for p in unet.parameters())
    # the per-step embeddings flow to edits: at strength 0 an edit is the reconstruction
    direction = hs.Direction("global", torch.randn(*null.inversion.trajectory.h_shape))
    with torch.no_grad():
        again = hs.edit(null.guided(model), null.inversion.x_T, direction, 0.0, hs.EditSchedule(8, t_edit=300))
    assert torch.allclose(again, null.reconstruction, rtol=1e-4, atol=1e-4)
    assert torch.allclose(again, null.reconstruction, atol=1e-5)


def test_bad_guided_inversion_input_is_refused(images):
    unet = tiny_class_unet()
    with pytest.raises(ValueError, match="CFG inversion 'nul' is unknown"):
        hs.invert_guided(guided_model(unet, [0, 1], 3.0), images, 4, method="nul")
    labelled = hs.DiffusersUNet(unet, class_labels=torch.tensor([0]))
    with torch.no_grad():  # guidance 1 has no negative branch: negative-prompt inversion is plain inversion (logged)
        assert torch.equal(hs.invert_guided(labelled, images, 4).inversion.x_T, hs.invert(labelled, images, 4).x_T)
    with pytest.raises(ValueError, match="no negative conditioning"):
        labelled.with_negative("positive")
    c = guided_model(unet, [0, 1], 3.0).conditioning
    with pytest.raises(ValueError, match="at t=5"):
        dataclasses.replace(c, negative_at={5: torch.zeros(3, 64)})
    with pytest.raises(ValueError, match="class-conditional"):
        hs.DiffusersUNet(unet)


# Seeds 11 / 12 / 13 (4 images, 20 steps, cfg 7.5) measured, in dB: negative-prompt minus plain 0.78 / 1.77 / 6.36
# without refinement and 7.73 / 2.76 / 7.92 with k = 1 (both inverted with k = 1); null-text minus the better of the
# two without refinement 6.01 / 3.81 / 4.64 (docs/inversion.md).
MARGIN_NPI_OVER_PLAIN = 0.5
MARGIN_NPI_OVER_PLAIN_REFINED = 2.0
MARGIN_NULL_OVER_BEST = 3.0


@pytest.mark.skipif(not os.path.isdir(CONDITIONAL), reason="the class-conditional demo model is not in this checkout")
def test_shipped_conditional_model_guided_inversion():
    """On the shipped class-conditional demo model at cfg 7.5, where plain DDIM inversion drifts."""
    import json

    from diffusers import UNet2DModel

    from hspace_demo.shapes import make_batch
    from hspace_demo.train_conditional import NULL_CLASS, label_of

    unet = UNet2DModel.from_pretrained(CONDITIONAL, subfolder="unet", torch_dtype=torch.float32).eval()
    with open(os.path.join(CONDITIONAL, "scheduler", "scheduler_config.json")) as f:
        base = hs.DiffusersUNet(unet, json.load(f), class_labels=torch.zeros(1, dtype=torch.long))
    imgs, factors = make_batch(4, seed=11)
    x0, labels = torch.from_numpy(imgs), torch.tensor([label_of(f) for f in factors])
    c = hs.Conditioning(positive=base.class_embedding_of(labels),
                        negative=base.class_embedding_of(torch.full_like(labels, NULL_CLASS)), guidance_scale=7.5)
    model = base.with_conditioning(c)
    psnr = {}
    with torch.no_grad():
        for k in (0, 1):
            psnr["one", k] = hs.invert(model.with_guidance(1.0), x0, 20, refine_iters=k).report.psnr
            for method in ("plain", "negative_prompt"):
                psnr[method, k] = hs.invert_guided(model, x0, 20, method=method, refine_iters=k).report.psnr
    assert abs(psnr["negative_prompt", 0] - psnr["one", 0]) < 0.05, psnr
    assert abs(psnr["negative_prompt", 1] - psnr["one", 1]) < 0.05, psnr
    assert psnr["negative_prompt", 0] > psnr["plain", 0] + MARGIN_NPI_OVER_PLAIN, psnr
    assert psnr["negative_prompt", 1] > psnr["plain", 1] + MARGIN_NPI_OVER_PLAIN_REFINED, psnr
    null = hs.invert_guided(model, x0, 20, method="null_text").report.psnr
    assert null > max(psnr["negative_prompt", 0], psnr["plain", 0]) + MARGIN_NULL_OVER_BEST, (null, psnr)
