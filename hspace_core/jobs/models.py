"""The model a job runs: a diffusers pipeline folder (``unet/`` + ``scheduler/``, as the bundled
models/hspace-shapes-ddpm), a ``UNet2DModel`` folder with its ``scheduler_config.json``, or a checkpoint file the
library's loaders read (``hspace_core.checkpoints.load_checkpoint``)."""
from __future__ import annotations

import json
import logging
import os

import torch

from ..adapters import DiffusersUNet, HSpaceModel, fingerprint_of
from ..sites import DEFAULT_SITE, check_site

log = logging.getLogger("hspace.jobs")


def _first_file(*paths: str) -> str | None:
    return next((p for p in paths if os.path.isfile(p)), None)


def load_model(path: str, site: str = DEFAULT_SITE, device: str = "cpu") -> HSpaceModel:
    """The ``HSpaceModel`` at ``path`` in float32 on ``device``, reading h at ``site``."""
    check_site(site)
    if os.path.isdir(path):
        unet_dir = path if os.path.isfile(os.path.join(path, "config.json")) else os.path.join(path, "unet")
        scheduler = _first_file(os.path.join(path, "scheduler", "scheduler_config.json"),
                                os.path.join(path, "scheduler_config.json"),
                                os.path.join(os.path.dirname(os.path.normpath(path)), "scheduler", "scheduler_config.json"))
        if not os.path.isfile(os.path.join(unet_dir, "config.json")) or scheduler is None:
            raise ValueError(f"--model {path}: not a diffusers U-Net folder (it needs unet/config.json, or config.json, "
                             "and scheduler/scheduler_config.json); give a pipeline folder such as "
                             "models/hspace-shapes-ddpm or a checkpoint file.")
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32, low_cpu_mem_usage=False).to(device).eval()
        with open(scheduler) as f:
            return as_in_comfyui(DiffusersUNet(unet, json.load(f), site=site))
    if os.path.isfile(path):
        from ..checkpoints import CHECKPOINT_EXTENSIONS, load_checkpoint

        if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
            raise ValueError(f"--model {path}: a checkpoint file ends in one of {CHECKPOINT_EXTENSIONS}.")
        model = load_checkpoint(path)
        if isinstance(model, DiffusersUNet):
            model = as_in_comfyui(model)
        if site != DEFAULT_SITE:
            if not hasattr(model, "with_site"):
                raise ValueError(f"--model {path}: {type(model).__name__} reads h at the middle block only; "
                                 "drop --site.")
            model = model.with_site(site)
        network = getattr(model, "unet", None) or getattr(model, "network", None)
        if network is not None:
            network.to(device)
        return model
    raise ValueError(f"--model {path} does not exist: give a diffusers U-Net folder or a checkpoint file.")


# The 'arch' part of the fingerprint ComfyUI gives a pixel U-Net loaded by H-Space Load Pixel U-Net
# (nodes/comfy/model.model_fingerprint over nodes/comfy/pixel_model.pixel_model_patcher: the wrapper's class, the
# model type, the config class); its 'weights' part is the U-Net's parameters in order, as here.
# tests/test_jobs_e2e.py fails if the two drift apart.
COMFY_PIXEL_ARCH = {"class": "DiffusersPixelUNet", "config": "PixelUNetConfig"}
COMFY_MODEL_TYPES = {"epsilon": "EPS", "v_prediction": "V_PREDICTION"}


def as_in_comfyui(model: DiffusersUNet) -> DiffusersUNet:
    """``model`` with the fingerprint H-Space Load Pixel U-Net gives the same weights, so what a job writes loads in
    the nodes (Load Direction, Load Trajectory) with that MODEL.  The library's own ``DiffusersUNet`` fingerprint
    hashes the U-Net's config instead, which ComfyUI's wrapper does not see."""
    model_type = COMFY_MODEL_TYPES.get(model.schedule.prediction_type)
    if model_type is None:
        return model
    model._fingerprint = fingerprint_of({**COMFY_PIXEL_ARCH, "model_type": model_type}, model.unet.parameters())
    log.info("Model fingerprint %s: as H-Space Load Pixel U-Net gives it, so the results load in ComfyUI.",
             model._fingerprint)
    return model


def sample_size(model: HSpaceModel) -> tuple[int, int] | None:
    """The (height, width) the model was trained at, when its config says (a diffusers U-Net's sample_size)."""
    unet = getattr(model, "unet", None)
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def in_channels(model: HSpaceModel) -> int:
    unet = getattr(model, "unet", None)
    return int(getattr(getattr(unet, "config", None), "in_channels", 3) or 3)
