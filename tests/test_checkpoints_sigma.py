"""σ-parameterised checkpoints (EDM, consistency models) in the openai UNetModel layout: a consistency-models-style
reference (1×1 Conv2d attention weights, a continuous label_emb MLP) converts exactly, loads through load_checkpoint
alone as a Denoiser that inverts like the hand-wrapped original; the settings are checked by name and type."""
import json
import logging
import math

import pytest
import torch

from guided_reference import UNetModel
from hspace_core import Denoiser, DiffusersUNet, invert
from hspace_core.checkpoints import (checkpoint_settings, consistency_scalings, edm_scalings, load_checkpoint,
                                     read_checkpoint, unet_from_state_dict)

CM = dict(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(2,),
          channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=True, resblock_updown=True, conv2d_attention=True,
          label_dims=4)
HEADS = {"num_heads": 2, "new_attention_order": False}
CONDITION = [0.3, -1.2, 0.8, 0.05]
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


def _consistency_reference(seed=0, **kw):
    torch.manual_seed(seed)
    model = UNetModel(**{**CM, **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():  # off the init so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    return model


class HandWrapped(torch.nn.Module):
    """What a user writes by hand: D(x, σ) = c_skip·x + c_out·F(c_in·x, 250 ln σ, c), consistency scalings."""

    def __init__(self, network, condition):
        super().__init__()
        self.network, self.condition = network, torch.tensor([condition])

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / ((s - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
        c_out = (s - SIGMA_MIN) * SIGMA_DATA / (s**2 + SIGMA_DATA**2).sqrt()
        c_in = (s**2 + SIGMA_DATA**2).rsqrt()
        y = self.condition.expand(x.shape[0], -1)
        return c_skip * x + c_out * self.network(c_in * x, 250 * sigma.log(), y)


@pytest.fixture(scope="module")
def reference():
    return _consistency_reference()


def _save(tmp_path, model, settings, name="cm_tiny"):
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), str(path))
    if settings is not None:
        (tmp_path / f"{name}.json").write_text(json.dumps(settings))
    return str(path)


def test_the_reference_has_the_layout_the_issue_describes(reference):
    state = reference.state_dict()
    assert state["middle_block.1.qkv.weight"].shape == (3 * 64, 64, 1, 1)
    assert state["middle_block.1.proj_out.weight"].shape == (64, 64, 1, 1)
    assert state["label_emb.0.weight"].shape == (128, 4) and "label_emb.2.weight" in state


@torch.no_grad()
def test_consistency_style_unet_converts_exactly(reference):
    """4-D attention weights squeezed, the label_emb MLP kept (per-image inputs) or folded (one fixed input)."""
    unet, scheduler = unet_from_state_dict(reference.state_dict(), 16, parameterization="consistency", **HEADS)
    assert scheduler is None  # σ-parameterised: no β schedule
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 4, generator=g)
    for c_noise in (torch.tensor([-1553.7, 0.0]), torch.tensor([250 * math.log(2.0), 250 * math.log(80.0)])):
        assert torch.allclose(unet(x, c_noise, class_labels=c).sample, reference(x, c_noise, c), atol=1e-5)
    fixed, _ = unet_from_state_dict(reference.state_dict(), 16, parameterization="consistency", condition=CONDITION,
                                    **HEADS)
    assert fixed.class_embedding is None
    y = torch.tensor([CONDITION] * 2)
    assert torch.allclose(fixed(x, c_noise).sample, reference(x, c_noise, y), atol=1e-5)


@torch.no_grad()
def test_load_checkpoint_alone_gives_the_denoiser_and_inverts_as_the_hand_wrapped_one(tmp_path, reference):
    settings = {"parameterization": "consistency", "sigma_data": SIGMA_DATA, "sigma_min": SIGMA_MIN,
                "sigma_max": SIGMA_MAX, "c_noise": "consistency", "condition": CONDITION, **HEADS}
    model = load_checkpoint(_save(tmp_path, reference, settings), check=False)  # the check: its own tests
    assert isinstance(model, Denoiser) and model.output == "x0"
    by_hand = Denoiser(HandWrapped(reference, CONDITION), torch.exp(torch.linspace(math.log(SIGMA_MIN),
                                                                                   math.log(SIGMA_MAX), 1000)),
                       "network.middle_block")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for t in (0, 400, 999):
        assert torch.allclose(model.fn(x, torch.full((2,), model.schedule.sigma(t))),
                              by_hand.fn(x, torch.full((2,), by_hand.schedule.sigma(t))), atol=1e-5)
        ours, theirs = model.predict(x, t), by_hand.predict(x, t)
        assert torch.allclose(ours.h, theirs.h, rtol=1e-4, atol=1e-4)  # h reaches ≈ 3: float32 rounding of 250 ln σ
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    ours = invert(model, images, num_steps=20, convention="diffusers", refine_iters=2).report
    theirs = invert(by_hand, images, num_steps=20, convention="diffusers", refine_iters=2).report
    assert theirs.psnr > 25, theirs  # the inversion itself works on this model
    assert abs(ours.psnr - theirs.psnr) < 1.0, (ours, theirs)
    as_eps = load_checkpoint(_save(tmp_path, reference, {"condition": CONDITION, **HEADS}, "as_eps"))
    wrong = invert(as_eps, images, num_steps=20, convention="diffusers", refine_iters=2).report
    assert wrong.psnr < theirs.psnr - 20  # the same file read as an ε-model on linear β: why the setting matters


@torch.no_grad()
def test_clip_denoised_clamps_d_as_the_models_own_graph(tmp_path, reference):
    """openai/consistency_models' denoise with clip_denoised=True: D clamped to [−1, 1] after the preconditioning."""
    settings = {"parameterization": "consistency", "condition": CONDITION, **HEADS}
    clamped = load_checkpoint(_save(tmp_path, reference, {**settings, "clip_denoised": True}, "clamped"), check=False)
    plain = load_checkpoint(_save(tmp_path, reference, settings, "plain"), check=False)
    graph = HandWrapped(reference, CONDITION)
    x = 3 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    for value in (SIGMA_MIN, 0.5, 80.0):
        sigma = torch.full((2,), value)
        own = graph(x, sigma).clamp(-1, 1)
        assert torch.allclose(clamped.fn(x, sigma), own, atol=1e-5)
        assert float(clamped.fn(x, sigma).abs().max()) <= 1
    sigma = torch.full((2,), 80.0)
    assert float((plain.fn(x, sigma) - graph(x, sigma).clamp(-1, 1)).abs().max()) > 1e-2  # unclamped: not the graph
    assert clamped.fingerprint != plain.fingerprint
    assert "clip_denoised=True" in clamped.fn.extra_repr()


@torch.no_grad()
def test_the_scalings_are_the_papers():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = edm_scalings(sigma, 0.5)
    assert torch.allclose(c_skip * 1 + c_out**2 / 0.25, torch.ones(3, dtype=torch.float64))  # c_skip + c_out²/σ_d² = 1
    assert torch.allclose(c_in, 1 / (sigma**2 + 0.25).sqrt())
    c_skip, c_out, _ = consistency_scalings(sigma, 0.5, 0.002)
    assert c_skip[0] == 1 and c_out[0] == 0  # boundary condition: D(x, σ_min) = x
    assert torch.allclose(c_skip[2], torch.tensor(0.25 / (79.998**2 + 0.25), dtype=torch.float64))


@torch.no_grad()
def test_edm_parameterization_uses_edm_scalings_and_a_quarter_log_sigma(tmp_path):
    """parameterization "edm": c_noise = ¼ ln σ unless told otherwise, EDM Table 1 scalings."""
    network = _consistency_reference(label_dims=None)
    model = load_checkpoint(_save(tmp_path, network, {"parameterization": "edm", **HEADS}), check=False)
    x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([1.5])
    c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in edm_scalings(sigma, 0.5))
    expected = c_skip * x + c_out * network(c_in * x, sigma.log() / 4)
    assert torch.allclose(model.fn(x, sigma), expected, atol=1e-5)
    cm_teacher = load_checkpoint(_save(tmp_path, network, {"parameterization": "edm", "c_noise": "consistency",
                                                            **HEADS}, "teacher"), check=False)
    assert torch.allclose(cm_teacher.fn(x, sigma), c_skip * x + c_out * network(c_in * x, 250 * sigma.log()),
                          atol=1e-5)
    assert cm_teacher.fingerprint != model.fingerprint  # the settings are part of what the model is


