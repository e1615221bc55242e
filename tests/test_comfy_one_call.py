"""An edited step in ComfyUI is one denoiser call (encoder once, decoder for plain + edited rows), and gives the
same ε and ε_edited as the two-call reference path: SD-shaped ComfyUI U-Nets (ε and v-prediction) built tiny
in-process, with FreeU and a ControlNet on the MODEL, and the pixel U-Net."""
import pytest
import torch

from harness.inprocess import run_in_comfy
from harness.tiny import tiny_pixel_unet
from harness.tiny_models import _init_all

UNET = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1],
            channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
            transformer_depth_middle=1, context_dim=64,
            use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False, adm_in_channels=None)


def tiny_sd(prediction: str = "eps", seed: int = 0):
    from harness.inprocess import comfy_patcher

    return comfy_patcher(dict(UNET, num_heads=4, num_head_channels=-1), prediction, seed)


def tiny_controlnet(seed: int = 1):
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    net = comfy.cldm.cldm.ControlNet(hint_channels=3, device="cpu", operations=comfy.ops.disable_weight_init, num_heads=4,
                                     **{k: v for k, v in UNET.items() if k not in ("out_channels", "transformer_depth_output")})
    _init_all(net, torch.Generator().manual_seed(seed))
    control = comfy.controlnet.ControlNet(net, load_device=torch.device("cpu"))
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(seed))
    return control.set_cond_hint(hint.movedim(-1, 1), 0.8)


def conditioning(seed: int = 0, control=None):
    g = torch.Generator().manual_seed(seed)
    extra = {"control": control, "control_apply_to_uncond": True} if control is not None else {}
    return [[torch.randn(1, 7, 64, generator=g), dict(extra)]], [[torch.randn(1, 7, 64, generator=g), dict(extra)]]


def counted(model):
    calls = []
    inner = model.denoiser

    def denoiser(x, sigma, **kwargs):
        calls.append(x.shape[0])
        return inner(x, sigma, **kwargs)

    model.denoiser = denoiser
    return calls


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


# Two float32 orderings of the same math (a node's σ-space loop against the library's ᾱ-space loop,
# tests/test_one_code_path.py and tests/test_native_inversion.py) differ by round-off that depends on the CPU's
# kernels: measured at most 2.7e-5 relative (style calibration on the random tiny SD U-Net under
# ATEN_CPU_CAPABILITY=default; 2.3e-5 clip_x0 there; ≤ 9.1e-6 on the bundled model) over AVX512, AVX2 and default
# kernels and 1 or 2 threads, and 1.1e-5 on the bundled model on another CPU (issue 35). ROUNDING is ≥ 3.7× the worst;
# the effects those tests tell apart (an injection, a stride, clipping) are ≥ 1.4e-2. docs/native_sampling.md.
ROUNDING = 1e-4


SHIFT = lambda h, t, branch: h * 1.3 + 0.1  # noqa: E731


def compare(patcher, x, cfg, edit_branches, positive=None, negative=None, steps=(900, 400),
            site="middle"):
    def body(model, latent):
        calls = counted(model)
        out = []
        for t in steps:
            model.one_call = True
            fast = model.predict(x, t, SHIFT)
            assert len(calls) == 1, calls
            plain = model.predict(x, t)
            assert len(calls) == 2, "a step without an edit is one denoiser call"
            model.one_call = False
            slow = model.predict(x, t, SHIFT)
            assert len(calls) == 4
            calls.clear()
            out.append((t, fast, slow, plain))
        return out

    with torch.inference_mode():
        results = run_in_comfy(patcher, torch.zeros_like(x), body, positive=positive, negative=negative,
                               cfg=cfg, edit_branches=edit_branches, site=site)
    for t, fast, slow, plain in results:
        assert relative(fast.eps, slow.eps) < 1e-5, t
        assert relative(fast.eps_edited, slow.eps_edited) < 1e-5, t
        assert torch.equal(fast.h, slow.h) or relative(fast.h, slow.h) < 1e-6, t
        assert relative(fast.eps, plain.eps) < 1e-5, t
    t, fast, _, _ = results[-1]  # at t = 900 a v-model's ε barely depends on the network
    assert relative(fast.eps_edited, fast.eps) > 1e-3, "the edit shows"
    return results


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("cfg,edit_branches", [(7.5, "cond"), (7.5, "both"), (1.0, "cond")])
def test_one_call_matches_two_calls_on_sd_shaped_comfy_unet(pack, prediction, cfg, edit_branches):
    positive, negative = conditioning()
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    compare(tiny_sd(prediction), x, cfg, edit_branches, positive, negative)


