"""Reading checkpoint files: the tensors of a .safetensors / pickle file, unwrapped to a state dict, and the
comparison of a converted state dict with the module it must fill."""
from __future__ import annotations

import os
import re

import torch

CHECKPOINT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
__all__ = ["CHECKPOINT_EXTENSIONS", "read_state_dict", "state_dict_of", "key_mismatch", "count_indices"]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors / .pt / .pth / .ckpt file, on the CPU.

    Pickles are read with ``torch.load(weights_only=True)`` (no code runs).  A training checkpoint that wraps the
    weights (``{"state_dict": …}``, ``{"model": …}``, ``{"ema": …}``, or the DDIM repo's list [model, optimiser,
    epoch, step, ema]) is unwrapped, preferring the EMA weights; DataParallel's ``module.`` prefix is dropped.
    """
    if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
        raise ValueError(f"{os.path.basename(path)} is not a checkpoint file; use one of {CHECKPOINT_EXTENSIONS}.")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise ValueError(f"Could not read {os.path.basename(path)} as a checkpoint of tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); save the model's state_dict with "
                         "torch.save or as .safetensors.") from None
    return state_dict_of(raw, os.path.basename(path))


def state_dict_of(raw, what: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a loaded checkpoint to {name: tensor} (see ``read_state_dict``); anything else is refused."""
    if isinstance(raw, (list, tuple)):  # the DDIM repo's ckpt.pth: [model, optimiser, epoch, step, (ema)]
        dicts = [item for item in raw if isinstance(item, dict) and item]
        raw = dicts[-1] if len(dicts) > 2 else (dicts[0] if dicts else raw)
    if isinstance(raw, dict):
        for key in ("ema", "ema_model", "state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{what} holds no state dict (a mapping of parameter names to tensors).")
    state = {}
    for name, value in raw.items():
        if not torch.is_tensor(value):
            raise ValueError(f"{what}: entry {name!r} is a {type(value).__name__}, not a tensor; save only the model's "
                             "state_dict (parameter name → tensor).")
        state[name[len("module."):] if name.startswith("module.") else name] = value
    return state


def count_indices(state: dict, pattern: str) -> int:
    """How many distinct integers fill the {} in ``pattern`` among the state dict's keys."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return len({m.group(1) for key in state for m in [regex.match(key)] if m})


def key_mismatch(expected: dict, given: dict) -> tuple[list, list]:
    """Keys missing from ``given``, keys it has in excess, and shape mismatches (reported as missing)."""
    missing = [k for k in expected if k not in given or tuple(given[k].shape) != tuple(expected[k].shape)]
    return missing, [k for k in given if k not in expected]
