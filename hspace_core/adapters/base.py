"""The one interface every model family implements, and the branch bookkeeping for guidance."""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from ..noise_levels import NoiseLevels
from ..schedules import NoiseSchedule

# An h edit maps (h rows of one branch, timestep, branch name) to the edited rows.
HEdit = Callable[[torch.Tensor, int, str], torch.Tensor]

EDIT_BRANCHES = ("cond", "uncond", "both")


@dataclass(frozen=True)
class Prediction:
    """One network evaluation at (x_t, t).

    ``eps`` is ε(x_t | h_t) after guidance; ``eps_edited`` is ε(x_t | h̃_t) when an edit was given;
    ``h`` is the unedited h_t with rows branch-major (see ``HTrajectory``).
    """

    eps: torch.Tensor
    h: torch.Tensor
    eps_edited: torch.Tensor | None = None


@runtime_checkable
class HSpaceModel(Protocol):
    """A denoiser whose middle-block output h can be read and replaced (the contract: docs/adapters.md).

    - ``schedule``: ᾱ_t for t = 0 … T−1; the processes work in the VP convention x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
    - ``predict(x_t, t, edit)`` is called with an integer t in [0, T−1] (never −1, the clean image) and returns
      ``Prediction(eps, h, eps_edited)``: ε(x_t, t) after guidance, the unedited h_t (rows branch-major, one block
      per entry of ``branches``) and, only when ``edit`` is given, ε(x_t | h̃_t) with h̃_t = edit(h rows, t, branch).
    - ``branches`` is ``("single",)`` for one branch, ``("uncond", "cond")`` under classifier-free guidance.
    - ``fingerprint`` identifies architecture and weights (``fingerprint_of``).
    - Reusing the encoder for the edited pass (only h and the decoder run again) is an optional optimisation.

    ``predict`` attaches whatever hooks it needs for that one call and removes them before returning,
    whether the call succeeds, raises or is interrupted.  The processes call it through its σ view
    (``denoise_at``); a model that is a σ-space denoiser itself (the ComfyUI MODEL) offers
    ``denoised(x, σ, edit=None, t=None)`` and ``levels`` (its ``NoiseLevels``) instead of the VP round trip.
    """

    schedule: NoiseSchedule
    branches: tuple[str, ...]
    fingerprint: str

    def predict(self, x_t: torch.Tensor, t: int, edit: HEdit | None = None) -> Prediction: ...

    # Optional, for guided inversion (``hspace_core.cfg_inversion``; see ``GuidedModel``).
    # Optional, for learning directions (``hspace_core.clip_directions``):
    #   time_embedding() -> implicit.TimeEmbedding  a frozen copy of the model's timestep embedding
    #   autograd_ready() -> context manager         gradients flow from ε(x_t | h̃) back to the edit, weights frozen


def levels_of(model) -> NoiseLevels:
    """The model's noise levels: its own ``levels`` (a ComfyUI MODEL's float32 σ table) or its ᾱ schedule's."""
    levels = getattr(model, "levels", None)
    return levels if levels is not None else NoiseLevels.of_schedule(model.schedule)


def denoise_at(model, x: torch.Tensor, sigma, edit: HEdit | None = None, *, t: int | None = None) -> tuple:
    """(D(x | h), D(x | h̃) or None, h): every ``HSpaceModel`` as a σ-space denoiser at the point x = x0 + σ·ε
    (k-diffusion's ``DiscreteEpsDDPMDenoiser``).  t is the model's timestep nearest σ (``NoiseLevels.timestep``;
    pass ``t`` to skip the look-up, which reads σ on the host), the VP input x_t = x·√ᾱ with ᾱ = 1/(1 + σ²)
    (``sigmas``), ε(x_t, t) = ``predict``'s and D = x − σ·ε (Karras et al. 2022, eq. 3).  A model with its own
    ``denoised`` (a σ-space denoiser: the ComfyUI MODEL) is called directly.  ``sigma`` is a float or a 0-dim
    tensor (no host sync when ``t`` is given); gradients flow through (CLIP direction training)."""
    own = getattr(model, "denoised", None)
    if own is not None:
        return own(x, sigma, edit, t=t)
    if t is None:
        t = levels_of(model).timestep(float(sigma))
    pred = model.predict(x * (1 + sigma * sigma) ** -0.5, t, edit)
    x0 = lambda eps: x - sigma * eps  # noqa: E731
    return x0(pred.eps), None if pred.eps_edited is None else x0(pred.eps_edited), pred.h