def test_one_call_keeps_freeu_and_controlnet(pack):
    from comfy_extras.nodes_freelunch import FreeU

    (patcher,) = FreeU().patch(tiny_sd(), 1.3, 1.4, 0.9, 0.2)
    control = tiny_controlnet()
    positive, negative = conditioning(control=control)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    with_both = compare(patcher, x, 7.5, "cond", positive, negative)
    bare = compare(tiny_sd(), x, 7.5, "cond", *conditioning())
    for (t, fast, _, _), (_, plain, _, _) in zip(with_both, bare):
        assert relative(fast.eps, plain.eps) > 1e-3, "FreeU and the ControlNet change ε"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_call_matches_two_calls_on_pixel_unet(pack, prediction_type):
    _, pixel_model = pack
    from comfy_extras.nodes_freelunch import FreeU

    config = {"prediction_type": prediction_type}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    compare(pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), config), x, 1.0, "cond")
    model = pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), config)
    model.model.model_config.unet_config["model_channels"] = 16  # FreeU scales the 32- and 64-channel blocks
    (freeu,) = FreeU().patch(model, 1.3, 1.4, 0.9, 0.2)
    compare(freeu, x, 1.0, "both")


@pytest.mark.parametrize("cfg,edit_branches", [(7.5, "cond"), (1.0, "cond")])
def test_one_call_matches_two_calls_at_site_up1(pack, cfg, edit_branches):
    _, pixel_model = pack
    from comfy_extras.nodes_freelunch import FreeU

    (patcher,) = FreeU().patch(tiny_sd(), 1.3, 1.4, 0.9, 0.2)
    positive, negative = conditioning(control=tiny_controlnet())
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    up1 = compare(patcher, x, cfg, edit_branches, positive, negative, site="up1")
    middle = compare(patcher, x, cfg, edit_branches, positive, negative)
    for (t, at_up1, _, _), (_, at_middle, _, _) in zip(up1, middle):
        assert at_up1.h.shape[-1] == 2 * at_middle.h.shape[-1], "up1 is one level finer than the middle block"
        assert relative(at_up1.eps, at_middle.eps) < 1e-5, "reading h does not change ε"
        assert relative(at_up1.eps_edited, at_middle.eps_edited) > 1e-3, "the site changes what the edit moves"
    pixel = pixel_model.pixel_model_patcher(tiny_pixel_unet(size=16), {"prediction_type": "epsilon"})
    compare(pixel, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), 1.0, "both",
            site="up1")


def test_site_up1_is_the_output_of_the_first_decoder_level(pack):
    """On ComfyUI's U-Net, h at up1 is what output block num_res_blocks (the first level's last, with the
    upsampler) returns, read through forward hooks; the middle site is the middle block's output."""
    from hspace_pack.nodes.comfy.checks import site_block

    patcher = tiny_sd()
    dm = patcher.get_model_object("diffusion_model")
    assert site_block(dm, "middle") == 0 and site_block(dm, "up1") == 2
    with pytest.raises(ValueError, match="no h site 'up2'; use middle, up1"):
        site_block(dm, "up2")
    positive, _ = conditioning()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    seen = {}
    # forward_timestep_embed runs a block's layers one by one: the last layer's output is the block's
    hooks = [dm.middle_block[-1].register_forward_hook(lambda m, a, o: seen.setdefault("middle", o)),
             dm.output_blocks[1][-1].register_forward_hook(lambda m, a, o: seen.setdefault("up1", o))]

    def body(model, latent):
        return model.predict(x, 500)

    try:
        with torch.inference_mode():
            for site in ("middle", "up1"):
                seen.clear()
                pred = run_in_comfy(patcher, torch.zeros_like(x), body, positive=positive, site=site)
                assert torch.equal(pred.h, seen[site]), site
    finally:
        for hook in hooks:
            hook.remove()
