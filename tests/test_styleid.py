"""StyleID on a tiny in-code text U-Net: the attention patch against hand-written attention, identities, the store's
size, refusals, and hooks that always come off."""
import math

import pytest
import torch

from harness.tiny import tiny_text_unet
from hspace_core import Conditioning, DiffusersUNet, EditSchedule, HStorage, generate, invert
from hspace_core.adapters.attention import decoder_self_attention
from hspace_core.attention_store import bytes_per_image, parse_layers
from hspace_core.progress import Cancelled
from hspace_core.styleid import StyleIDSettings, adain, record_features, styleid_inject

STEPS = 6
LAYERS = ("2.0", "3.0")  # the tiny U-Net's decoder self-attention: up_blocks[1].attentions[0, 1]


def _model(seed=0):
    unet = tiny_text_unet(seed)
    cond = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3))
    return DiffusersUNet(unet, conditioning=Conditioning(cond))


def _latents(seed):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def content_style(model):
    content, style = _latents(1), _latents(2) * 0.5 + 0.3
    c_inv, c_q = record_features(model, content, STEPS, LAYERS, ("q",))
    s_inv, s_kv = record_features(model, style, STEPS, LAYERS)
    return c_inv, c_q, s_inv, s_kv


def test_layer_names_follow_comfyui_output_blocks(model):
    assert tuple(decoder_self_attention(model.unet)) == LAYERS
    assert parse_layers("3", LAYERS) == ("3.0",) and parse_layers("all", LAYERS) == LAYERS
    with pytest.raises(ValueError, match="no decoder self-attention layer 7.0"):
        parse_layers("7.0", LAYERS)


def _attention_by_hand(q, k, v, heads, tau):
    b, n, inner = q.shape
    d = inner // heads
    split = lambda x: x.reshape(x.shape[0], -1, heads, d).permute(0, 2, 1, 3)
    logits = tau * split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)
    return (logits.softmax(-1) @ split(v)).permute(0, 2, 1, 3).reshape(b, -1, inner)


def test_injected_layer_is_hand_written_attention_with_style_kv_blended_query_and_temperature(model, content_style):
    c_inv, c_q, s_inv, s_kv = content_style
    gamma, tau, t = 0.6, 1.7, max(s_kv.timesteps)
    attn = decoder_self_attention(model.unet)["3.0"]
    seen = {}
    handle = attn.register_forward_hook(lambda m, args, out: seen.setdefault("io", (args[0], out)) and None)
    try:
        settings = StyleIDSettings(LAYERS, gamma, tau, window=(t, t), start="content")
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q)
    finally:
        handle.remove()
    x, out = seen["io"]  # the first call: the first step, t = T
    q = attn.to_q(x)
    q_tilde = gamma * c_q.at(t, "3.0", "q") + (1 - gamma) * q
    want = attn.to_out[0](_attention_by_hand(q_tilde, s_kv.at(t, "3.0", "k"), s_kv.at(t, "3.0", "v"), attn.heads, tau))
    assert torch.allclose(out, want, atol=1e-5)
    plain = attn.to_out[0](_attention_by_hand(q, attn.to_k(x), attn.to_v(x), attn.heads, 1.0))
    assert (out - plain).abs().max() > 1e-3  # the injection changed the layer


@pytest.mark.parametrize("gamma", [0.0, 0.75, 1.0])
def test_own_features_at_tau_one_without_adain_give_the_plain_reconstruction(model, gamma):
    content = _latents(1)
    inv, q = record_features(model, content, STEPS, LAYERS, ("q",), source="reconstruction")
    _, kv = record_features(model, content, STEPS, LAYERS, source="reconstruction")
    plain = generate(model, inv.x_T, EditSchedule.reconstruction(STEPS))
    out = styleid_inject(model, inv.x_T, inv.x_T, kv, StyleIDSettings(LAYERS, gamma, 1.0, start="content"), STEPS, content_q=q)
    assert torch.allclose(out, plain, atol=1e-5), (out - plain).abs().max()
    hot = styleid_inject(model, inv.x_T, inv.x_T, kv, StyleIDSettings(LAYERS, gamma, 1.5, start="content"), STEPS, content_q=q)
    assert (hot - plain).abs().max() > 1e-3  # τ does act


