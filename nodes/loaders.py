"""H-Space Load Pixel U-Net: a diffusers UNet2DModel (DDPM CelebA-HQ, church, bedroom, the bundled demo), a
DDIM-repo checkpoint file (Asyrp / InjectFusion's celeba_hq.ckpt, ema_lsun_*) or an openai guided-diffusion / iDDPM
UNetModel checkpoint (AFHQ-dog, METFACES, ImageNet; EDM-preconditioned ones as an EDM MODEL) as a MODEL."""
from __future__ import annotations

import os
import re

from comfy_api.latest import io

import folder_paths

from ..hspace_core.checkpoints import CHECKPOINT_EXTENSIONS, LoadedCheckpoint, log_settings_check, read_checkpoint
from .layer import CATEGORY, HSpaceNode, file_state
from .comfy.pixel_model import (is_pixel_unet_folder, load_pixel_unet_folder, load_pixel_unet_hub, pixel_edm_patcher,
                                pixel_model_patcher)

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


class LoadPixelUNet(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceLoadPixelUNet", display_name="H-Space Load Pixel U-Net", category=f"{CATEGORY}/loaders",
            description="Load a pixel-space diffusers UNet2DModel and its scheduler, a DDIM-repo Model checkpoint "
                        "(Asyrp / InjectFusion's celeba_hq.ckpt, ema_lsun_*) or an openai guided-diffusion / iDDPM "
                        "UNetModel checkpoint (AFHQ-dog, METFACES, ImageNet), as a MODEL (use VAELoader 'pixel_space' "
                        "as its VAE). Folders come from models/diffusers, checkpoint files from models/diffusion_models; "
                        "a Hub repo id works when online. What a checkpoint does not record (β schedule: linear "
                        "unless said; ε or v prediction; class label; head split) goes in a JSON file beside it: "
                        "<name>.json, e.g. {\"beta_schedule\": \"cosine\"} or {\"parameterization\": \"v\"}. "
                        "EDM files ({\"parameterization\": \"edm\"}) load as ComfyUI EDM MODELs; consistency "
                        "models and x0 predictors are refused: load them with hspace_core.checkpoints.load_checkpoint. "
                        "An EDM file's settings are checked against the alternatives (consistency scalings, other "
                        "sigma_data) by denoising loss on synthetic probes; a warning shows on the node.",
            inputs=[io.Combo.Input("unet_folder", options=(sorted(pixel_unet_folders()) + sorted(checkpoint_files()))
                                   or ["(none found)"],
                                   tooltip="A diffusers folder (config.json + weights + scheduler config) in "
                                           "models/diffusers, or a DDIM-repo / guided-diffusion checkpoint file "
                                           "(.ckpt/.pt/.pth/.safetensors) in models/diffusion_models."),
                    io.String.Input("repo_id", default="", optional=True,
                                    tooltip="Instead of a folder: a Hub id such as google/ddpm-celebahq-256 (downloads "
                                            "once), a checkpoint's name in models/diffusion_models, or the path of a "
                                            "folder or checkpoint file under models/diffusers or models/diffusion_models.")],
            outputs=[io.Model.Output("model", tooltip="The pixel U-Net as a ComfyUI MODEL.")],
        )

    @classmethod
    def fingerprint_inputs(cls, unet_folder, repo_id=""):
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
    def execute(cls, unet_folder, repo_id="") -> io.NodeOutput:
        model, found = _load(unet_folder, repo_id)
        if hasattr(model, "cached_patcher_init"):  # ComfyUI ≥ 0.33: how core makes a fresh copy (multi-GPU)
            model.cached_patcher_init = (load_pixel_model, (unet_folder, repo_id))
        return io.NodeOutput(model, ui={"text": [found]}) if found else io.NodeOutput(model)


def load_pixel_model(unet_folder: str, repo_id: str = "", disable_dynamic: bool = False):
    """The loader's MODEL, loaded from its files: core's ``cached_patcher_init`` factory, which
    ``ModelPatcher.deepclone_multigpu`` calls for a fresh, unpatched copy (and ``clone(disable_dynamic=True)`` with
    ``disable_dynamic``: pixel U-Nets are plain ModelPatchers, never dynamic, so it changes nothing)."""
    return _load(unet_folder, repo_id)[0]


def _load(unet_folder: str, repo_id: str):
    """(MODEL, the settings check's message for an EDM-style checkpoint, else None).  A checkpoint's settings the file
    cannot carry (β schedule, class label, head split) come from the JSON file beside it
    (``hspace_core.checkpoints.settings_beside``)."""
    folder = local_folder(unet_folder, repo_id)
    if folder is None:
        unet, scheduler = load_pixel_unet_hub(repo_id.strip())
    elif os.path.isfile(folder):
        loaded = read_checkpoint(folder)
        if not loaded.settings.sigma_parameterised or loaded.unet.class_embedding is not None:
            return checkpoint_model(loaded), None  # (which refuses an unfixed class or condition)
        found = log_settings_check(loaded)  # before checkpoint_model, which may cast the U-Net
        return checkpoint_model(loaded), found.message
    else:
        unet, scheduler = load_pixel_unet_folder(folder)
    return pixel_model_patcher(unet, scheduler), None


def checkpoint_model(loaded: LoadedCheckpoint):
    """The MODEL of a checkpoint: ε or v prediction on its β schedule, or EDM-preconditioned (ComfyUI's EDM model
    type); consistency-model scalings, x0 prediction and per-image labels are refused, saying what to use."""
    settings, sidecar, unet = loaded.settings, os.path.splitext(loaded.name)[0] + ".json", loaded.unet
    if settings.parameterization in ("x0", "consistency"):
        what = ("a consistency model (boundary-condition c_skip, c_out, which ComfyUI's EDM model type does not "
                "apply)" if settings.sigma_parameterised else "an x0 predictor on the β schedule")
        raise ValueError(f"{loaded.name} is {what}: parameterization {settings.parameterization!r} in {sidecar}. "
                         "H-Space Load Pixel U-Net builds ε- and v-prediction MODELs on a 1000-step β schedule and "
                         "EDM MODELs. Use the library instead: hspace_core.checkpoints.load_checkpoint(path) returns "
                         "an hs.Denoiser ready for invert / edit / inject (docs/adapters.md, 'Checkpoints'); or, if "
                         "that is what the model is, set parameterization to \"eps\", \"v\" or \"edm\" in the file.")
    if settings.clip_denoised:
        raise ValueError(f"{loaded.name}: clip_denoised is set in {sidecar}, but ComfyUI's EDM model type does not "
                         "clamp D(x, σ): H-Space Load Pixel U-Net would run it unclamped. Use the library "
                         "(hspace_core.checkpoints.load_checkpoint applies it) or remove clip_denoised from the file.")
    if unet.class_embedding is not None:
        if unet.config.class_embed_type == "identity":
            raise ValueError(f"{loaded.name} has a continuous conditioning input (a label_emb MLP): fix the input "
                             f"to generate with in {sidecar} beside it, e.g. {{\"condition\": [0.5, 1.0]}} (as many "
                             "numbers as label_emb takes).")
        raise ValueError(f"{loaded.name} is class-conditional ({unet.config.num_class_embeds} classes): fix the class "
                         f"to generate in {sidecar} beside it, e.g. " '{"class_label": 207}.')
    if settings.sigma_parameterised:
        scale = 1000.0 if settings.noise_input == "consistency" else 1.0  # ComfyUI gives ¼ ln σ
        return pixel_edm_patcher(unet, settings.sigma_data, settings.sigma_min, settings.sigma_max, scale)
    return pixel_model_patcher(unet, loaded.scheduler)
