"""StyleID on diffusion transformers (issue 38 item 4): the image tokens' K/V injection, query preservation and
temperature on tiny Flux and SD3 built from ComfyUI's own classes (harness/tiny_dit.py), in-process.

- the injected block's attention against written-out joint attention (1e-5);
- the generation with the image's own features (recorded along its reconstruction, γ = 0.5, τ = 1, no AdaIN) and the
  generation with no step in the window are ComfyUI's `euler` on the same sigmas bit for bit; nothing leaks;
- another image's K/V change the image; the refusals name what to change."""
import math

import pytest
import torch

from harness.tiny_dit import flux_conditioning, sd3_conditioning, tiny_flux, tiny_sd3
from hspace_core.attention_store import AttentionFeatures
from hspace_core.flow_styleid import STABLE_FLOW_VITAL, flow_styleid, injection_patch, record_flow_features
from hspace_core.styleid import StyleIDSettings

SIZE = 16  # latent 16×16 → an 8×8 patch grid
STEPS = 5


@pytest.fixture(scope="module")
def models(pack):
    return {"flux": (tiny_flux(), flux_conditioning), "sd3": (tiny_sd3(), sd3_conditioning),
            "flux-bf16": (tiny_flux(dtype=torch.bfloat16), flux_conditioning)}  # Flux's native dtype


@pytest.fixture(scope="module")
def da(pack):
    from harness.inprocess import node_module

    return node_module("nodes.comfy.dit_attention")


def latent(seed):
    return torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def run(da, model, cond, body, layers):
    sigmas, timesteps = da.flow_grid(model, STEPS)
    return da.run_on_transformer(model, torch.zeros(1, 16, SIZE, SIZE),
                                 lambda denoise, x: body(da.sigma_denoise(denoise, sigmas, timesteps), sigmas,
                                                         timesteps),
                                 positive=cond(0), sigmas=sigmas, layers=layers), sigmas, timesteps


def euler_from(model, cond, x_T, sigmas):
    """ComfyUI's own euler from the model-space x_T (σ_max = 1: noise_scaling gives x_T itself), as its LATENT."""
    import comfy.sample
    import comfy.samplers

    out = comfy.sample.sample_custom(model, x_T, 1.0, comfy.samplers.sampler_object("euler"), sigmas, cond(0),
                                     cond(0), torch.zeros_like(x_T), disable_pbar=True, seed=0)
    return out


def store(layers, grid, kinds, rows, tokens, dim, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{layer}.{kind}": torch.randn(len(grid), rows, tokens, dim, generator=g) for layer in layers
               for kind in kinds}
    return AttentionFeatures(grid, grid, layers, kinds, tensors)


# --- the injection against written-out attention ------------------------------------------------------------------