@runtime_checkable
class GuidedModel(HSpaceModel, Protocol):
    """An ``HSpaceModel`` under classifier-free guidance whose negative branch can be swapped.

    ``with_negative("positive")`` uses the positive conditioning as the negative (negative-prompt inversion);
    ``with_negative(tensor)`` a negative embedding (it may require grad: null-text inversion differentiates ε
    with respect to it); ``with_negative({t: tensor})`` per-step negatives.  ``autograd_ready()`` lets gradients
    flow through the frozen network.
    """

    guidance_scale: float

    def with_guidance(self, scale: float) -> "GuidedModel": ...

    def negative_embedding(self) -> torch.Tensor: ...

    def with_negative(self, negative) -> "GuidedModel": ...

    def autograd_ready(self): ...


@contextlib.contextmanager
def autograd_ready(*modules: torch.nn.Module):
    """Let gradients flow *through* frozen modules: parameters that require grad are frozen, and tensors made
    under ``torch.inference_mode`` (which autograd refuses to save, e.g. every weight ComfyUI loads) are swapped
    for ordinary copies.  Everything is put back on exit, whatever happens.
    """
    swapped, frozen = [], []
    try:
        with torch.inference_mode(False):
            for module in modules:
                for owner in module.modules():
                    for store in (owner._parameters, owner._buffers):
                        for name, tensor in list(store.items()):
                            if tensor is None:
                                continue
                            if tensor.is_inference():
                                copy = tensor.detach().clone()
                                store[name] = torch.nn.Parameter(copy, requires_grad=False) if store is owner._parameters else copy
                                swapped.append((store, name, tensor))
                            elif tensor.requires_grad:
                                tensor.requires_grad_(False)
                                frozen.append(tensor)
        yield
    finally:
        for store, name, tensor in reversed(swapped):
            store[name] = tensor
        for tensor in frozen:
            tensor.requires_grad_(True)


def is_edited(branch: str, edit_branches: str) -> bool:
    """Whether an h edit touches ``branch`` (cond, uncond or single) under ``edit_branches``."""
    if edit_branches not in EDIT_BRANCHES:
        raise ValueError(f"edit_branches must be one of {EDIT_BRANCHES}, got {edit_branches!r}.")
    return branch == "single" or edit_branches == "both" or branch == edit_branches


def take_rows(value, rows: torch.Tensor, batch: int):
    """``value`` with every tensor of ``batch`` rows (nested in dicts, lists and tuples) cut to ``rows``."""
    if torch.is_tensor(value):
        return value[rows] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: take_rows(v, rows, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(take_rows(v, rows, batch) for v in value)
    return value


def edited_rows(h: torch.Tensor, t: int, branches: tuple[str, ...], edit: HEdit, edit_branches: str) -> torch.Tensor:
    """Apply ``edit`` to the rows of the branches chosen by ``edit_branches`` (cond, uncond or both)."""
    out = []
    for branch, rows in zip(branches, h.chunk(len(branches))):
        out.append(edit(rows, t, branch) if is_edited(branch, edit_branches) else rows)
    edited = torch.cat(out)
    if edited.shape != h.shape:
        raise ValueError(f"An h edit changed h's shape from {tuple(h.shape)} to {tuple(edited.shape)}.")
    return edited


def guided(outputs: torch.Tensor, branches: tuple[str, ...], guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): out_u + s·(out_c − out_u) over branch-major rows."""
    if branches == ("single",):
        return outputs
    uncond, cond = outputs.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def fingerprint_of(arch: dict, weights) -> str:
    """'arch-hash/weights-hash': what a saved trajectory or direction is checked against.

    ``weights`` is an iterable of tensors (``module.parameters()``), a state dict (name → tensor; hashed in its
    order, values only) or raw bytes (e.g. a checkpoint file's contents).  Each tensor contributes its shape, the
    sum of its first 64 values and the sum of all its values (float64, on the CPU: the same fingerprint on every device).
    """
    arch_hash = hashlib.sha1(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()[:12]
    h = hashlib.sha1()
    if isinstance(weights, (bytes, bytearray, memoryview)):
        h.update(bytes(weights))
        return f"{arch_hash}/{h.hexdigest()[:12]}"
    items = weights.items() if isinstance(weights, dict) else enumerate(weights)
    with torch.no_grad():
        for name, p in items:
            if not torch.is_tensor(p):
                raise ValueError(f"fingerprint_of needs tensors (or bytes); entry {name!r} is a {type(p).__name__}.")
            flat = p.detach().flatten().to("cpu", torch.float64)
            h.update(f"{tuple(p.shape)}:{float(flat[:64].sum()):.6e}:{float(flat.sum()):.6e}".encode())
    return f"{arch_hash}/{h.hexdigest()[:12]}"