@torch.no_grad()
def test_v_and_x0_parameterizations_give_the_diffusers_prediction_types(tmp_path):
    network = _consistency_reference(label_dims=None)
    for parameterization, prediction in (("v", "v_prediction"), ("x0", "sample"), ("eps", "epsilon")):
        model = load_checkpoint(_save(tmp_path, network, {"parameterization": parameterization, **HEADS}, parameterization))
        assert isinstance(model, DiffusersUNet) and model.schedule.prediction_type == prediction


@pytest.mark.parametrize("settings, message", [
    ({"class_label": 2.7}, r"class_label in cm_tiny.json must be a non-negative integer .*, got 2.7 \(a number\)"),
    ({"class_label": True}, r"class_label in cm_tiny.json must be a non-negative integer .*, got true \(a boolean\)"),
    ({"class_label": "3"}, r"class_label in cm_tiny.json must be a non-negative integer \(a JSON number without "
                           r"quotes or decimals\), got \"3\" \(a string\)"),
    ({"new_attention_order": "false"}, r"new_attention_order in cm_tiny.json must be true or false \(a JSON boolean, "
                                       r"without quotes\), got \"false\" \(a string\)"),
    ({"num_heads": 0}, r"num_heads in cm_tiny.json must be a positive integer"),
    ({"parameterization": "epsilon"}, r"parameterization in cm_tiny.json must be one of \"eps\", \"v\", \"x0\", "
                                      r"\"edm\", \"consistency\", got \"epsilon\""),
    ({"sigma_data": 0.5}, r"sigma_data apply to the σ-parameterised models only .*this one is \"eps\""),
    ({"parameterization": "edm", "beta_schedule": "linear"}, r"beta_schedule does not apply to parameterization "
                                                             r"'edm'"),
    ({"parameterization": "edm", "sigma_min": 5, "sigma_max": 1}, r"sigma_min \(5\) must be below sigma_max \(1\)"),
    ({"parameterization": "edm", "sigma_max": float("nan")}, r"sigma_max in cm_tiny.json must be a positive number"),
    ({"parameterization": "edm", "c_noise": "log"}, r"c_noise in cm_tiny.json must be one of \"edm\", "
                                                    r"\"consistency\""),
    ({"condition": [1, "a"]}, r"condition in cm_tiny.json must be a non-empty list of numbers"),
    ({"parameterization": "consistency", "clip_denoised": "true"}, r"clip_denoised in cm_tiny.json must be true or "
                                                                   r"false \(a JSON boolean, without quotes\)"),
    ({"clip_denoised": True}, r"clip_denoised apply to the σ-parameterised models only .*this one is \"eps\""),
    ({"sigma": 1}, r"Unknown checkpoint setting\(s\) \['sigma'\] in cm_tiny.json; the settings are parameterization"),
])
def test_bad_settings_name_the_file_and_the_setting(tmp_path, reference, settings, message):
    with pytest.raises(ValueError, match=rf"cm_tiny.pt: {message}"):
        read_checkpoint(_save(tmp_path, reference, {**HEADS, **settings}))


