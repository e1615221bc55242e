"""Test-only ComfyUI nodes: harness.server.prepare_base links this folder into the *test* server's custom_nodes next to
the pack; it is never part of the pack's NODE_CLASS_MAPPINGS.

``TinySDXLCheckpointLoader`` stands in for CheckpointLoaderSimple in the SDXL sample workflow.  ComfyUI's checkpoint
detection only accepts a full-size SDXL U-Net (the smallest SDXL-family match, Segmind Vega, has 780 M parameters),
so the end-to-end tests swap the workflow's loader for this node: the same MODEL / CLIP / VAE outputs, built in memory
by ``harness/tiny_sdxl.py`` with ComfyUI's own SDXL classes.
"""
import os
import runpy

HARNESS = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _tiny_sdxl():
    """harness/tiny_sdxl.py, imported as part of the harness package (under a private name: ComfyUI loads this
    folder by path, and the repository is not on sys.path in the server)."""
    runpy.run_path(os.path.join(HARNESS, "packages.py"))["import_folder"]("hspace_harness", HARNESS)
    import hspace_harness.tiny_sdxl as tiny_sdxl

    return tiny_sdxl


class TinySDXLCheckpointLoader:
    DESCRIPTION = ("Test harness only: a tiny random-weight SDXL (ComfyUI's SDXL model and text-encoder classes at "
                   "small widths) in place of CheckpointLoaderSimple, which cannot detect a tiny SDXL.")
    CATEGORY = "h-space test harness"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The tiny SDXL U-Net.", "Tiny CLIP-L + CLIP-G with the real tokenizers.", "A tiny TAESD VAE.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": "sd_xl_base_1.0.safetensors",
                                                      "tooltip": "The checkpoint this stands in for (not read)."})}}

    def load(self, ckpt_name):
        tiny = _tiny_sdxl()
        return tiny.tiny_sdxl(), tiny.tiny_sdxl_clip(), tiny.tiny_vae()


NODE_CLASS_MAPPINGS = {"TinySDXLCheckpointLoader": TinySDXLCheckpointLoader}