def _softmax_attention(q, k, v):
    """softmax(Q·Kᵀ/√d)·V per head, (B, heads, L, d)."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("family,layer", [("flux", "double.1"), ("flux", "single.0"), ("sd3", "joint.0")])
def test_injection_against_written_out_attention(models, da, family, layer):
    """With style K_s, V_s and content Q_c given, the block's image-token attention output (the input of its output
    projection) is softmax(q̃·[k_txt; norm_k(K_s)]ᵀ/√d)·[v_txt; V_s] with q̃ = τ·(γ·Q_c + (1 − γ)·norm_q(q)),
    RoPE on Flux, the text's q/k/v its own (1e-5)."""
    from comfy.ldm.flux.math import apply_rope

    model, cond = models[family]
    dm = model.get_model_object("diffusion_model")
    index = int(layer.split(".")[1])
    block = getattr(dm, f"{layer.split('.')[0]}_blocks")[index]
    heads = 2
    dim, tokens, gamma, tau = dm.hidden_size, (SIZE // 2) ** 2, 0.75, 1.5
    sigmas, timesteps = da.flow_grid(model, STEPS)
    grid = tuple(timesteps)
    style = store((layer,), grid, ("k", "v"), 1, tokens, dim, 1)
    content = store((layer,), grid, ("q",), 1, tokens, dim, 2)
    settings = StyleIDSettings((layer,), gamma, tau, (max(grid), 0))
    seen = {}
    take = lambda name: (lambda m, i, out: seen.__setitem__(name, out))  # noqa: E731
    if family == "flux" and layer.startswith("double"):
        modules = {"q": block.img_attn.norm, "txt_qkv": block.txt_attn.qkv, "txt_norm": block.txt_attn.norm}
        out_module = block.img_attn.proj
    elif family == "flux":
        modules = {"q": block.norm, "qkv": block.linear1}
        out_module = block.linear2
    else:
        modules = {"q": block.x_block.attn.ln_q, "txt_qkv": block.context_block.attn.qkv}
        out_module = block.x_block.attn.proj
    hooks = [m.register_forward_hook(take(name)) for name, m in modules.items()]  # before ours: the original values
    hooks.append(out_module.register_forward_pre_hook(lambda m, i: seen.__setitem__("out", i[0])))
    hooks.append(block.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("pe", kw.get("pe")),
                                                 with_kwargs=True))
    t = grid[1]
    try:
        run(da, model, cond, lambda denoise, s, ts: denoise(latent(0), 1, injection_patch(style, content, settings, t)),
            (layer,))
    finally:
        for hook in hooks:
            hook.remove()
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731  (B, L, D) → heads
    q_c, k_s, v_s = (split(f.at(t, layer, kind)) for f, kind in ((content, "q"), (style, "k"), (style, "v")))
    if family == "flux" and layer.startswith("double"):
        q_own = seen["q"][0]
        k_img, v_img = block.img_attn.norm.key_norm(k_s), v_s
        txt_q, txt_k = seen["txt_norm"]
        txt_v = split(seen["txt_qkv"][..., 2 * dim:])
    elif family == "flux":
        txt = seen["qkv"].shape[1] - tokens
        q_all, k_all = seen["q"]
        q_own = q_all[:, :, txt:]
        k_img, v_img = block.norm.key_norm(k_s).to(v_s), v_s
        txt_q, txt_k = q_all[:, :, :txt], k_all[:, :, :txt]
        txt_v = split(seen["qkv"][:, :txt, 2 * dim:3 * dim])
    else:
        q_own = seen["q"].transpose(1, 2)
        k_img, v_img = k_s, v_s  # tiny SD3: no qk_norm (ln_k is the identity)
        txt_q, txt_k, txt_v = (split(seen["txt_qkv"][..., j * dim:(j + 1) * dim]) for j in range(3))
    q_img = tau * (gamma * q_c + (1 - gamma) * q_own)
    q, k, v = (torch.cat([a, b], dim=2) for a, b in ((txt_q, q_img), (txt_k, k_img), (txt_v, v_img)))
    if family == "flux":
        q, k = apply_rope(q, k, seen["pe"])
    written = _softmax_attention(q, k, v)[:, :, -tokens:].transpose(1, 2).reshape(1, tokens, dim)
    got = seen["out"][:, -tokens:, :dim] if family == "flux" and layer.startswith("single") else seen["out"]
    assert got.shape == written.shape
    assert torch.allclose(got, written, atol=1e-5, rtol=1e-5), (got - written).abs().max()


# --- the process --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["flux", "sd3", "flux-bf16"])
def test_own_features_and_an_empty_window_are_euler_bit_for_bit(models, da, family):
    """K, V and Q recorded along the reconstruction from x_T and injected back (γ = 0.5, τ = 1, start = content)
    reproduce ComfyUI's euler from that x_T bit for bit, as does a window holding no step; the MODEL is unpatched
    after (euler before and after equal)."""
    model, cond = models[family]
    layers = da.attention_layers(model.get_model_object("diffusion_model"))
    x0 = latent(0)

    def body(denoise, sigmas, timesteps):
        x_T, recon, feats, _ = record_flow_features(denoise, x0, sigmas, timesteps, layers, ("q", "k", "v"),
                                                 window=(max(timesteps), 0), source="reconstruction")
        own = flow_styleid(denoise, x_T, x_T, feats, StyleIDSettings(layers, 0.5, 1.0, (max(timesteps), 0),
                                                                     "content"), sigmas, timesteps, content_q=feats)
        none = flow_styleid(denoise, x_T, latent(5), feats, StyleIDSettings(layers, 0.5, 1.5, (0, 0), "content"),
                            sigmas, timesteps, content_q=feats)
        return x_T, recon, own, none

    sigmas, _ = da.flow_grid(model, STEPS)
    (x_T, recon, own, none), sigmas, _ = run(da, model, cond, body, layers)
    before = euler_from(model, cond, x_T, sigmas)
    for x in (recon, own, none):
        assert torch.equal(model.model.process_latent_out(x), before)
    assert torch.equal(euler_from(model, cond, x_T, sigmas), before)
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")


