"""SDXL and SD2 v-prediction through the ComfyUI adapter (nodes/comfy/model.py), in-process.

ComfyUI's checkpoint detection needs full-size SDXL weights, so harness/tiny_sdxl.py builds both models with
ComfyUI's own classes (comfy.model_base.SDXL with its ADM label embedding, comfy.supported_models.SD20 with
v-prediction sampling) and their text encoders (SDXLClipModel, SD2ClipModel) small, with the real tokenizers.  The
SDXL conditioning comes from ComfyUI's CLIPTextEncodeSDXL node: pooled output plus width/height/crop/target sizes.
"""
import math

import pytest
import torch

from harness.inprocess import run_in_comfy
from harness.tiny_sdxl import SDXL_POOLED, sdxl_conditioning, tiny_sd2, tiny_sd2_clip, tiny_sdxl, tiny_sdxl_clip
from hspace_core import Direction, EditSchedule, capture, edit, generate, inject, invert, normalized_slerp, step_pairs
from test_comfy_one_call import compare, relative

SIZE = 128  # pixels; latents are 16×16


@pytest.fixture(scope="module")
def sdxl(pack):
    clip = tiny_sdxl_clip()
    return tiny_sdxl(), sdxl_conditioning(clip, "a lighthouse at dusk", SIZE, SIZE), sdxl_conditioning(clip, "", SIZE, SIZE)


@pytest.fixture(scope="module")
def sd2v(pack):
    import nodes

    clip = tiny_sd2_clip()
    return (tiny_sd2("v"), nodes.CLIPTextEncode().encode(clip, "a lighthouse at dusk")[0],
            nodes.CLIPTextEncode().encode(clip, "")[0])


@pytest.fixture(params=["sdxl", "sd2v"])
def model(request):
    return request.getfixturevalue(request.param)


def latent(seed=1, batch=1):
    return torch.randn(batch, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed)) * 0.5


def run(patcher, x, body, positive, negative, cfg):
    with torch.inference_mode():
        return run_in_comfy(patcher, x, body, positive=positive, negative=negative, cfg=cfg)


def test_the_models_are_what_comfyui_would_load(sdxl, sd2v):
    import comfy.model_base
    import comfy.model_sampling

    patcher, positive, _ = sdxl
    assert type(patcher.model) is comfy.model_base.SDXL and patcher.model.model_type.name == "EPS"
    unet = patcher.model.diffusion_model
    assert unet.label_emb[0][0].in_features == SDXL_POOLED + 6 * 256  # pooled CLIP-G + six 256-d size embeddings
    assert [type(b[-1]).__name__ for b in unet.input_blocks[1:]] == ["ResBlock", "Downsample", "SpatialTransformer"]
    assert all(type(m.proj_in).__name__ == "Linear" for m in unet.modules() if type(m).__name__ == "SpatialTransformer")
    cond = positive[0][1]
    assert cond["pooled_output"].shape == (1, SDXL_POOLED)
    assert {k: cond[k] for k in ("width", "height", "target_width", "target_height")} == dict.fromkeys(
        ("width", "height", "target_width", "target_height"), SIZE)
    assert positive[0][0].shape == (1, 77, 32 + 64)  # CLIP-L ‖ CLIP-G hidden states
    v_model = sd2v[0].model
    assert v_model.model_type.name == "V_PREDICTION" and isinstance(v_model.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert type(v_model.model_config).__name__ == "SD20"


def test_sdxl_size_conditioning_and_pooled_output_reach_the_unet(pack, sdxl):
    """The same prompt with other size conditioning (or another pooled output) gives another ε: encode_adm runs."""
    patcher, positive, negative = sdxl
    x = latent()
    resized = [[positive[0][0], {**positive[0][1], "width": 4 * SIZE, "target_width": 4 * SIZE}]]
    repooled = [[positive[0][0], {**positive[0][1], "pooled_output": negative[0][1]["pooled_output"]}]]
    eps = {name: run(patcher, x, lambda m, _: m.predict(x, 500).eps, cond, cond, 1.0)
           for name, cond in [("base", positive), ("resized", resized), ("repooled", repooled)]}
    assert relative(eps["resized"], eps["base"]) > 1e-3
    assert relative(eps["repooled"], eps["base"]) > 1e-3


def test_h_at_the_site_is_what_sdxl_produces(pack, sdxl, monkeypatch):
    """h is the middle block's output at output block 0: for the tiny model (B, 128, H/16, W/16) in both CFG branches,
    and, through the same patch on ComfyUI's full SDXL U-Net config (on the meta device), (B, 1280, 32, 32) at 1024²."""
    comfy_model, _ = pack
    patcher, positive, negative = sdxl
    x = latent(batch=2)
    h = run(patcher, x, lambda m, _: m.predict(x, 500).h, positive, negative, 7.5)
    assert h.shape == (4, 128, SIZE // 16, SIZE // 16)  # uncond rows then cond rows

    import comfy.ldm.modules.attention as attention
    import comfy.ops
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_basic)  # runs on the meta device
    config = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4],
                  num_res_blocks=[2] * 3, transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                  transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_heads=-1,
                  num_head_channels=64, use_spatial_transformer=True, legacy=False, use_linear_in_transformer=True,
                  adm_in_channels=2816, num_classes="sequential", use_temporal_attention=False)
    assert comfy.supported_models.SDXL.matches(config)  # what CheckpointLoaderSimple detects as SDXL
    full = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    site = comfy_model._HPatch(("uncond", "cond"))
    with torch.no_grad():
        full(torch.zeros(2, 4, 128, 128, device="meta"), torch.zeros(2, device="meta"),
             context=torch.zeros(2, 77, 2048, device="meta"), y=torch.zeros(2, 2816, device="meta"),
             transformer_options={"patches": {"output_block_patch": [site]}, "cond_or_uncond": [1, 0]})
    assert site.h().shape == (2, 1280, 32, 32)