def test_style_equal_to_content_returns_the_reconstruction(model):
    content = _latents(1)
    inv, q = record_features(model, content, STEPS, LAYERS, ("q",), source="reconstruction")
    _, kv = record_features(model, content, STEPS, LAYERS, source="reconstruction")
    out = styleid_inject(model, inv.x_T, inv.x_T, kv, StyleIDSettings(LAYERS, 0.75, 1.0), STEPS, content_q=q)  # AdaIN on
    scale = inv.reconstruction.abs().max()  # AdaIN(x, x) = x up to rounding, which 6 steps amplify
    assert torch.allclose(out, inv.reconstruction, atol=1e-5 * scale)
    assert torch.allclose(adain(inv.x_T, inv.x_T), inv.x_T, atol=1e-6)
    hot = styleid_inject(model, inv.x_T, inv.x_T, kv, StyleIDSettings(LAYERS, 0.75, 1.5), STEPS, content_q=q)
    assert (hot - inv.reconstruction).abs().max() > 1e-3 * scale


def test_adain_gives_the_style_statistics():
    c, s = _latents(1), _latents(2) * 0.5 + 0.3
    out = adain(c, s)
    assert torch.allclose(out.mean((2, 3)), s.mean((2, 3)), atol=1e-5)
    assert torch.allclose(out.std((2, 3)), s.std((2, 3)), atol=1e-5)
    assert torch.allclose((out - out.mean((2, 3), keepdim=True)) / out.std((2, 3), keepdim=True),
                          (c - c.mean((2, 3), keepdim=True)) / c.std((2, 3), keepdim=True), atol=1e-5)


def test_store_keeps_only_the_asked_layers_and_steps_with_the_documented_bytes(model):
    window = (600, 200)
    _, kv = record_features(model, _latents(2), STEPS, ("3.0",), window=window, storage=HStorage("float16"))
    assert kv.layers == ("3.0",) and set(kv.tensors) == {"3.0.k", "3.0.v"}
    assert kv.timesteps == tuple(t for t in kv.grid if 200 <= t <= 600) and len(kv.timesteps) < len(kv.grid)
    attn = decoder_self_attention(model.unet)["3.0"]
    tokens, dim = 8 * 8, attn.to_k.out_features  # the last decoder level runs at the latent's 8×8
    assert kv.dtype == "float16"
    assert kv.nbytes == bytes_per_image({"3.0": (tokens, dim)}, 2, len(kv.timesteps), 2)


def test_bad_inputs_are_refused_clearly(model, content_style):
    c_inv, c_q, s_inv, s_kv = content_style
    settings = StyleIDSettings(LAYERS, 0.75, 1.5)
    with pytest.raises(ValueError, match="recorded on a 6-step grid"):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, 8, content_q=c_q)
    with pytest.raises(ValueError, match="different weights"):
        styleid_inject(_model(seed=5), c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q)
    _, only_one = record_features(model, _latents(2), STEPS, ("3.0",))
    with pytest.raises(ValueError, match="hold layers 3.0, not 2.0"):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, only_one, settings, STEPS, content_q=c_q)
    with pytest.raises(ValueError, match="no decoder self-attention layer 7.0"):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, StyleIDSettings(("7.0",)), STEPS, content_q=c_q)
    with pytest.raises(ValueError, match="needs the content's Q"):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS)
    with pytest.raises(ValueError, match="rank 5"):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q, content_h=c_inv.trajectory,
                gamma_h=0.5, mask=torch.ones(1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="τ"):
        StyleIDSettings(LAYERS, 0.75, 0.0)


def test_processors_are_restored_after_success_error_and_cancel(model, content_style):
    c_inv, c_q, s_inv, s_kv = content_style
    before = {name: m.processor for name, m in decoder_self_attention(model.unet).items()}
    settings = StyleIDSettings(LAYERS, 0.75, 1.5)
    styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q)
    with pytest.raises(Cancelled):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q, should_stop=iter([0, 0, 1]).__next__)
    with pytest.raises(ValueError):
        styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q.__class__(
            c_q.grid, c_q.timesteps, c_q.layers, c_q.kinds, {k: v[:, :, :7] for k, v in c_q.tensors.items()}))
    assert {name: m.processor for name, m in decoder_self_attention(model.unet).items()} == before


def test_combined_mode_differs_from_each_method_alone(model, content_style):
    c_inv, c_q, s_inv, s_kv = content_style
    settings = StyleIDSettings(LAYERS, 0.75, 1.5, start="style")
    alone = styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q)
    combined = styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q,
                       content_h=c_inv.trajectory, gamma_h=0.6, t_edit=200)
    from hspace_core import inject
    fusion = inject(model, s_inv.x_T, c_inv.trajectory, 0.6, EditSchedule(STEPS, t_edit=200))
    assert (combined - alone).abs().mean() > 1e-3 and (combined - fusion).abs().mean() > 1e-3
    masked = styleid_inject(model, c_inv.x_T, s_inv.x_T, s_kv, settings, STEPS, content_q=c_q, content_h=c_inv.trajectory,
                     gamma_h=0.6, t_edit=200, mask=torch.zeros(8, 8))
    assert torch.allclose(masked, alone, atol=1e-5)  # an empty mask injects no h