@pytest.mark.parametrize("family", ["flux", "sd3", "flux-bf16"])
def test_the_style_changes_the_image(models, da, family):
    """Another image's K/V (recorded along its inversion) change the generation from the content's x_T (bfloat16
    too, finite); with γ = 1 the content's Q keeps it closer to the content's reconstruction than γ = 0."""
    model, cond = models[family]
    layers = da.attention_layers(model.get_model_object("diffusion_model"))

    def body(denoise, sigmas, timesteps):
        window = (max(timesteps), 0)
        c_T, c_rec, c_q, _ = record_flow_features(denoise, latent(0), sigmas, timesteps, layers, ("q",), window=window)
        s_T, _, s_kv, _ = record_flow_features(denoise, 3 * latent(1), sigmas, timesteps, layers, ("k", "v"),
                                            window=window)
        out = {g: flow_styleid(denoise, c_T, s_T, s_kv, StyleIDSettings(layers, g, 1.0, window, "content"), sigmas,
                               timesteps, content_q=c_q) for g in (0.0, 1.0)}
        return c_rec, out

    (c_rec, out), _, _ = run(da, model, cond, body, layers)
    scale = c_rec.std()
    change = {g: float((x - c_rec).std() / scale) for g, x in out.items()}
    assert all(torch.isfinite(x).all() for x in out.values())
    assert change[0.0] > 0.05, change
    if family != "flux-bf16":  # the tiny bf16 Flux's query moves its output below bfloat16's resolution here
        assert change[1.0] < change[0.0], change


def test_stable_flow_preset_and_refusals(models, da):
    flux_dm = models["flux"][0].get_model_object("diffusion_model")
    sd3_dm = models["sd3"][0].get_model_object("diffusion_model")
    assert STABLE_FLOW_VITAL == ("double.0", "double.1", "double.17", "double.18", "single.6", "single.9",
                                 "single.34", "single.35", "single.37")
    # the tiny Flux has 2 + 2 blocks: the default is every block, the Stable Flow preset is refused by name
    assert da.transformer_layers(flux_dm, "StyleID SD1.x", "", "N") == ("double.0", "double.1", "single.0", "single.1")
    with pytest.raises(ValueError, match="'double.17', which is not a block .* double.0 … single.1"):
        da.transformer_layers(flux_dm, "Stable Flow vital (Flux.1)", "", "N")
    with pytest.raises(ValueError, match="names U-Net decoder layers"):
        da.transformer_layers(sd3_dm, "SDXL", "", "N")
    assert da.transformer_layers(sd3_dm, "custom", "joint.1, joint.0", "N") == ("joint.1", "joint.0")
    for bad in ("joint.0.attn", "double.0", "7"):
        with pytest.raises(ValueError, match="custom_layers names"):
            da.transformer_layers(sd3_dm, "custom", bad, "N")
    model, cond = models["sd3"]
    with pytest.raises(ValueError, match="needs text conditioning"):
        da.run_on_transformer(model, torch.zeros(1, 16, SIZE, SIZE), lambda d, x: x, positive=None,
                              sigmas=da.flow_grid(model, 2)[0], layers=("joint.0",))


def test_cancel_lands_within_one_model_call(models, da):
    """ComfyUI's Cancel (the interrupt flag) stops the StyleID run at its next model call, with the hooks off."""
    import comfy.model_management

    model, cond = models["flux"]
    dm = model.get_model_object("diffusion_model")
    layers = da.attention_layers(dm)
    calls = []

    def body(denoise, sigmas, timesteps):
        def counting(x, i, patch):
            calls.append(i)
            out = denoise(x, i, patch)
            comfy.model_management.interrupt_current_processing(True)  # Cancel pressed during the first call
            return out
        return record_flow_features(counting, latent(0), sigmas, timesteps, layers, ("k", "v"),
                                    window=(max(timesteps), 0))

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run(da, model, cond, body, layers)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2  # the second call found the flag before running the model
    assert all(not m._forward_hooks for block in (*dm.double_blocks, *dm.single_blocks) for m in block.modules())


# --- the combined mode: StyleID with h content injection (InjectFusion's Slerp at the site) ----------------------