def test_inversion_round_trip(pack, model):
    """DDIM inversion with fixed-point refinement is the exact inverse of the reverse step: regenerating from x_T
    gives the latent back up to what 8 iterations reach on random weights, which make plain inversion poor (SDXL
    tiny: MSE 8.1 plain, 0.018 refined; SD2-v: 0.025 and 0.005)."""
    patcher, positive, _ = model
    x0 = latent()
    plain, refined = run(patcher, x0, lambda m, x: (invert(m, x, 20), invert(m, x, 20, refine_iters=8)),
                         positive, positive, 1.0)
    assert refined.report.mse < 0.1 * x0.var().item(), refined.report  # within ≈ 0.3 of the latents' spread
    assert plain.report.mse > 3 * refined.report.mse, (plain.report, refined.report)
    assert refined.trajectory.h.shape[:2] == (20, 1) and refined.trajectory.branches == ("single",)


def test_asyrp_edit_with_real_conditioning(pack, model):
    patcher, positive, negative = model
    x_T = latent(2)
    schedule = EditSchedule(num_steps=8, t_edit=500)

    def body(m, _):
        h = m.predict(x_T, 999).h
        direction = Direction("global", torch.randn(h.shape[1:], generator=torch.Generator().manual_seed(0)) * 0.03)
        base = generate(m, x_T, schedule)
        return base, [edit(m, x_T, direction, s, schedule) for s in (0.0, 1.0, -1.0)]

    base, (zero, plus, minus) = run(patcher, x_T, body, positive, negative, 5.0)
    assert torch.equal(zero, base)
    assert relative(plus, base) > 1e-3
    cos = torch.nn.functional.cosine_similarity((plus - base).flatten(), (minus - base).flatten(), dim=0)
    assert cos < -0.9, cos  # h̃ = h ± Δh: opposite changes (Asyrp's linearity)


def test_content_injection_with_real_conditioning(pack, model):
    """γ = 0 regenerates the style; γ = 0.5 is the asymmetric process written out (DDIM eq. 12 with P_t from the
    ε whose cond-branch h is InjectFusion's normalised slerp toward the content's, D_t from the plain ε) on the
    guided SDXL model; the h the decoder gets is that slerp."""
    patcher, positive, negative = model
    style_x_T, content_x_T = latent(3), latent(4)
    schedule = EditSchedule(num_steps=8, t_edit=500)

    def body(m, _):
        content = capture(m, content_x_T, 8)
        style = generate(m, style_x_T, schedule)
        mixes = [inject(m, style_x_T, content, gamma, schedule) for gamma in (0.0, 0.5)]
        x = style_x_T
        for t, t_prev in step_pairs(schedule.timesteps()):
            a, a_prev = m.schedule.alpha_bar(t), m.schedule.alpha_bar(t_prev)
            p = m.predict(x, t, (lambda h, tt, b: normalized_slerp(h, content.at(tt, b), 0.5)) if t >= 500 else None)
            e_p = p.eps_edited if t >= 500 else p.eps
            x = math.sqrt(a_prev) * (x - math.sqrt(1 - a) * e_p) / math.sqrt(a) + math.sqrt(1 - a_prev) * p.eps
        mixes.append(x)
        h_style = m.predict(style_x_T, 999).h
        seen = []
        hook = lambda h, t, branch: seen.append(normalized_slerp(h, content.at(t, branch), 0.5)) or seen[-1]
        m.predict(style_x_T, 999, hook)
        return style, mixes, h_style, content, seen

    style, (same, mix, by_hand), h_style, content, seen = run(patcher, style_x_T, body, positive,
                                                              negative, 5.0)
    assert relative(same, style) < 1e-5
    assert relative(mix, by_hand) < 1e-5 and relative(mix, style) > 1e-3
    assert content.branches == ("uncond", "cond") and len(seen) == 1  # only the cond branch is edited (default)
    h_c = content.at(999, "cond")
    assert relative(seen[0], normalized_slerp(h_style[1:], h_c, 0.5)) < 1e-6


@pytest.mark.parametrize("cfg,edit_branches", [(7.5, "cond"), (7.5, "both"), (1.0, "cond")])
def test_one_call_matches_two_calls(pack, model, cfg, edit_branches):
    """The one-call edited step (encoder once, decoder for plain + edited rows) equals the two-call path to 1e-5
    relative, with SDXL's label embedding / SD2's v-prediction."""
    patcher, positive, negative = model
    compare(patcher, latent(5, batch=2), cfg, edit_branches, positive, negative)