def test_what_the_label_emb_takes_is_said(tmp_path, reference):
    path = _save(tmp_path, reference, {"parameterization": "consistency", **HEADS})
    with pytest.raises(ValueError, match=r"class_label was given but this guided-diffusion model has a continuous "
                                         r"conditioning input \(label_emb: Linear layers from 4 numbers\); give "
                                         r"condition \(a list of 4 numbers\) instead"):
        read_checkpoint(path, class_label=3)
    with pytest.raises(ValueError, match="condition has 2 numbers but this model's label_emb takes 4; give 4"):
        read_checkpoint(path, condition=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"cm_tiny.pt has a continuous conditioning input \(4 numbers into label_emb\)"
                                         r": fix it with condition=\[…\] \(4 numbers; \"condition\" in cm_tiny.json\)"):
        load_checkpoint(path)
    table = _consistency_reference(label_dims=None, num_classes=5)
    with pytest.raises(ValueError, match="condition was given but this guided-diffusion model has a class table of 5 "
                                         "classes; give class_label instead"):
        unet_from_state_dict(table.state_dict(), condition=[1.0], **HEADS)
    with pytest.raises(ValueError, match=r"is class-conditional \(5 classes\): fix the class with class_label=k"):
        load_checkpoint(_save(tmp_path, table, HEADS, "table"))
    odd = {**reference.state_dict(), "label_emb.1.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"label_emb \(label_emb.0.weight \(128, 4\).*\) is neither a class table"):
        unet_from_state_dict(odd, **HEADS)


def test_attention_weights_that_are_not_1x1_are_refused_by_shape(reference):
    state = dict(reference.state_dict())
    state["middle_block.1.proj_out.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ValueError, match=r"middle_block.1.proj_out.weight has shape \(64, 64, 3, 3\): an attention "
                                         r"projection must be a 1×1 convolution"):
        unet_from_state_dict(state, **HEADS)


def test_keyword_arguments_override_the_files_head_split(tmp_path, reference, caplog):
    """num_heads given to the loader replaces the JSON's num_head_channels, as documented."""
    path = _save(tmp_path, reference, {"num_head_channels": 16, "new_attention_order": False,
                                       "parameterization": "consistency", "condition": CONDITION})
    with caplog.at_level(logging.INFO, logger="hspace"):
        model = load_checkpoint(path, num_heads=2, check=False)
    assert any("instead of cm_tiny.json's {'num_head_channels': 16}" in r.getMessage() for r in caplog.records)
    x, sigma = torch.randn(1, 3, 16, 16), torch.tensor([3.0])
    by_hand = HandWrapped(reference, CONDITION)
    with torch.no_grad():
        assert torch.allclose(model.fn(x, sigma), by_hand(x, sigma), atol=1e-5)
    assert checkpoint_settings({"num_head_channels": 8}, {"num_heads": 2}).num_heads is None
    assert checkpoint_settings({}, {"class_label": None, "num_heads": 2}).class_label is None  # JSON null: unset
