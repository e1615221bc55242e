"""The node pack and ComfyUI imported in this process (no server), for in-process tests and benchmarks."""
from __future__ import annotations

import copy
import importlib
import sys

import torch

from .packages import import_folder
from .server import REPO as ROOT


def load_pack(cpu: bool = True):
    """(nodes.comfy.model, nodes.comfy.pixel_model) of this checkout, with ComfyUI on the path in CPU mode (``cpu``
    False: on the GPU ComfyUI finds, for the GPU benchmarks; set before the first import of ComfyUI in a process)."""
    from .server import comfy_dir

    sys.path.insert(0, comfy_dir())
    from comfy.cli_args import args

    args.cpu = cpu
    import utils.extra_config  # noqa: F401  (before `nodes`, as ComfyUI's main.py does)

    import_folder("hspace_pack", ROOT)
    import hspace_pack.nodes.comfy.model as comfy_model
    import hspace_pack.nodes.comfy.pixel_model as pixel_model

    return comfy_model, pixel_model


def _run_layer():
    """``nodes.comfy.run`` of this checkout (imported once, with ComfyUI, as ``load_pack`` does)."""
    return sys.modules.get("hspace_pack.nodes.comfy.run") or node_module("nodes.comfy.run")


def run_in_comfy(*args, **kwargs):
    """``nodes.comfy.run.run_in_comfy`` of this checkout, for in-process tests and benchmarks."""
    return _run_layer().run_in_comfy(*args, **kwargs)


def latent_out(model, x: torch.Tensor) -> dict:
    """``nodes.comfy.run.latent_out`` of this checkout."""
    return _run_layer().latent_out(model, x)


def node_module(name: str):
    """A module of the pack's nodes layer by its dotted path in this checkout (e.g. "nodes.layer.grids"), imported
    with ComfyUI as ``load_pack`` does."""
    load_pack()
    return importlib.import_module(f"hspace_pack.{name}")


SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2] * 4,
                 channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768, num_heads=8, num_head_channels=-1,
                 use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False, adm_in_channels=None)


def comfy_patcher(unet_config: dict, prediction: str = "eps", seed: int = 0, family: str = "SD15"):
    """A ModelPatcher over ComfyUI's own UNetModel, random weights: ``unet_config`` in the model family
    ``family`` (a ``comfy.supported_models`` class: SD15, SD20, SDXL), built as that family's ``get_model`` does."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    from .tiny_models import _init_all

    config = getattr(comfy.supported_models, family)(copy.deepcopy(dict(unet_config, dtype=torch.float32)))
    kind = comfy.model_base.ModelType.V_PREDICTION if prediction == "v" else comfy.model_base.ModelType.EPS
    model_class = comfy.model_base.SDXL if family == "SDXL" else comfy.model_base.BaseModel
    base = model_class(config, model_type=kind, device="cpu")
    _init_all(base.diffusion_model, torch.Generator().manual_seed(seed))
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def sd15_comfy_patcher(seed: int = 0):
    """Stable Diffusion 1.5's U-Net architecture in ComfyUI (860 M random weights)."""
    return comfy_patcher(SD15_UNET, seed=seed)