def combined(da, model, cond, site, gamma_hs, *, layers=None, h_end=0.6, observe=None, mask=None):
    """The content (latent 0) and the style (3·latent 1) recorded on the StyleID grid (the content's h at ``site``
    along its inversion), then StyleID (γ 0, τ 1.5, start = style) with the content's h injected by γ_h for the steps
    down to ``h_end`` percent; ``observe(h_content)`` runs just before the generations.  Returns
    (content reconstruction, {γ_h: generation}, the content trajectory); γ_h None is plain StyleID (no content_h)."""
    from hspace_core.sampling import SigmaWindow
    from hspace_core.trajectory import HStorage

    dm = model.get_model_object("diffusion_model")
    layers = layers or da.attention_layers(dm)
    sigmas, timesteps = da.flow_grid(model, STEPS)
    h_window = SigmaWindow(float("inf"), float(model.get_model_object("model_sampling").percent_to_sigma(h_end)),
                           f"percent 0.00–{h_end:.2f}")

    def body(denoise, x):
        s = sigmas.to(x.device)
        d = da.sigma_denoise(denoise, s, timesteps)
        window = (max(timesteps), 0)
        c_T, c_rec, _, c_h = record_flow_features(d, latent(0).to(x), s, timesteps, layers, ("q",), window=window,
                                                  h_storage=HStorage(), site=site)
        s_T, _, s_kv, _ = record_flow_features(d, 3 * latent(1).to(x), s, timesteps, layers, ("k", "v"),
                                               window=window)
        if observe is not None:
            observe(c_h)
        settings = StyleIDSettings(layers, 0.0, 1.5, window, "style")
        out = {gh: flow_styleid(d, c_T, s_T, s_kv, settings, s, timesteps,
                                content_h=None if gh is None else c_h, gamma_h=0.0 if gh is None else gh,
                                h_window=h_window, site=site, mask=None if gh is None else mask)
               for gh in gamma_hs}
        return c_rec, out, c_h

    return da.run_on_transformer(model, torch.zeros(1, 16, SIZE, SIZE), body, positive=cond(0), sigmas=sigmas,
                                 layers=layers, site=site)


@pytest.mark.parametrize("family", ["flux", "sd3", "flux-bf16"])
def test_combined_mode_gamma_h_zero_is_plain_styleid_and_gamma_h_moves_toward_the_content(models, da, family):
    """At the transformer's default site (the attention output of the middle joint block): γ_h = 0 with the
    content's h connected is plain transformer StyleID bit for bit (bfloat16 too), and through the h edit (a γ_h
    schedule of zeros) to the one-call batch's round-off; γ_h > 0 changes the generation, more for a larger γ_h
    (finite in bfloat16); the content trajectory lies on StyleID's grid at that site.  That the change goes toward
    the content's image needs real weights: on these random ones the image does not come closer to the content's
    reconstruction (h moves toward the content's at the site: the Slerp test below)."""
    model, cond = models[family]
    dm = model.get_model_object("diffusion_model")
    site = da.dit.default_site(dm)
    zero = lambda t: 0.0  # noqa: E731  (γ_h 0 as a schedule: through the h edit, not skipped as γ_h = 0 is)
    c_rec, out, c_h = combined(da, model, cond, site, (None, 0.0, zero, 0.3, 0.8))
    _, timesteps = da.flow_grid(model, STEPS)
    assert c_h.site == site and c_h.timesteps == tuple(timesteps) and c_h.source == "inversion"
    assert torch.equal(out[0.0], out[None])
    # the edit path at γ_h 0: the edited row is the plain one, computed in a batch of two ([x; x], one call); CPU
    # kernels are not batch-invariant, so it may differ in the last bits (measured: 9.5e-7 float32, of values ~5)
    scale = float(out[None].float().abs().max())
    tol = 1e-5 if family != "flux-bf16" else 2e-2
    assert float((out[zero] - out[None]).float().abs().max()) <= tol * scale
    assert torch.isfinite(out[0.8]).all()
    change = float((out[0.8] - out[None]).float().std() / out[None].float().std())
    assert change > 0.01, change
    change_03 = float((out[0.3] - out[None]).float().std() / out[None].float().std())
    assert change_03 < change, (change_03, change)  # more γ_h, more change


@pytest.mark.parametrize("family,site,after",
                         [("flux", "double.0", "double_blocks"), ("sd3", "joint.0", "joint_blocks")])
