"""openai guided-diffusion / iDDPM UNetModel checkpoints → diffusers UNet2DModel, against a reference forward of the
original layout (tests/guided_reference.py); what the weights do not say; bad files; the pixel loader node."""
import io
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddim_reference import Model
from guided_reference import UNetModel
from hspace_core import DiffusersUNet, invert, schedule_from_diffusers_config
from hspace_core.checkpoints import (candidate_splits, layout_of, load_checkpoint, rank_head_splits, read_checkpoint,
                                     unet_from_state_dict)
from hspace_core.checkpoints.guided_diffusion import GuidedLayout, attention_split, guided_layout, known_model, split_qkv

TINY = dict(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(2,),
            channel_mult=(1, 2))
VARIANTS = {  # name: (UNetModel arguments, what the loader must be told about the heads)
    "plain": ({}, {"num_heads": 1}),
    "learned_sigma": ({"use_scale_shift_norm": True, "out_channels": 6}, {"num_heads": 1}),
    "class_conditional": ({"num_classes": 5, "use_scale_shift_norm": True}, {"num_heads": 1}),
    "resblock_updown": ({"resblock_updown": True, "use_scale_shift_norm": True, "channel_mult": (1, 2, 2),
                         "attention_resolutions": (1, 4)}, {"num_heads": 1}),
    "new_attention_order": ({"num_heads": 4, "use_new_attention_order": True},
                            {"num_heads": 4, "new_attention_order": True}),
    "legacy_order_num_heads": ({"num_heads": 4, "channel_mult": (1, 2, 2), "attention_resolutions": (2, 4)},
                               {"num_heads": 4, "new_attention_order": False}),
    "num_head_channels": ({"num_head_channels": 16, "channel_mult": (1, 2, 2), "attention_resolutions": (2, 4),
                           "num_res_blocks": 2, "resblock_updown": True, "use_scale_shift_norm": True},
                          {"num_head_channels": 16, "new_attention_order": False}),
    "half_width_first_level": ({"model_channels": 64, "channel_mult": (0.5, 1, 2), "num_heads": 2,
                                "attention_resolutions": (1, 4)}, {"num_heads": 2, "new_attention_order": False}),
}


