"""The model a job runs: a diffusers pipeline folder (``unet/`` + ``scheduler/``, as the bundled
models/hspace-shapes-ddpm), a ``UNet2DModel`` folder with its ``scheduler_config.json``, or a checkpoint file the
library's loaders read (``hspace_core.checkpoints.load_checkpoint``)."""
from __future__ import annotations

import json
import os

import torch

from ..adapters import DiffusersUNet, HSpaceModel
from ..sites import DEFAULT_SITE, check_site


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
            return DiffusersUNet(unet, json.load(f), site=site)
    if os.path.isfile(path):
        from ..checkpoints import CHECKPOINT_EXTENSIONS, load_checkpoint

        if not path.lower().endswith(CHECKPOINT_EXTENSIONS):
            raise ValueError(f"--model {path}: a checkpoint file ends in one of {CHECKPOINT_EXTENSIONS}.")
        model = load_checkpoint(path)
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
