"""Reading checkpoint files: the tensors of a .safetensors / pickle file, unwrapped to a state dict, and the
comparison of a converted state dict with the module it must fill."""
from __future__ import annotations

import os
import re

import torch

CHECKPOINT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
__all__ = ["CHECKPOINT_EXTENSIONS", "read_state_dict", "state_dict_of", "key_mismatch", "fit_problems", "count_indices",
           "load_tensors"]


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors / .pt / .pth / .ckpt file, on the CPU.

    Pickles are read with ``torch.load(weights_only=True)`` (no code runs).  A training checkpoint that wraps the
    weights (``{"state_dict": …}``, ``{"model": …}``, ``{"ema": …}``, or the DDIM repo's list [model, optimiser,
    epoch, step, ema]) is unwrapped, preferring the EMA weights; DataParallel's ``module.`` prefix is dropped.
    """
    if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
        raise ValueError(f"{os.path.basename(path)} is not a checkpoint file; use one of {CHECKPOINT_EXTENSIONS}.")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            raw = load_file(path, device="cpu")
        except Exception as error:  # noqa: BLE001 - any unreadable file becomes one clear message
            raise ValueError(f"Could not read {os.path.basename(path)} as a checkpoint of tensors "
                             f"({type(error).__name__}: {first_line(error)}); the file is truncated or not "
                             "safetensors.") from None
    else:
        raw = load_tensors(path, "a checkpoint of tensors")
    return state_dict_of(raw, os.path.basename(path))


TENSORS_ONLY = ("save the weights alone where the model was made: torch.save(model.state_dict(), \"name.pt\") or "
                "safetensors.torch.save_file(model.state_dict(), \"name.safetensors\")")


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def load_tensors(path: str, what: str, hint: str = ""):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only, no code runs.

    A refusal is our own message, never torch's: torch's advises ``weights_only=False``, which would run whatever
    code the file carries.  A file naming Python classes or functions is refused as holding code, one torch cannot
    parse as truncated or foreign; both say the file is not ``what`` (then ``hint``) and how to make a tensors-only
    file."""
    name = os.path.basename(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file becomes one clear message
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found or "Unsupported global" in str(error):
            why = (f"it holds Python code, not only tensors{f' (it names {found.group(1)})' if found else ''}, and "
                   "was refused as unsafe: loading it would run that code")
        else:
            detail = "" if "weights_only" in str(error) else f" ({type(error).__name__}: {first_line(error)})"
            why = f"it is truncated or not a torch file{detail}"
        raise ValueError(f"{name} is not {what}: {why}.{hint} Get a tensors-only file: {TENSORS_ONLY}.") from None


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


def key_mismatch(expected: dict, given: dict) -> tuple[list, list, list]:
    """Keys missing from ``given``, keys it has in excess, and (key, expected shape, given shape) of the keys whose
    shapes differ."""
    missing = [k for k in expected if k not in given]
    shapes = [(k, tuple(expected[k].shape), tuple(given[k].shape)) for k in expected
              if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    return missing, [k for k in given if k not in expected], shapes


def fit_problems(expected: dict, given: dict, origins: dict | None = None) -> str:
    """What keeps the converted weights ``given`` from filling a module whose state dict is ``expected``, naming the
    file's keys (``origins``: converted key → the file's), or "" when they fit."""
    origins = origins or {}

    def named(key):
        return f"{origins[key]} (as {key})" if key in origins and origins[key] != key else key

    missing, unexpected, shapes = key_mismatch(expected, given)
    problems = [f"shape mismatch: {named(k)} is {list(got)} in the file but the architecture read off the other "
                f"weights needs {list(want)}" for k, want, got in shapes[:3]]
    if missing:
        problems.append(f"no weights in the file for {', '.join(missing[:4])} (diffusers names: the file lacks a "
                        "layer this architecture has, or is truncated)")
    if unexpected:
        problems.append(f"weights the architecture has no place for: {', '.join(named(k) for k in unexpected[:4])}")
    return "; ".join(problems)