def _reference(seed=0, **kw):
    torch.manual_seed(seed)
    model = UNetModel(**{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():  # off the init (zero convs, unit norms) so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(model, batch=2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    y = torch.tensor([1, 4])[:batch] if model.num_classes else None
    return x, y


@torch.no_grad()
@pytest.mark.parametrize("name", list(VARIANTS))
def test_unet_model_converts_exactly(name):
    kw, heads = VARIANTS[name]
    reference = _reference(1, **kw)
    assert layout_of(reference.state_dict()) == "guided_diffusion"
    unet, scheduler = unet_from_state_dict(reference.state_dict(), 16, **heads)
    x, y = _inputs(reference)
    for t in (torch.tensor([0, 999]), torch.tensor([250, 600])):
        assert torch.allclose(unet(x, t, class_labels=y).sample, reference(x, t, y), atol=1e-5)
    assert scheduler["variance_type"] == ("learned_range" if name == "learned_sigma" else "fixed_small")


@torch.no_grad()
def test_the_head_split_matters():
    """Both head orders and the head count change the output: the converter is not right by accident."""
    reference = _reference(**VARIANTS["new_attention_order"][0])
    x, _ = _inputs(reference)
    t = torch.tensor([500, 500])
    for wrong in ({"num_heads": 4, "new_attention_order": False}, {"num_heads": 2, "new_attention_order": True}):
        unet, _ = unet_from_state_dict(reference.state_dict(), 16, **wrong)
        assert (unet(x, t).sample - reference(x, t)).abs().max() > 1e-3
    w = torch.arange(12.0)[:, None]  # legacy order: per head [q_h | k_h | v_h]
    q, k, v = split_qkv(w, heads=2, new_order=False)
    assert q.flatten().tolist() == [0, 1, 6, 7] and v.flatten().tolist() == [4, 5, 10, 11]


@torch.no_grad()
def test_h_and_eps_through_the_adapter():
    """h is the reference's middle-block output; ε is the first half of the learned-σ output."""
    reference = _reference(**VARIANTS["learned_sigma"][0])
    unet, scheduler = unet_from_state_dict(reference.state_dict(), 16, num_heads=1)
    x, seen = torch.randn(1, 3, 16, 16), {}
    handle = reference.middle_block.register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    try:
        full = reference(x, torch.tensor([400]))
    finally:
        handle.remove()
    pred = DiffusersUNet(unet, schedule_from_diffusers_config(scheduler)).predict(x, 400)
    assert full.shape[1] == 6 and pred.eps.shape[1] == 3
    assert torch.allclose(pred.eps, full[:, :3], atol=1e-5)
    assert torch.allclose(pred.h, seen["h"], atol=1e-5)


@torch.no_grad()
def test_class_label_fixes_a_class_conditional_model():
    reference = _reference(**VARIANTS["class_conditional"][0])
    unet, _ = unet_from_state_dict(reference.state_dict(), 16, num_heads=1, class_label=3)
    assert unet.class_embedding is None
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    assert torch.allclose(unet(x, t).sample, reference(x, t, torch.tensor([3, 3])), atol=1e-5)
    with pytest.raises(ValueError, match=r"class_label must be in 0 … 4"):
        unet_from_state_dict(reference.state_dict(), num_heads=1, class_label=5)
    with pytest.raises(ValueError, match="class_label was given but this guided-diffusion model has no label_emb: it "
                                         "is unconditional; leave it unset"):
        unet_from_state_dict(_reference().state_dict(), num_heads=1, class_label=0)


def _layout(channels, mult, blocks, rates, updown=True):
    widths = tuple(int(m * channels) for m in mult)
    return GuidedLayout(3, 6, channels, widths, blocks, tuple(2 ** i in rates for i in range(len(mult))), updown, True,
                        None)


def test_the_published_models_are_recognised():
    p2 = _layout(128, (1, 1, 2, 2, 4, 4), 1, (16,))  # AFHQ-dog / METFACES (P2 weighting), Asyrp's AFHQ
    assert attention_split(p2).num_head_channels == 64 and known_model(p2).beta_schedule == "linear"
    imagenet64 = attention_split(_layout(192, (1, 2, 3, 4), 3, (2, 4, 8)))
    assert (imagenet64.num_head_channels, imagenet64.new_order) == (64, True)
    assert known_model(_layout(192, (1, 2, 3, 4), 3, (2, 4, 8))).beta_schedule == "cosine"
    assert attention_split(_layout(256, (1, 1, 2, 3, 4), 2, (4, 8, 16))).num_heads == 4
    assert attention_split(_layout(256, (0.5, 1, 1, 2, 2, 4, 4), 2, (16, 32, 64))).num_head_channels == 64


def test_what_the_weights_do_not_say_must_be_given():
    state = _reference(**VARIANTS["num_head_channels"][0]).state_dict()
    with pytest.raises(ValueError, match="is none of the published ones.*P2-weighting 256×256.*num_head_channels=64.*"
                                         "give num_heads or num_head_channels.*rank_head_splits\\(path\\) loads every "
                                         "split that fits"):
        unet_from_state_dict(state)
    with pytest.raises(ValueError, match="give new_attention_order"):
        unet_from_state_dict(state, num_head_channels=16)
    with pytest.raises(ValueError, match="not both"):
        unet_from_state_dict(state, num_heads=4, num_head_channels=16)
    with pytest.raises(ValueError, match="64 channels cannot be split into heads of 24"):
        unet_from_state_dict(state, num_head_channels=24, new_attention_order=False)
    with pytest.raises(ValueError, match="Unknown checkpoint setting.*num_head"):
        unet_from_state_dict(state, num_head=4)
    with pytest.raises(ValueError, match=r"beta_schedule \(keyword argument\) must be one of \"linear\", \"cosine\""):
        unet_from_state_dict(state, num_heads=1, beta_schedule="sigmoid")


def test_the_candidate_head_splits_are_the_distinct_ones_that_fit():
    layout = guided_layout(_reference(**VARIANTS["new_attention_order"][0]).state_dict())  # attention 64 wide
    found = [(split.heads(64), split.new_order) for split in candidate_splits(layout)]
    assert found == [(1, False), (2, False), (2, True), (4, False), (4, True), (8, False), (8, True)]
    wide = _layout(128, (1, 1, 2, 2, 4, 4), 1, (16,))  # P2: attention at 512 wide (and the 512-wide middle)
    assert {(s.heads(512), s.new_order) for s in candidate_splits(wide)} >= {(8, False), (8, True), (64, False)}
    assert all(512 // s.heads(512) >= 8 for s in candidate_splits(wide))


@torch.no_grad()
def test_rank_head_splits_measures_the_denoising_loss_of_every_candidate(tmp_path):
    reference = _reference(**VARIANTS["new_attention_order"][0])
    path = tmp_path / "unknown.pt"
    torch.save(reference.state_dict(), str(path))
    (tmp_path / "unknown.json").write_text(json.dumps({"num_heads": 2, "beta_schedule": "linear"}))  # split ignored
    ranked = rank_head_splits(str(path), 8, fractions=(0.5,))
    losses = [loss for _, loss in ranked]
    assert len(ranked) == 7 and losses == sorted(losses) and len(set(losses)) == 7  # every split is another network
    best, loss = ranked[0]
    model = load_checkpoint(str(path), 8, **best)  # the loss is the DDPM loss E‖ε̂ − ε‖² on the probes, as said
    from hspace_core.checkpoints.probes import structured_probes
    images, noise = structured_probes(8, 8), torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = model.schedule.alpha_bar(500)
    eps = model.predict(a**0.5 * images + (1 - a) ** 0.5 * noise, 500).eps
    assert abs(float(((eps - noise) ** 2).mean()) - loss) < 1e-6
    with pytest.raises(ValueError, match="is not a guided-diffusion UNetModel; only that layout has a head split"):
        from ddim_reference import Model
        torch.save(Model(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()).state_dict(),
                   str(tmp_path / "ddim.pt"))
        rank_head_splits(str(tmp_path / "ddim.pt"))


def test_mismatched_or_foreign_weights_are_refused():
    state = dict(_reference().state_dict())
    bad = {**state, "output_blocks.0.0.in_layers.2.weight": state["output_blocks.0.0.in_layers.2.weight"][:, :8]}
    with pytest.raises(ValueError, match=r"shape mismatch: output_blocks.0.0.in_layers.2.weight \(as up_blocks.0.resnets"
                                         r".0.conv1.weight\) is \[64, 8, 3, 3\] in the file but the architecture read "
                                         r"off the other weights needs \[64, 128, 3, 3\]"):
        unet_from_state_dict(bad, num_heads=1)
    with pytest.raises(ValueError, match="has weights its inferred architecture has no place for.*low_res"):
        unet_from_state_dict({**state, "low_res.weight": torch.zeros(1)}, num_heads=1)
    no_norm = {k: v for k, v in state.items() if not k.startswith("middle_block.1.norm.")}
    with pytest.raises(ValueError, match=r"no weights in the file for mid_block.attentions.0.group_norm.weight, "
                                         r"mid_block.attentions.0.group_norm.bias \(diffusers names: the file lacks"):
        unet_from_state_dict(no_norm, num_heads=1)
    truncated = {k: v for k, v in state.items() if not k.startswith("out.")}
    with pytest.raises(ValueError, match="lacks 'out.2.weight'"):
        unet_from_state_dict(truncated, num_heads=1)
    no_block = {k: v for k, v in state.items() if not k.startswith("input_blocks.2.")}
    with pytest.raises(ValueError, match="do not form a U-Net"):
        guided_layout(no_block)


def test_schedule_default_is_loud_and_cosine_can_be_chosen(caplog):
    state = _reference().state_dict()
    with caplog.at_level(logging.INFO, logger="hspace"):
        _, linear = unet_from_state_dict(state, num_heads=1)
    assert linear["beta_schedule"] == "linear" and linear["num_train_timesteps"] == 1000
    assert any(r.levelno == logging.WARNING and "do not record their noise schedule" in r.getMessage()
               for r in caplog.records)
    _, cosine = unet_from_state_dict(state, num_heads=1, beta_schedule="cosine")
    alphas = schedule_from_diffusers_config(cosine).alphas_cumprod
    assert cosine["beta_schedule"] == "squaredcos_cap_v2" and alphas[500] > 0.45  # linear's ᾱ_500 is ≈ 0.08
    with pytest.raises(ValueError, match="num_heads apply to guided-diffusion checkpoints only"):
        unet_from_state_dict(Model(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()).state_dict(),
                             num_heads=4)


@torch.no_grad()
def test_checkpoint_files_and_their_settings_file(tmp_path, caplog):
    reference = _reference(**VARIANTS["new_attention_order"][0])
    path = tmp_path / "afhqdog_p2.pt"
    torch.save({"ema": reference.state_dict(), "model": {k: 0 * v for k, v in reference.state_dict().items()}},
               str(path))
    with pytest.raises(ValueError, match="afhqdog_p2.pt: The attention head split"):
        load_checkpoint(str(path))
    (tmp_path / "afhqdog_p2.json").write_text(json.dumps({"num_heads": 4, "new_attention_order": True,
                                                          "beta_schedule": "cosine"}))
    loaded = read_checkpoint(str(path), 16)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    assert torch.allclose(loaded.unet(x, t).sample, reference(x, t), atol=1e-5)
    assert loaded.scheduler["beta_schedule"] == "squaredcos_cap_v2"
    model = load_checkpoint(str(path), 16)
    assert torch.allclose(model.predict(x, 300).eps, reference(x, t), atol=1e-5)
    assert torch.allclose(model.schedule.alphas_cumprod, schedule_from_diffusers_config(loaded.scheduler).alphas_cumprod)
    linear = read_checkpoint(str(path), beta_schedule="linear").scheduler  # an argument overrides the file
    assert linear["beta_schedule"] == "linear"
    (tmp_path / "afhqdog_p2.json").write_text("[4]")
    with pytest.raises(ValueError, match="afhqdog_p2.json must hold a JSON object"):
        load_checkpoint(str(path))


@pytest.mark.e2e
def test_guided_checkpoints_load_through_the_pixel_loader(comfy):
    """A learned-σ and a class-conditional guided-diffusion checkpoint in models/diffusion_models, with their settings
    in a JSON file beside them, invert and reconstruct through the server; a class-conditional one without a class
    an EDM one inverts as the library does, and x0 / consistency-model / continuous-input files are clear node
    errors."""
    from harness.server import PromptRejected, error_message

    folder = os.path.join(comfy.base, "models", "diffusion_models")
    os.makedirs(folder, exist_ok=True)

    def put(name, model, settings):
        torch.save(model.state_dict(), os.path.join(folder, name + ".pt"))
        with open(os.path.join(folder, name + ".json"), "w") as f:
            json.dump(settings, f)

    put("e2e_gd_sigma", _reference(**VARIANTS["learned_sigma"][0]), {"num_heads": 1, "beta_schedule": "cosine"})
    put("e2e_gd_class", _reference(**VARIANTS["class_conditional"][0]), {"num_heads": 1})
    prompt = {
        "1": {"class_type": "HSpaceLoadPixelUNet", "inputs": {"unet_folder": "bundled/hspace-shapes-ddpm",
                                                              "repo_id": "e2e_gd_sigma.pt"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "hspace_content.png"}},
        "4": {"class_type": "HSpaceDDIMInversion", "inputs": {"model": ["1", 0], "image": ["3", 0], "vae": ["2", 0],
                                                              "steps": 10, "refine_iters": 0, "cfg": 1.0,
                                                              "edit_branches": "cond", "convention": "seed",
                                                              "cfg_inversion": "plain", "h_source": "inversion"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 2], "vae": ["2", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "e2e/gd_reconstruction"}},
    }
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    assert comfy.images(entry, "10")
    prompt["1"]["inputs"]["repo_id"] = "e2e_gd_class.pt"
    try:
        entry = comfy.run(prompt)
        message = error_message(entry) if entry["status"]["status_str"] == "error" else "it ran"
    except PromptRejected as rejected:
        message = json.dumps(rejected.body)
    assert "e2e_gd_class.pt is class-conditional (5 classes): fix the class to generate in e2e_gd_class.json" in message
    put("e2e_gd_class", _reference(**VARIANTS["class_conditional"][0]), {"num_heads": 1, "class_label": 2})
    entry = comfy.run(prompt)  # the settings file is part of the loader's fingerprint: it runs again
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    assert comfy.images(entry, "10")
    edm = {"num_heads": 1, "parameterization": "edm", "c_noise": "consistency", "sigma_max": 40.0}
    put("e2e_gd_edm", _reference(), edm)
    prompt["1"]["inputs"]["repo_id"] = "e2e_gd_edm.pt"
    entry = comfy.run(prompt)  # an EDM MODEL: ComfyUI's EDM sampling with the network's 250 ln σ time input
    assert entry["status"]["status_str"] == "success", error_message(entry) + "\n" + comfy.tail()
    shown = entry["outputs"]["1"]["text"][0]  # the settings check's verdict, on the node
    assert shown.startswith('e2e_gd_edm.pt: ') and '"parameterization": "edm"' in shown and "6 synthetic probes" in shown
    image = torch.from_numpy(np.array(Image.open(io.BytesIO(comfy.images(entry, "10")[0])).convert("RGB")))
    source = torch.from_numpy(np.array(Image.open(os.path.join(comfy.base, "input", "hspace_content.png"))
                                       .convert("RGB")))
    to_model = lambda pixels: pixels.permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():  # the same inversion in-process through load_checkpoint's Denoiser
        inverted = invert(load_checkpoint(os.path.join(folder, "e2e_gd_edm.pt"), check=False), to_model(source),
                          num_steps=10)
    expected = ((inverted.reconstruction.clamp(-1, 1) + 1) * 127.5).round()
    assert (to_model(image) - to_model(expected[0].permute(1, 2, 0))).abs().max() < 0.05
    assert inverted.report.psnr > 10, inverted.report  # a reconstruction (14.8 dB at 10 plain steps), not noise
    put("e2e_gd_edm", _reference(), {**edm, "clip_denoised": True})
    entry = comfy.run(prompt)
    assert ("e2e_gd_edm.pt: clip_denoised is set in e2e_gd_edm.json, but ComfyUI's EDM model type does not clamp "
            "D(x, σ)") in error_message(entry)
    put("e2e_gd_edm", _reference(), {**edm, "parameterization": "consistency"})
    entry = comfy.run(prompt)
    assert ("e2e_gd_edm.pt is a consistency model (boundary-condition c_skip, c_out, which ComfyUI's EDM model type "
            "does not apply): parameterization 'consistency' in e2e_gd_edm.json. H-Space Load Pixel U-Net builds ε- "
            "and v-prediction MODELs") in error_message(entry)
    assert "hspace_core.checkpoints.load_checkpoint(path) returns an hs.Denoiser" in error_message(entry)
    put("e2e_gd_mlp", _reference(label_dims=4), {"num_heads": 1})
    prompt["1"]["inputs"]["repo_id"] = "e2e_gd_mlp.pt"
    entry = comfy.run(prompt)
    assert ("e2e_gd_mlp.pt has a continuous conditioning input (a label_emb MLP): fix the input to generate with in "
            'e2e_gd_mlp.json beside it, e.g. {"condition": [0.5, 1.0]}') in error_message(entry)
    put("e2e_gd_mlp", _reference(label_dims=4), {"num_heads": 1, "condition": [0.1, 0.2, 0.3, 0.4],
                                                   "parameterization": "x0"})
    entry = comfy.run(prompt)
    assert "e2e_gd_mlp.pt is an x0 predictor on the β schedule: parameterization 'x0'" in error_message(entry)
