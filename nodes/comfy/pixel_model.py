"""A diffusers ``UNet2DModel`` as a ComfyUI MODEL (pixel space), so KSampler and every H-Space node can use it.

Pair it with the built-in VAE "pixel_space" (VAELoader), which maps IMAGE ↔ LATENT in [-1, 1].  The wrapper
honours ``output_block_patch`` the way ComfyUI's own U-Net does at the blocks where a decoder level starts: at
("output", 0) the patch gets the middle-block output h and the deepest skip; at ("output", n) with n the number
of resnets of the up blocks before, the output of those up blocks and the next skip.  It may return a new h.
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.cli_args
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base

from ...hspace_core import schedule_from_diffusers_config
from ...hspace_core.adapters.diffusers_unet import site_module
from ...hspace_core.file_format import parse_json
from ...hspace_core.schedules import sigmas_of
from ...hspace_core.sites import output_block_of_site, site_at_output_block

log = logging.getLogger("hspace")
UNET_DTYPE_FLAGS = (("fp16_unet", torch.float16), ("bf16_unet", torch.bfloat16), ("fp32_unet", torch.float32))


def flagged_unet_dtype() -> torch.dtype | None:
    """The U-Net precision asked for on ComfyUI's command line (--fp16-unet, --bf16-unet, --fp32-unet), else None."""
    args = comfy.cli_args.args
    return next((dtype for flag, dtype in UNET_DTYPE_FLAGS if getattr(args, flag, False)), None)


class DiffusersPixelUNet(torch.nn.Module):
    """ComfyUI's ``diffusion_model`` interface over a diffusers ``UNet2DModel``."""

    hspace_pixel_unet = True

    def __init__(self, unet, time_scale: float = 1.0):
        """``time_scale`` multiplies the time input ComfyUI gives (an EDM MODEL gives ¼ ln σ; networks trained on
        openai/consistency_models' 250 ln σ take it × 1000)."""
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("This UNet2DModel has no middle block (mid_block_type=None), so it has no h-space.")
        self.unet = unet
        self.time_scale = time_scale

    @property
    def size_factor(self) -> int:
        """Image sides must be multiples of this: each down block with a downsampler halves them."""
        return 2 ** sum(getattr(block, "downsamplers", None) is not None for block in self.unet.down_blocks)

    def check_sample_size(self, height: int, width: int) -> None:
        """Refuse, before sampling, an image size the U-Net's skip connections cannot match."""
        factor, trained = self.size_factor, self.unet.config.sample_size
        if height % factor or width % factor:
            size = "×".join(map(str, trained if isinstance(trained, (list, tuple)) else (trained, trained)))
            hint = f" (it was trained at {size}; e.g. ImageScale to {size})" if trained else ""
            raise ValueError(f"This pixel U-Net cannot take a {width}×{height} image: resize it so both sides are "
                             f"multiples of {factor}{hint}.")

    def block_of_site(self, site: str) -> int:
        """The output block whose ``output_block_patch`` sees h at ``site`` (``hspace_core.sites``)."""
        site_module(self.unet, site)  # refuses a site this U-Net does not have
        return output_block_of_site(site, self._blocks_per_level())

    def site_at_block(self, block: int) -> str:
        """The h site (``hspace_core.sites``) whose h the output_block_patch sees at ("output", ``block``)."""
        return site_at_output_block(block, self._blocks_per_level())

    def _blocks_per_level(self) -> list[int]:
        return [len(block.resnets) for block in self.unet.up_blocks]

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        """Through the DIFFUSION_MODEL wrappers, as ComfyUI's own ``UNetModel.forward``."""
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, context, None, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps, context=None, y=None, control=None, transformer_options={}, **kwargs):
        patches = transformer_options.get("patches", {}).get("output_block_patch", [])
        handles, skips = [], []

        def keep_skips(module, args, output):
            skips.extend(output[1] if isinstance(output, tuple) else [output])

        def patcher(block: int):
            def patch_h(module, args, output):
                options = {**transformer_options, "block": ("output", block), "block_index": block}
                h, hsp = (output if torch.is_tensor(output) else output[0]), skips[-1 - block]
                for patch in patches:
                    h, hsp = patch(h, hsp, options)
                return h if torch.is_tensor(output) else (h, *output[1:])
            return patch_h

        try:
            if patches:
                for module in (self.unet.conv_in, *self.unet.down_blocks):
                    handles.append(module.register_forward_hook(keep_skips))
                levels = (self.unet.mid_block, *self.unet.up_blocks[:-1])
                for level, module in enumerate(levels):
                    handles.append(module.register_forward_hook(patcher(sum(self._blocks_per_level()[:level]))))
            out = self.unet(x, timesteps * self.time_scale if self.time_scale != 1.0 else timesteps,
                            return_dict=False)[0]
        finally:
            for handle in handles:
                handle.remove()
        return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out


class PixelSpace(comfy.latent_formats.LatentFormat):
    """The LATENT is the image in [-1, 1] (VAELoader "pixel_space"): 3 channels, identity in and out, one latent
    pixel per image pixel (``spacial_downscale_ratio``, read by newer ComfyUI when it sizes an empty latent)."""

    latent_channels = 3
    spacial_downscale_ratio = 1
    latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # previews show the image itself

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


