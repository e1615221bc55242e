"""The LoRA-aware fingerprint of a MODEL: a hash of the diffusion model's weights as they run, with its weight
patches applied, that directions and trajectories record and check."""
from __future__ import annotations

import inspect
import logging
import weakref

import torch

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.utils

from ...hspace_core.adapters.base import fingerprint_of

log = logging.getLogger("hspace")

_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_fingerprint(model_patcher) -> str:
    """'arch/weights' hash of the diffusion model as it runs: with this MODEL's weight patches (LoRA, merges)
    applied.  ComfyUI's clones share one ``diffusion_model`` and patch it in place, so the hash is cached per
    (model object, patch state ``patches_uuid``) and taken while this patch state is the one loaded (loading it
    first if another clone's is): the same MODEL gets the same fingerprint whatever ran before (~1 s for SD).
    A weight ComfyUI patches on the fly instead (low-VRAM and dynamic-VRAM loading) is hashed as it would run
    (``weights_as_run``), so both modes give the same fingerprint."""
    dm = model_patcher.get_model_object("diffusion_model")
    state = getattr(model_patcher, "patches_uuid", None)
    cached = _FINGERPRINTS.setdefault(dm, {})
    if state not in cached:
        current = getattr(model_patcher.model, "current_weight_patches_uuid", state)
        if current != state and (current is not None or model_patcher.patches):
            comfy.model_management.load_models_gpu([model_patcher])  # put this clone's weights in place
        arch = {"class": type(dm).__name__, "model_type": model_patcher.model.model_type.name,
                "config": type(getattr(model_patcher.model, "model_config", None)).__name__}
        cached[state] = fingerprint_of(arch, weights_as_run(model_patcher, dm))
    return cached[state]


def weights_as_run(model_patcher, dm):
    """``dm``'s parameters as the U-Net runs them, one at a time (a generator: one patched copy alive at once).
    A weight with patches that is not patched in place (not in ComfyUI's ``backup``, which every in-place patch
    fills first: the offloaded modules of a low-VRAM load, dynamic VRAM) is ``patched_weight``; the rest as they are."""
    prefix = "diffusion_model." if getattr(model_patcher.model, "diffusion_model", None) is dm else None
    if prefix is None and model_patcher.patches:
        log.warning("H-Space: this MODEL's diffusion_model is an object patch, so its fingerprint is of the weights "
                    "in place, with whichever weight patches are applied there.")
    backup = getattr(model_patcher, "backup", {})
    returns_weight = "return_weight" in inspect.signature(model_patcher.patch_weight_to_device).parameters
    on_the_fly = 0
    for name, weight in dm.named_parameters():
        key = f"{prefix}{name}"
        if prefix is not None and key in model_patcher.patches and key not in backup:
            on_the_fly += 1
            yield patched_weight(model_patcher, key, returns_weight)
        else:
            yield weight
    if on_the_fly:
        log.info("H-Space: %d weight(s) of this MODEL are patched on the fly (low-VRAM loading); its fingerprint "
                 "applies their patches to copies (%s).", on_the_fly,
                 "patch_weight_to_device(return_weight=True)" if returns_weight else
                 "this ComfyUI's patch_weight_to_device cannot return a weight: calculate_weight")


def patched_weight(model_patcher, key: str, returns_weight: bool = True) -> torch.Tensor:
    """The weight ComfyUI writes for ``key`` when it patches in place, computed without writing it, on the load
    device: ``ModelPatcher.patch_weight_to_device(return_weight=True)`` where it can (``returns_weight``), else its
    steps over ``comfy.lora.calculate_weight`` (``ModelPatcher.calculate_weight`` in older ComfyUI)."""
    device = model_patcher.load_device
    if returns_weight:
        return model_patcher.patch_weight_to_device(key, device_to=device, return_weight=True)
    weight, set_func, convert_func = comfy.model_patcher.get_key_weight(model_patcher.model, key)
    temp = comfy.model_management.cast_to_device(weight, device, torch.float32, copy=True)
    if convert_func is not None:
        temp = convert_func(temp, inplace=True)
    calculate = getattr(comfy.lora, "calculate_weight", None) or model_patcher.calculate_weight
    out = calculate(model_patcher.patches[key], temp, key)
    seed = (getattr(comfy.utils, "string_to_seed", None) or comfy.model_patcher.string_to_seed)(key)
    if set_func is not None:
        return set_func(out, seed=seed, return_weight=True)
    rounding = getattr(getattr(comfy, "float", None), "stochastic_rounding", None)
    return rounding(out, weight.dtype, seed=seed) if rounding is not None else out.to(weight.dtype)
