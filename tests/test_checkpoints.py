"""Checkpoint loaders: the DDIM-repo Model layout → diffusers UNet2DModel, against a reference forward; bad files."""
import collections

import pytest
import torch
from safetensors.torch import save_file

from ddim_reference import Model
from hspace_core import DiffusersUNet, schedule_from_diffusers_config
from hspace_core.checkpoints import layout_of, load_checkpoint, read_checkpoint, read_state_dict, unet_from_state_dict


class Pickled:
    """An arbitrary object in a pickle, which weights-only loading must refuse."""


def _reference(seed=0, **kw):
    torch.manual_seed(seed)
    model = Model(**{"ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": (8,), **kw}).eval()
    with torch.no_grad():
        for p in model.parameters():  # move off the init (zero biases, unit norms) so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def reference():
    return _reference()


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, {"ch_mult": (1, 1, 2), "num_res_blocks": 1, "attn_resolutions": (16, 4)},
                                {"in_channels": 1, "out_ch": 2, "attn_resolutions": ()}])
def test_ddim_model_converts_exactly(kw):
    reference = _reference(1, **kw)
    unet, scheduler = unet_from_state_dict(reference.state_dict(), 16)
    x = torch.randn(2, reference.conv_in.in_channels, 16, 16, generator=torch.Generator().manual_seed(2))
    for t in (torch.tensor([0, 999]), torch.tensor([250, 600])):
        assert torch.allclose(unet(x, t).sample, reference(x, t), atol=1e-5)
    assert scheduler["beta_schedule"] == "linear" and scheduler["num_train_timesteps"] == 1000


@torch.no_grad()
def test_h_is_the_reference_middle_block_output(reference):
    unet, scheduler = unet_from_state_dict(reference.state_dict(), 16)
    x, seen = torch.randn(1, 3, 16, 16), {}
    handle = reference.mid.block_2.register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    try:
        reference(x, torch.tensor([400]))
    finally:
        handle.remove()
    pred = DiffusersUNet(unet, schedule_from_diffusers_config(scheduler)).predict(x, 400)
    assert torch.allclose(pred.h, seen["h"], atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("wrap", ["plain", "safetensors", "ddim_list", "dataparallel", "ema_dict"])
def test_checkpoint_files_load(tmp_path, reference, wrap):
    state = reference.state_dict()
    if wrap == "safetensors":
        path = tmp_path / "celeba_hq.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "celeba_hq.ckpt"
        noise = collections.OrderedDict((k, torch.zeros_like(v)) for k, v in state.items())
        payload = {"plain": state, "ddim_list": [noise, {"lr": torch.tensor(1.0)}, 5, 100, state],
                   "dataparallel": {f"module.{k}": v for k, v in state.items()},
                   "ema_dict": {"model": noise, "ema": state}}[wrap]
        torch.save(payload, str(path))
    unet = read_checkpoint(str(path), 16).unet
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    assert torch.allclose(unet(x, t).sample, reference(x, t), atol=1e-5)
    model = load_checkpoint(str(path), 16)  # ready to use: ε on the DDPM linear schedule
    assert isinstance(model, DiffusersUNet) and model.schedule.prediction_type == "epsilon"
    assert torch.allclose(model.predict(x, 300).eps, reference(x, t), atol=1e-5)


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown checkpoint layout.*DDIM-repo Model"):
        layout_of({"encoder.weight": torch.zeros(1)})
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="other.safetensors: Unknown checkpoint layout"):
        load_checkpoint(str(path))


def test_mismatched_config_is_refused(reference):
    state = dict(reference.state_dict())
    state["up.0.block.0.conv1.weight"] = state["up.0.block.0.conv1.weight"][:, :8]
    with pytest.raises(ValueError, match=r"shape mismatch: up.0.block.0.conv1.weight \(as up_blocks.2.resnets.0.conv1"
                                         r".weight\) is \[32, 8, 3, 3\] in the file but .* needs \[32, 96, 3, 3\]"):
        unet_from_state_dict(state)
    del state["down.0.block.0.conv1.weight"]
    with pytest.raises(ValueError, match="lacks 'down.0.block.0.conv1.weight'"):
        unet_from_state_dict(state)
    narrow = _reference(ch_mult=(2, 2))
    with pytest.raises(ValueError, match=r"ch_mult\[0\] = 2"):
        unet_from_state_dict(narrow.state_dict())


def test_non_tensors_and_code_in_the_file_are_refused(tmp_path, reference):
    path = tmp_path / "bad.pt"
    torch.save({**reference.state_dict(), "config": "celeba"}, str(path))
    with pytest.raises(ValueError, match="entry 'config' is a str, not a tensor"):
        read_state_dict(str(path))
    torch.save({"model": Pickled()}, str(tmp_path / "code.pt"))  # a class: torch.load(weights_only) refuses it
    with pytest.raises(ValueError, match=r"code.pt is not a checkpoint of tensors: it holds Python code, not only "
                                         r"tensors \(it names test_checkpoints.Pickled\), and was refused as unsafe.*"
                                         r"torch.save\(model.state_dict\(\).*safetensors") as refused:
        read_state_dict(str(tmp_path / "code.pt"))
    assert "weights_only" not in str(refused.value)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt is not a checkpoint of tensors: it is truncated or not a torch "
                                         "file") as refused:
        read_state_dict(str(tmp_path / "junk.ckpt"))
    assert "weights_only" not in str(refused.value)
    with pytest.raises(ValueError, match="not a checkpoint file"):
        read_state_dict(str(tmp_path / "weights.txt"))