class PixelUNetConfig(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = PixelSpace
    memory_usage_factor = 1.0


def pixel_model_patcher(unet, scheduler_config: dict):
    """Wrap a loaded ``UNet2DModel`` and its scheduler config as a ComfyUI ``ModelPatcher``."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    types = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}
    if prediction not in types:
        raise ValueError(f"prediction_type {prediction!r} is not supported for pixel models; use epsilon or v_prediction.")
    base = _pixel_base(unet, types[prediction])
    schedule = schedule_from_diffusers_config(scheduler_config)
    base.model_sampling.set_sigmas(sigmas_of(schedule.alphas_cumprod).float())
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def pixel_edm_patcher(unet, sigma_data: float, sigma_min: float, sigma_max: float, time_scale: float = 1.0):
    """An EDM-preconditioned ``UNet2DModel`` (Karras et al. 2022, Table 1) as a ComfyUI ``ModelPatcher``: ComfyUI's
    EDM model type gives c_in·x and c_noise = ¼ ln σ (× ``time_scale``) to the network and applies c_skip, c_out
    with σ_data; its σ table is 1000 levels log-uniform over [σ_min, σ_max]."""
    sampling = {"sigma_data": sigma_data, "sigma_min": sigma_min, "sigma_max": sigma_max}
    base = _pixel_base(unet, comfy.model_base.ModelType.EDM, sampling, time_scale)
    return comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _pixel_base(unet, model_type, sampling_settings: dict | None = None, time_scale: float = 1.0):
    dtype = flagged_unet_dtype()
    if dtype is not None and dtype != next(unet.parameters()).dtype:
        log.info("The pixel U-Net runs in %s, as ComfyUI's command line asks.", str(dtype).replace("torch.", ""))
        unet = unet.to(dtype)
    config = PixelUNetConfig({"disable_unet_model_creation": True})
    config.sampling_settings = dict(sampling_settings or {})
    base = comfy.model_base.BaseModel(config, model_type=model_type, device=comfy.model_management.get_torch_device())
    base.diffusion_model = DiffusersPixelUNet(unet.eval(), time_scale)
    return base


def is_pixel_unet_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "unet", "config.json")) or _is_unet_config(os.path.join(path, "config.json"))


def _is_unet_config(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            config = parse_json(f.read(), path)
    except (OSError, ValueError) as error:  # listed as no U-Net folder; loading it names the file
        log.info("h-space: %s", error)
        return False
    return isinstance(config, dict) and config.get("_class_name") == "UNet2DModel"


def load_pixel_unet_folder(path: str):
    """A local diffusers pipeline folder (unet/ + scheduler/) or a bare UNet2DModel folder → (unet, scheduler config).

    Pickled ``.bin`` weights are read with ``torch.load(weights_only=True)`` by diffusers; one that holds more than
    tensors is refused, and the message says so instead of diffusers' "Unable to load weights"."""
    from diffusers import UNet2DModel

    sub = "unet" if os.path.isdir(os.path.join(path, "unet")) else None
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder=sub, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        weights = os.path.join(path, sub or "")
        if not any(name.endswith(".safetensors") for name in os.listdir(weights)):
            raise ValueError(
                f"The weights in {weights} were refused as unsafe: they are pickled (.bin) and hold more than plain "
                "tensors. Use diffusion_pytorch_model.safetensors (safetensors is expected).") from error
        raise ValueError(f"Could not load the UNet2DModel in {path}: {error}") from error
    sched_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(sched_path):
        sched_path = os.path.join(path, "scheduler_config.json")
    scheduler = {}
    if os.path.isfile(sched_path):
        with open(sched_path) as f:
            scheduler = parse_json(f.read(), sched_path)
        if not isinstance(scheduler, dict):
            raise ValueError(f"{sched_path} must hold a JSON object (a diffusers scheduler config).")
    return unet, scheduler


def load_pixel_unet_hub(repo_id: str):
    """A Hub repo id, e.g. google/ddpm-celebahq-256: from the local Hub cache, else downloaded once."""
    from diffusers import DDIMScheduler, UNet2DModel
    from huggingface_hub import constants

    try:
        try:
            unet = UNet2DModel.from_pretrained(repo_id, torch_dtype=torch.float32, local_files_only=True)
            scheduler = DDIMScheduler.from_pretrained(repo_id, local_files_only=True)
        except OSError:
            if constants.HF_HUB_OFFLINE:
                raise
            unet = UNet2DModel.from_pretrained(repo_id, torch_dtype=torch.float32)
            scheduler = DDIMScheduler.from_pretrained(repo_id)
    except OSError as error:
        raise ValueError(
            f"{repo_id!r} is not in models/diffusers, and the Hugging Face Hub was not reachable or has no such "
            f"model{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}. Put the diffusers folder in "
            "models/diffusers (then pick it in unet_folder), or connect once so the repo id downloads.") from error
    return unet, dict(scheduler.config)


class PixelOnlyContext(torch.Tensor):
    """The empty text context of 'H-Space Pixel Conditioning'.  It travels through ComfyUI's conditioning code like
    any tensor (repeat, cat, to); a pixel U-Net never reads it.  A text-conditioned model that uses it as its text
    (a linear layer, a matmul, attention) gets a message that says what to connect instead of a shape error."""

    MESSAGE = ("H-Space Pixel Conditioning is the empty conditioning of pixel U-Nets ('H-Space Load Pixel U-Net'), "
               "but a text-conditioned model (SD, SDXL) is using it as its text: connect CLIPTextEncode's "
               "CONDITIONING to this model's positive and negative instead.")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _USES_AS_TEXT:
            raise ValueError(cls.MESSAGE)
        return super().__torch_function__(func, types, args, kwargs or {})

    def __deepcopy__(self, memo):
        return self.detach().clone()


_USES_AS_TEXT = {torch.nn.functional.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm,
                 torch.baddbmm, torch.einsum, torch.nn.functional.scaled_dot_product_attention, torch.mm, torch.addmm}


def pixel_only_conditioning() -> list:
    """CONDITIONING for native samplers on pixel U-Nets, refused by name when a text-conditioned model uses it."""
    return [[torch.zeros(1, 1, 1).as_subclass(PixelOnlyContext), {}]]
