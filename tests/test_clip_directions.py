"""Learning Asyrp directions with a CLIP directional loss, on a tiny U-Net and a tiny open_clip model built in code
(random weights, open_clip's own tokenizer vocabulary), and loading official Asyrp checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.tiny import tiny_clip, tiny_pixel_unet
from hspace_core import DiffusersUNet, Direction, EditSchedule, edit, generate, invert
from hspace_core.clip_directions import DirectionTraining, train_direction
from hspace_core import ImplicitDirectionNet, TimeEmbedding, load_official_asyrp

SOURCE, TARGET = "a photo", "a red photo"


@pytest.fixture(scope="module")
def setup():
    model = DiffusersUNet(tiny_pixel_unet(size=16))
    g = torch.Generator().manual_seed(3)
    images = F.interpolate(torch.rand(8, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear")
    return model, tiny_clip(), images[:4], images[4:]


def config(form, **kw):
    settings = dict(num_steps=10, inversion_steps=10, t_edit=500, epochs=3, lr=0.5, lr_step_epochs=10, recon_weight=0.3)
    return DirectionTraining(form=form, **{**settings, **kw})


@pytest.mark.parametrize("form", ["global", "per_timestep", "implicit"])
def test_training_lowers_the_loss_and_moves_held_out_images_toward_the_target_text(setup, form):
    model, clip, train, held_out = setup
    result = train_direction(model, train, clip, SOURCE, TARGET, config(form))
    per_epoch = len(result.losses) // 3
    assert per_epoch == 4 * len(result.timesteps) and min(result.timesteps) >= 500
    epoch = lambda values, k: sum(values[k * per_epoch:(k + 1) * per_epoch]) / per_epoch
    assert epoch(result.losses, 2) < 0.8 * epoch(result.losses, 0)
    assert epoch(result.clip_losses, 2) < epoch(result.clip_losses, 0) - 0.1

    x_T = invert(model, held_out, 10, report=False).x_T
    schedule = EditSchedule(10, t_edit=500)
    base = clip.text_score(generate(model, x_T, schedule), SOURCE, TARGET)
    toward = clip.text_score(edit(model, x_T, result.direction, 1.0, schedule), SOURCE, TARGET)
    away = clip.text_score(edit(model, x_T, result.direction, -1.0, schedule), SOURCE, TARGET)
    gain = toward - base
    assert gain.mean() > 0.004 and (gain > 0).sum() >= 3, gain
    assert (away - base).mean() < 0, "the negative strength must move away from the target text"


@pytest.mark.parametrize("form", ["global", "per_timestep", "implicit"])
def test_zero_iterations_give_the_identity_direction(setup, form):
    model, clip, train, held_out = setup
    result = train_direction(model, train[:1], clip, SOURCE, TARGET, config(form, epochs=0))
    assert result.losses == ()
    x_T = invert(model, held_out[:2], 10, report=False).x_T
    schedule = EditSchedule(10, t_edit=500)
    assert torch.equal(edit(model, x_T, result.direction, 2.0, schedule), generate(model, x_T, schedule))


def test_training_works_under_inference_mode_and_restores_the_model(setup):
    model, clip, train, _ = setup
    with torch.inference_mode():  # as ComfyUI runs nodes; weights created here are inference tensors
        unet = tiny_pixel_unet(size=16)
        frozen = DiffusersUNet(unet)
        before = {name: p for name, p in unet.named_parameters()}
        result = train_direction(frozen, train[:1], clip, SOURCE, TARGET, config("global", epochs=1))
    assert len(result.losses) == len(result.timesteps)
    after = dict(unet.named_parameters())
    assert all(after[n] is p and p.is_inference() for n, p in before.items()), "weights must be put back"
    plain = tiny_pixel_unet(size=16)
    assert all(p.requires_grad for p in plain.parameters())
    train_direction(DiffusersUNet(plain), train[:1], clip, SOURCE, TARGET, config("global", epochs=1))
    assert all(p.requires_grad and p.grad is None for p in plain.parameters()), "the U-Net must stay untouched"
    assert not plain.mid_block._forward_hooks and "forward" not in plain.mid_block.__dict__


def test_cancel_stops_training_and_puts_the_weights_back(setup):
    from hspace_core import Cancelled

    _, clip, train, _ = setup
    unet = tiny_pixel_unet(size=16)
    ticks = []
    with pytest.raises(Cancelled):
        train_direction(DiffusersUNet(unet), train[:1], clip, SOURCE, TARGET, config("implicit"),
                        progress=lambda done, total: ticks.append(done), should_stop=lambda: len(ticks) >= 4)
    assert len(ticks) == 4
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())
    assert not unet.mid_block._forward_hooks and "forward" not in unet.mid_block.__dict__


@pytest.mark.parametrize("form", ["global", "per_timestep", "implicit"])
def test_save_load_round_trip_keeps_the_direction_and_its_metadata(setup, tmp_path, form):
    model, clip, train, _ = setup
    direction = train_direction(model, train[:1], clip, SOURCE, TARGET, config(form, epochs=1)).direction
    path = str(tmp_path / f"{form}.safetensors")
    direction.scaled(1.5).save(path)
    loaded = Direction.load(path)
    h = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (999, 700, 500):
        assert torch.allclose(loaded.at(h, t), 1.5 * direction.at(h, t), atol=1e-6)
    assert loaded.form == form and loaded.fingerprint == model.fingerprint
    meta = loaded.metadata
    assert (meta["source_text"], meta["target_text"], meta["train_steps"], meta["t_edit"]) == (SOURCE, TARGET, 10, 500)
    assert tuple(loaded.h_shape[:1]) == (32,)


def test_strength_is_rescaled_by_train_steps_over_test_steps(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    delta = torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.3
    learnt = Direction("global", delta, metadata={"train_steps": 10})
    plain = Direction("global", delta)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    schedule = EditSchedule(20, t_edit=500)
    assert torch.equal(edit(model, x_T, learnt, 1.0, schedule), edit(model, x_T, plain, 0.5, schedule))
    assert learnt.step_scale(10) == 1.0


def official_block(c=64, temb=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    return {"conv1.weight": r(c, c, 1, 1), "conv1.bias": r(c), "temb_proj.weight": r(c, temb), "temb_proj.bias": r(c),
            "norm2.weight": 1 + r(c), "norm2.bias": r(c), "conv2.weight": r(c, c, 1, 1), "conv2.bias": r(c)}


def ddpm_time_embedding(temb=32, dim=16, seed=1):
    torch.manual_seed(seed)
    return TimeEmbedding(dim, temb, flip_sin_to_cos=False, freq_shift=1)


def test_official_checkpoint_loads_and_matches_a_hand_computation(tmp_path):
    block, emb = official_block(), ddpm_time_embedding()
    path = str(tmp_path / "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth")
    torch.save({"0": block, "optimizer": {"state": {}, "param_groups": [{"lr": 0.5}]},
                "scheduler": {"step_size": 3, "gamma": 0.1}}, path)
    direction = load_official_asyrp(path, emb)
    assert direction.form == "implicit" and direction.name.startswith("smiling")
    assert direction.made_with.startswith("official Asyrp checkpoint (implicit f_t")

    h, t = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(5)), 640
    # DDPM's sinusoidal embedding (sin first, log(10000)/(half − 1)), the MLP, then the DeltaBlock by hand
    half = 8
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
    sinus = torch.cat([torch.sin(t * freqs), torch.cos(t * freqs)])[None]
    temb = emb.linear_2(F.silu(emb.linear_1(sinus)))
    x = torch.einsum("oc,bchw->bohw", block["conv1.weight"][:, :, 0, 0], h) + block["conv1.bias"][None, :, None, None]
    x = x + (F.silu(temb) @ block["temb_proj.weight"].T + block["temb_proj.bias"])[:, :, None, None]
    groups = x.reshape(2, 32, -1)
    x = ((groups - groups.mean(-1, keepdim=True)) / torch.sqrt(groups.var(-1, unbiased=False, keepdim=True) + 1e-6))
    x = x.reshape(2, 64, 4, 4) * block["norm2.weight"][None, :, None, None] + block["norm2.bias"][None, :, None, None]
    x = F.silu(x)
    want = torch.einsum("oc,bchw->bohw", block["conv2.weight"][:, :, 0, 0], x) + block["conv2.bias"][None, :, None, None]
    with torch.no_grad():
        assert torch.allclose(direction.at(h, t), want, atol=1e-5)

    # and it survives our own save / load
    direction.save(str(tmp_path / "official.safetensors"))
    with torch.no_grad():
        assert torch.allclose(Direction.load(str(tmp_path / "official.safetensors")).at(h, t), want, atol=1e-5)


def test_official_delta_h_checkpoints_load_as_per_timestep_directions(tmp_path):
    path = str(tmp_path / "delta_h.pth")
    deltas = {str(t): torch.full((8, 4, 4), float(t)) for t in (999, 500, 300)}
    torch.save(deltas, path)
    d = load_official_asyrp(path, ddpm_time_embedding(), h_shape=(8, 4, 4))
    assert d.form == "per_timestep" and d.timesteps == (999, 500, 300)
    assert d.made_with == "official Asyrp checkpoint, t = 999 … 300"
    assert float(d.at(torch.zeros(1, 8, 4, 4), 500).mean()) == 500
    assert float(d.at(torch.zeros(1, 8, 4, 4), 520).mean()) == pytest.approx(520)  # linear in t between 500 and 999


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update({"conv1.weight": torch.zeros(64, 64, 3, 3)}), "1×1"),
    (lambda b: b.update({"temb_proj.weight": torch.zeros(64, 48)}), "time embedding has 48 channels"),
    (lambda b: b.update({"norm2.weight": torch.zeros(64, 2)}), "rank-1"),
    (lambda b: b.pop("conv2.weight"), "not an Asyrp direction"),
])
def test_wrong_official_checkpoints_are_refused_with_a_message(tmp_path, change, message):
    block = official_block()
    change(block)
    path = str(tmp_path / "bad.pth")
    torch.save({"0": block}, path)
    with pytest.raises(ValueError, match=message):
        load_official_asyrp(path, ddpm_time_embedding())


def test_non_weight_pickles_are_refused(tmp_path):
    path = str(tmp_path / "code.pth")
    torch.save({"0": DirectionTraining()}, path)  # an arbitrary object: weights_only loading must refuse it
    with pytest.raises(ValueError, match="not a loadable Asyrp checkpoint"):
        load_official_asyrp(path, ddpm_time_embedding())
    with pytest.raises(ValueError, match="32 channels; the model.s h has 64"):
        net = ImplicitDirectionNet(32, ddpm_time_embedding())
        net(torch.zeros(1, 64, 4, 4), 10)


def test_time_embedding_copy_matches_the_unet(pixel_unet):
    model = DiffusersUNet(pixel_unet)
    emb = model.time_embedding()
    t = torch.tensor([0, 250, 999])
    with torch.no_grad():
        want = pixel_unet.time_embedding(pixel_unet.time_proj(t))
        assert torch.allclose(emb(t), want, atol=1e-6)


def test_bad_training_settings_say_what_to_change():
    with pytest.raises(ValueError, match="form must be"):
        DirectionTraining(form="mlp")
    with pytest.raises(ValueError, match="init_scale > 0"):
        DirectionTraining(init_scale=0.0)
    with pytest.raises(ValueError, match="t_edit must be"):
        DirectionTraining(t_edit=1000)
