"""H-Space Load Pixel U-Net: a diffusers UNet2DModel (DDPM CelebA-HQ, church, bedroom, the bundled demo), a
DDIM-repo checkpoint file (Asyrp / InjectFusion's celeba_hq.ckpt, ema_lsun_*) or an openai guided-diffusion / iDDPM
UNetModel checkpoint (AFHQ-dog, METFACES, ImageNet) as a MODEL."""
from __future__ import annotations

import os
import re

from comfy_api.latest import io

import folder_paths

from ..hspace_core.checkpoints import BETA_SCHEDULES, CHECKPOINT_EXTENSIONS, load_checkpoint
from .common import CATEGORY, advanced, file_state
from .pixel_model import is_pixel_unet_folder, load_pixel_unet_folder, load_pixel_unet_hub, pixel_model_patcher

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = {"bundled/hspace-shapes-ddpm": os.path.join(PACK_ROOT, "models", "hspace-shapes-ddpm")}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def pixel_unet_folders() -> dict[str, str]:
    found = {name: path for name, path in BUNDLED.items() if is_pixel_unet_folder(path)}
    for root in diffusers_roots():
        for name in sorted(os.listdir(root)):
            if is_pixel_unet_folder(os.path.join(root, name)):
                found[name] = os.path.join(root, name)
    return found


def diffusers_roots() -> list[str]:
    return [root for root in folder_paths.get_folder_paths("diffusers") if os.path.isdir(root)]


def checkpoint_files() -> dict[str, str]:
    """Checkpoint files (.safetensors, .pt, .pth, .ckpt) in models/diffusion_models and at the top of
    models/diffusers, by the name the loader lists them under."""
    found = {}
    for name in folder_paths.get_filename_list("diffusion_models"):
        if name.lower().endswith(CHECKPOINT_EXTENSIONS):
            found[name] = folder_paths.get_full_path("diffusion_models", name)
    for root in diffusers_roots():
        for name in sorted(os.listdir(root)):
            if name.lower().endswith(CHECKPOINT_EXTENSIONS) and os.path.isfile(os.path.join(root, name)):
                found.setdefault(name, os.path.join(root, name))
    return found


def _model_roots() -> list[str]:
    roots = diffusers_roots() + list(folder_paths.get_folder_paths("diffusion_models"))
    return [os.path.realpath(root) for root in roots if os.path.isdir(root)]


def local_folder(unet_folder: str, repo_id: str) -> str | None:
    """The folder or checkpoint file to load, or None for a Hub id.  ``repo_id`` is a Hub id (org/name), a
    checkpoint file's name in models/diffusion_models, or a pixel U-Net folder / checkpoint file under
    models/diffusers or models/diffusion_models; any other path is refused, so no file outside the model folders is
    read."""
    repo_id = (repo_id or "").strip()
    if not repo_id:
        folders = {**pixel_unet_folders(), **checkpoint_files()}
        if unet_folder not in folders:
            raise ValueError(f"No pixel U-Net folder or checkpoint {unet_folder!r}; put a diffusers UNet2DModel folder "
                             "in models/diffusers or a DDIM-repo / guided-diffusion checkpoint in "
                             "models/diffusion_models.")
        return folders[unet_folder]
    files = checkpoint_files()
    if repo_id in files:
        return files[repo_id]
    if HUB_ID.fullmatch(repo_id) and ".." not in repo_id and not repo_id.lower().endswith(CHECKPOINT_EXTENSIONS):
        return None
    path = os.path.realpath(repo_id)
    inside = any(os.path.commonpath([path, root]) == root for root in _model_roots())
    usable = is_pixel_unet_folder(path) or (os.path.isfile(path) and path.lower().endswith(CHECKPOINT_EXTENSIONS))
    if not inside or not usable:
        raise ValueError(f"repo_id {repo_id!r} is neither a Hub id (org/name, e.g. google/ddpm-celebahq-256) nor a "
                         "diffusers UNet2DModel folder or checkpoint file (.safetensors/.pt/.pth/.ckpt) under "
                         "models/diffusers or models/diffusion_models; clear it to use unet_folder.")
    return path


class LoadPixelUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceLoadPixelUNet", display_name="H-Space Load Pixel U-Net", category=f"{CATEGORY}/loaders",
            description="Load a pixel-space diffusers UNet2DModel and its scheduler, a DDIM-repo Model checkpoint "
                        "(Asyrp / InjectFusion's celeba_hq.ckpt, ema_lsun_*) or an openai guided-diffusion / iDDPM "
                        "UNetModel checkpoint (AFHQ-dog, METFACES, ImageNet), as a MODEL (use VAELoader 'pixel_space' "
                        "as its VAE). Folders come from models/diffusers, checkpoint files from models/diffusion_models; "
                        "a Hub repo id works when online.",
            inputs=[io.Combo.Input("unet_folder", options=(sorted(pixel_unet_folders()) + sorted(checkpoint_files()))
                                   or ["(none found)"],
                                   tooltip="A diffusers folder (config.json + weights + scheduler config) in "
                                           "models/diffusers, or a DDIM-repo / guided-diffusion checkpoint file "
                                           "(.ckpt/.pt/.pth/.safetensors) in models/diffusion_models."),
                    io.String.Input("repo_id", default="", optional=True,
                                    tooltip="Instead of a folder: a Hub id such as google/ddpm-celebahq-256 (downloads "
                                            "once), a checkpoint's name in models/diffusion_models, or the path of a "
                                            "folder or checkpoint file under models/diffusers or models/diffusion_models."),
                    advanced(io.Combo.Input(
                        "beta_schedule", options=["auto", *BETA_SCHEDULES], default="auto", optional=True,
                        tooltip="Checkpoint files only (a diffusers folder carries its scheduler): the β schedule the "
                                "model was trained with. auto: linear for DDIM-repo files, and for guided-diffusion "
                                "files unless recognised as a cosine-schedule model (a warning says so); cosine for "
                                "improved-DDPM models.")),
                    advanced(io.Int.Input(
                        "class_label", default=-1, min=-1, max=1_000_000, optional=True,
                        tooltip="Class-conditional guided-diffusion checkpoints (ImageNet) only: the class "
                                "(0 … classes−1) the model is fixed to; -1 for unconditional models."))],
            outputs=[io.Model.Output("model", tooltip="The pixel U-Net as a ComfyUI MODEL.")],
        )

    @classmethod
    def fingerprint_inputs(cls, unet_folder, repo_id="", beta_schedule="auto", class_label=-1):
        """Re-run when the folder's files (or a checkpoint and its settings JSON) change (a Hub id is cached by the
        Hub client itself)."""
        try:
            path = local_folder(unet_folder, repo_id)
        except ValueError:
            return None
        if path is None or not os.path.isfile(path):
            return file_state(path)
        return file_state(path), file_state(os.path.splitext(path)[0] + ".json")

    @classmethod
    def execute(cls, unet_folder, repo_id="", beta_schedule="auto", class_label=-1) -> io.NodeOutput:
        folder = local_folder(unet_folder, repo_id)
        if folder is not None and os.path.isfile(folder):
            unet, scheduler = load_checkpoint(folder, beta_schedule=None if beta_schedule == "auto" else beta_schedule,
                                              class_label=None if class_label < 0 else class_label)
            if unet.class_embedding is not None:
                raise ValueError(f"{os.path.basename(folder)} is class-conditional ({unet.config.num_class_embeds} "
                                 "classes): set class_label to the class to generate (0 … classes−1).")
            return io.NodeOutput(pixel_model_patcher(unet, scheduler))
        if beta_schedule != "auto" or class_label >= 0:
            raise ValueError("beta_schedule and class_label apply to checkpoint files; a diffusers folder or Hub "
                             "model carries its own scheduler config and class handling: set them to auto and -1.")
        unet, scheduler = load_pixel_unet_hub(repo_id.strip()) if folder is None else load_pixel_unet_folder(folder)
        return io.NodeOutput(pixel_model_patcher(unet, scheduler))
