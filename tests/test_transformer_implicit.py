"""Asyrp's implicit f_t(h_t, t) on a tiny Flux and a tiny SD3 (ComfyUI's own classes, random weights, in-process):
f_t's time embedding is the transformer's own (Flux's ``time_in``, SD3's ``t_embedder``, of σ_t·1000 at table entry
t), Train Asyrp Direction's implicit form lowers its CLIP loss through the DiT, the file keeps the site, fingerprint
and time table, and H-Space Asyrp Edit with it is ComfyUI's euler with a zero f_t and moves the image when trained."""
import pytest
import torch

from test_transformer_directions import SIZE, STEPS, _check_asyrp_edit, _euler, _models, _train, _x_T


def _comfy_time_embedding(model, t: int) -> torch.Tensor:
    """ComfyUI's own embedding of table entry t's σ, as the transformer's forward computes it (written out)."""
    from comfy.ldm.flux.layers import timestep_embedding

    dm = model.get_model_object("diffusion_model")
    ms = model.get_model_object("model_sampling")
    time = ms.timestep(ms.sigmas[t:t + 1].float())
    if hasattr(dm, "time_in"):  # Flux: time_in(timestep_embedding(σ, 256)), time_factor 1000 inside
        return dm.time_in(timestep_embedding(time, 256).float())
    return dm.t_embedder(time, dtype=torch.float32)  # SD3: σ·multiplier


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_time_embedding_is_the_transformers_own(pack, request, family):
    """The frozen copy f_t carries equals the transformer's own embedding of σ_t at every probed entry of its σ
    table (1e-5), and an entry off the table is refused by name."""
    from hspace_core import ImplicitDirectionNet
    from hspace_pack.nodes.comfy.model import time_embedding_of

    model = _models(request)[family][0]
    emb = time_embedding_of(model)
    table = model.get_model_object("model_sampling").sigmas.numel()
    assert emb.config["table_size"] == table and table == (10000 if family == "flux" else 1000)
    with torch.no_grad():
        for t in (0, table // 3, table - 1):
            want = _comfy_time_embedding(model, t)
            got = emb(torch.tensor([t]))
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (t, (got - want).abs().max())
        assert not torch.allclose(emb(torch.tensor([0])), emb(torch.tensor([table - 1])), atol=1e-3)
        net = ImplicitDirectionNet(emb.linear_2.out_features, emb)
        with pytest.raises(ValueError, match=f"{table}-entry σ table; timestep {table} is outside it"):
            net(torch.zeros(1, net.channels, 2, 2), table)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_implicit_training_on_a_transformer(pack, request, monkeypatch, tmp_path, family):
    """Train Asyrp Direction (form implicit) through the DiT: more epochs lower the CLIP loss; the saved file keeps
    the site, fingerprint and the transformer's time table and loads back to the same f_t; H-Space Asyrp Edit with
    an f_t of zero output (epochs 0) at strength 1 is the edit by a zero Δh bit for bit (euler, up to the rounding
    of euler on a 2-row batch: measured 4.3e-6 on the tiny Flux, as much as ComfyUI's own), and with the trained f_t
    is euler at strength 0 and moves the latent at strength 1; H-Space Shift with the zero f_t is the plain sampler
    bit for bit and with the trained one moves the image."""
    from hspace_core import Direction
    from hspace_pack.nodes.editing import AsyrpEdit

    model, cond, cfg = _models(request)[family]
    site = "double.1.attn" if family == "flux" else "joint.1.attn"
    one, _, loss_one = _train(model, cond, cfg, monkeypatch, form="implicit", epochs=1)
    four, _, loss_four = _train(model, cond, cfg, monkeypatch, form="implicit", epochs=4)
    zero = _train(model, cond, cfg, monkeypatch, form="implicit", epochs=0)[0]
    # loss_four/loss_one measured 0.64 (Flux) / 0.83 (SD3) / 0.65 (bf16 Flux, below) on the tiny models;
    # 0.63 / 0.75 / 0.62 before the flow inversion took its first step from the clean input (steps_from_clean)
    assert loss_four < 0.9 * loss_one, (loss_one, loss_four)
    assert four.form == "implicit" and four.site == site and four.h_shape[-2:] == (SIZE // 2, SIZE // 2)
    assert torch.count_nonzero(zero.fn.conv2.weight) == 0 and torch.count_nonzero(four.fn.conv2.weight) > 0
    four.save(str(tmp_path / "f.safetensors"))
    back = Direction.load(str(tmp_path / "f.safetensors"))
    assert back.site == site and back.fingerprint == four.fingerprint and back.form == "implicit"
    assert torch.equal(back.fn.time_embedding.time_input, four.fn.time_embedding.time_input)
    h = torch.randn(2, *four.h_shape, generator=torch.Generator().manual_seed(3))
    t = model.get_model_object("model_sampling").sigmas.numel() // 2
    assert torch.equal(back.at(h, t), four.at(h, t)) and back.at(h, t).abs().max() > 0
    x_T = _x_T(1)
    nothing = Direction("global", torch.zeros(four.h_shape), fingerprint=four.fingerprint, site=site)
    with torch.inference_mode():
        still, flat = (AsyrpEdit.execute(model, x_T, d, 1.0, STEPS, 400, 0, cfg, "cond", "", None, False, cond(0),
                                         cond(1) if cfg != 1.0 else None, "percent", 0.0, 0.6).result[0]["samples"]
                       for d in (zero, nothing))
        plain = _euler(model, x_T, cond, cfg)
        pair = _euler(model, {"samples": x_T["samples"].repeat(2, 1, 1, 1)}, cond, cfg)[:1]
    # the edited step's rows run as a larger batch than euler's: the rounding of ComfyUI's own euler on 2 rows
    assert torch.equal(still, flat) and (still - plain).abs().max() <= 2 * (pair - plain).abs().max()
    _check_asyrp_edit(model, cond, cfg, back, 1.0)
    # H-Space Shift: the zero f_t leaves the plain sampler bit for bit (its rows run as they are), the trained one
    # moves the image, and the MODEL given keeps no patch
    import hspace_pack.nodes.samplers as nodes
    from test_transformers import euler, sample, sigmas_of

    sigmas = sigmas_of(model, STEPS)
    with torch.inference_mode():
        plain = sample(model, euler(), sigmas, cond, cfg)
        shifted = [sample(nodes.HShiftPatch.execute(model, d, 1.0, 0.0, 0.6).result[0], euler(), sigmas, cond, cfg)
                   for d in (zero, back)]
    assert torch.equal(shifted[0], plain) and (shifted[1] - plain).abs().mean() > 0.01 * plain.abs().mean()
    assert "dit" not in model.model_options.get("transformer_options", {}).get("patches_replace", {})


def test_implicit_training_in_bfloat16_on_flux(pack, monkeypatch):
    """Flux's native dtype: the implicit f_t trains on the tiny Flux built in bfloat16 (finite weights, falling
    loss) and its time embedding stays the float32 copy."""
    from harness.tiny_dit import flux_conditioning, tiny_flux

    model = tiny_flux(dtype=torch.bfloat16)
    one, _, loss_one = _train(model, flux_conditioning, 1.0, monkeypatch, form="implicit", epochs=1)
    four, _, loss_four = _train(model, flux_conditioning, 1.0, monkeypatch, form="implicit", epochs=4)
    assert all(torch.isfinite(v).all() for v in four.fn.tensors().values())
    assert four.fn.time_embedding.linear_1.weight.dtype == torch.float32
    assert loss_four < 0.8 * loss_one, (loss_one, loss_four)  # measured 0.65 (0.62 before; see above)
