"""H-Space Load Pixel U-Net: a diffusers UNet2DModel (DDPM CelebA-HQ, church, bedroom, the bundled demo) as a MODEL."""
from __future__ import annotations

import os

from comfy_api.latest import io

import folder_paths

from .common import CATEGORY
from .pixel_model import is_pixel_unet_folder, load_pixel_unet, pixel_model_patcher

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = {"bundled/hspace-shapes-ddpm": os.path.join(PACK_ROOT, "models", "hspace-shapes-ddpm")}


def pixel_unet_folders() -> dict[str, str]:
    found = {name: path for name, path in BUNDLED.items() if is_pixel_unet_folder(path)}
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                if is_pixel_unet_folder(os.path.join(root, name)):
                    found[name] = os.path.join(root, name)
    return found


class LoadPixelUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceLoadPixelUNet", display_name="H-Space Load Pixel U-Net", category=f"{CATEGORY}/loaders",
            description="Load a pixel-space diffusers UNet2DModel and its scheduler as a MODEL (use VAELoader "
                        "'pixel_space' as its VAE). Folders come from models/diffusers; a Hub repo id works when online.",
            inputs=[io.Combo.Input("unet_folder", options=sorted(pixel_unet_folders()) or ["(none found)"],
                                   tooltip="A diffusers folder (config.json + weights + scheduler config) in models/diffusers."),
                    io.String.Input("repo_id", default="", optional=True,
                                    tooltip="Instead of a folder: a Hub id such as google/ddpm-celebahq-256 (downloads once).")],
            outputs=[io.Model.Output("model", tooltip="The pixel U-Net as a ComfyUI MODEL.")],
        )

    @classmethod
    def execute(cls, unet_folder, repo_id="") -> io.NodeOutput:
        if repo_id and repo_id.strip():
            source = repo_id.strip()
        else:
            folders = pixel_unet_folders()
            if unet_folder not in folders:
                raise ValueError(f"No pixel U-Net folder {unet_folder!r}; put a diffusers UNet2DModel folder in models/diffusers.")
            source = folders[unet_folder]
        unet, scheduler = load_pixel_unet(source)
        return io.NodeOutput(pixel_model_patcher(unet, scheduler))
