"""Official Asyrp checkpoints (``.pth`` from the official code's checkpoint/ folder) as ``Direction`` objects."""
from __future__ import annotations

import dataclasses
import os
import re

import torch

from .checkpoints.files import load_tensors
from .implicit import ImplicitDirectionNet, TimeEmbedding
from .direction import Direction

OFFICIAL_KEYS = {"conv1.weight": 4, "conv1.bias": 1, "temb_proj.weight": 2, "temb_proj.bias": 1,
                 "norm2.weight": 1, "norm2.bias": 1, "conv2.weight": 4, "conv2.bias": 1}


def load_official_asyrp(path: str, time_embedding: TimeEmbedding, h_shape: tuple[int, ...] | None = None,
                        train_steps: int | None = None) -> Direction:
    """Read an official Asyrp checkpoint (``torch.save`` of {"0": DeltaBlock state dict, "optimizer", "scheduler"},
    or of {timestep: Δh_t} for the train_delta_h variant) with ``torch.load(weights_only=True)``.

    Returns a ``Direction``: implicit for a DeltaBlock (1×1 convs; GroupNorm(32, eps 1e-6)), per-timestep or
    global for Δh tensors.  ``time_embedding`` is the target model's (see ``HSpaceModel.time_embedding``).
    ``train_steps`` (the DDIM steps it was trained with; edits rescale the strength by train_steps / steps) is
    read from the ``ngen<N>`` part of the official file names when not given (``train_steps_of``).
    """
    try:
        direction = _read_official(path, time_embedding, h_shape)
    except ValueError as error:  # e.g. Direction's own refusal of NaN Δh: name the file
        raise ValueError(str(error) if path in str(error) else f"{path}: {error}") from None
    steps = train_steps or train_steps_of(path)
    if steps:
        direction = dataclasses.replace(direction, metadata={**direction.metadata, "train_steps": int(steps)})
    return direction


def train_steps_of(path: str) -> int | None:
    """N from an official checkpoint name such as ``smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth`` (the training
    run's n_train_step), or None."""
    found = re.search(r"ngen(\d+)", os.path.basename(path))
    return int(found.group(1)) if found else None


def _read_official(path: str, time_embedding: TimeEmbedding, h_shape) -> Direction:
    raw = load_tensors(path, "a loadable Asyrp checkpoint", " Official Asyrp checkpoints are .pth files of tensors "
                       "from its checkpoint/ folder.")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not an Asyrp state dict.")
    block = raw["0"] if isinstance(raw.get("0"), dict) else raw
    if set(OFFICIAL_KEYS) <= set(block):
        return _official_block(block, time_embedding, path)
    deltas = sorted(((int(k), v.float()) for k, v in raw.items()
                     if str(k).lstrip("-").isdigit() and torch.is_tensor(v) and v.dim() == 3), reverse=True)
    if deltas:
        timesteps, stack = tuple(t for t, _ in deltas), torch.stack([v for _, v in deltas])
        if h_shape is not None and tuple(stack.shape[1:]) != tuple(h_shape):
            raise ValueError(f"{path} has Δh of shape {tuple(stack.shape[1:])} but the model's h is {tuple(h_shape)}.")
        meta = {"source": "official_asyrp"}
        if len(timesteps) == 1:
            return Direction("global", stack[0], name=_name_of(path), metadata=meta,
                             made_with=f"official Asyrp checkpoint, t = {timesteps[0]}")
        return Direction("per_timestep", stack, timesteps, name=_name_of(path), metadata=meta,
                         made_with=f"official Asyrp checkpoint, t = {timesteps[0]} … {timesteps[-1]}")
    keys = sorted(map(str, block))[:12]
    raise ValueError(f"{path} is not an Asyrp direction: expected a DeltaBlock state dict with keys "
                     f"{sorted(OFFICIAL_KEYS)} (under '0') or {{timestep: Δh}} tensors; found keys {keys}.")


def _official_block(block: dict, time_embedding: TimeEmbedding, path: str) -> Direction:
    for key, rank in OFFICIAL_KEYS.items():
        v = block[key]
        if not torch.is_tensor(v) or v.dim() != rank:
            raise ValueError(f"{path}: {key} should be a rank-{rank} tensor, got {getattr(v, 'shape', type(v))}.")
    c = block["conv1.weight"].shape[0]
    expected = {"conv1.weight": (c, c, 1, 1), "conv2.weight": (c, c, 1, 1), "temb_proj.weight": (c, time_embedding.linear_2.out_features)}
    for key, shape in expected.items():
        if tuple(block[key].shape) != shape:
            if key == "temb_proj.weight" and block[key].shape[0] == c:
                raise ValueError(
                    f"{path} was trained for a model whose time embedding has {block[key].shape[1]} channels; this model's "
                    f"has {time_embedding.linear_2.out_features}. Use the model the direction was trained with.")
            raise ValueError(f"{path}: {key} has shape {tuple(block[key].shape)}, expected {shape} (1×1 convolutions).")
    net = ImplicitDirectionNet(c, time_embedding, zero_init=False)
    net.load_state_dict({k: block[k].float() for k in OFFICIAL_KEYS}, strict=False)
    net.requires_grad_(False)
    return Direction("implicit", fn=net, h_shape=(c,), name=_name_of(path), metadata={"source": "official_asyrp"},
                     made_with="official Asyrp checkpoint (implicit f_t; its training window is not in the file)")


def _name_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