def test_combined_mode_slerp_at_the_site_against_written_out_formula(models, da, family, site, after):
    """In the first step's edited call ([x; x]: plain row, edited row), the next block's image tokens are h (plain
    row) and h̃ = sin((1 − γ)θ)/sin θ·h + sin(γθ)/sin θ·h_c·‖h‖/‖h_c‖, θ = arccos(⟨h, h_c⟩/(‖h‖·‖h_c‖)), h_c the
    content's h at that timestep from its trajectory (edited row; 1e-5)."""
    model, cond = models[family]
    dm = model.get_model_object("diffusion_model")
    nxt = getattr(dm, after)[1]
    seen, gamma_h = [], 0.6

    def grab(module, args, kwargs):
        img = kwargs["img"] if "img" in kwargs else args[1]
        if img.shape[0] == 2 and not seen:
            seen.append(img.detach().clone())

    content = {}
    hook = nxt.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        combined(da, model, cond, site, (gamma_h,), layers=("double.1",) if family == "flux" else ("joint.1",),
                 observe=lambda c_h: content.setdefault("h", c_h))
    finally:
        hook.remove()
    _, timesteps = da.flow_grid(model, STEPS)
    h_c = content["h"].at(timesteps[0]).double().flatten(1)  # (1, C·H·W), spatial order
    plain, edited = seen[0][:1], seen[0][1:]
    grid = (SIZE // 2, SIZE // 2)
    from hspace_core.sites import tokens_to_spatial

    h = tokens_to_spatial(plain, grid).double().flatten(1)
    theta = torch.arccos((h * h_c).sum() / (h.norm() * h_c.norm()))
    written = (torch.sin((1 - gamma_h) * theta) * h + torch.sin(gamma_h * theta) * h_c * h.norm() / h_c.norm()) \
        / torch.sin(theta)
    got = tokens_to_spatial(edited, grid).double().flatten(1)
    assert float(theta) > 0.1  # the content's h is not the generation's: the Slerp moves it
    assert torch.allclose(got, written, atol=1e-5, rtol=1e-5), (got - written).abs().max()


def test_combined_mode_mask_limits_the_mix_to_its_region(models, da):
    """InjectFusion's local mixing on a transformer: with a mask over the left half of the image, the edited row's
    h at the site (Flux double.0, read at the next block) is the plain row's in the right half and mixed in the left."""
    model, cond = models["flux"]
    nxt = model.get_model_object("diffusion_model").double_blocks[1]
    seen = []
    hook = nxt.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["img"].detach().clone())
                                         if kw["img"].shape[0] == 2 and not seen else None, with_kwargs=True)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, : SIZE // 2] = 1
    try:
        combined(da, model, cond, "double.0", (0.8,), layers=("double.1",), mask=mask)
    finally:
        hook.remove()
    from hspace_core.sites import tokens_to_spatial

    plain, edited = (tokens_to_spatial(rows, (SIZE // 2, SIZE // 2)) for rows in seen[0].chunk(2))
    half = SIZE // 4
    assert torch.equal(edited[..., half:], plain[..., half:])
    assert float((edited[..., :half] - plain[..., :half]).abs().mean()) > 0.1 * float(plain.abs().mean())


def test_combined_mode_refusals(models, da):
    """A content trajectory from another site, grid or model, and an h window holding no step, are refused by name."""
    import dataclasses

    model, cond = models["flux"]
    dm = model.get_model_object("diffusion_model")
    site = da.dit.default_site(dm)
    keep = {}
    combined(da, model, cond, site, (), observe=lambda c_h: keep.setdefault("h", c_h))
    c_h = keep["h"]
    sigmas, timesteps = da.flow_grid(model, STEPS)
    layers = da.attention_layers(dm)
    style = store(layers, tuple(timesteps), ("k", "v"), 1, (SIZE // 2) ** 2, dm.hidden_size, 1)
    settings = StyleIDSettings(layers, 0.0, 1.5, (max(timesteps), 0), "style")
    from hspace_core.sampling import SigmaWindow

    def inject(trajectory, site=site, window=SigmaWindow(float("inf"), 0.5, "percent 0.00–0.50"), fingerprint=""):
        never = lambda *a: pytest.fail("refused before any model call")  # noqa: E731
        flow_styleid(never, latent(0), latent(1), style, settings, sigmas, timesteps, content_h=trajectory,
                     gamma_h=0.5, h_window=window, site=site, fingerprint=fingerprint)

    with pytest.raises(ValueError, match=f"read at site '{site}', but h is read at site 'double.0'"):
        inject(c_h, site="double.0")
    with pytest.raises(ValueError, match="captured at 3 steps"):
        inject(c_h.only_at(c_h.timesteps[::2]))  # as if recorded with fewer steps
    with pytest.raises(ValueError, match="content h trajectory"):
        inject(dataclasses.replace(c_h, fingerprint="other/model"), fingerprint="this/model")
    with pytest.raises(ValueError, match="No step of the 5-step schedule lies in the edit window percent"):
        inject(c_h, window=SigmaWindow(0.001, 0.0, "percent 0.99–1.00"))
    with pytest.raises(ValueError, match="not a block of this Flux"):
        da.dit.check_block_site(dm, "joint.1.attn")
