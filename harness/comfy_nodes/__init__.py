"""Test-only ComfyUI nodes: harness.server.prepare_base links this folder into the *test* server's custom_nodes next to
the pack; it is never part of the pack's NODE_CLASS_MAPPINGS.

``TinySDXLCheckpointLoader`` stands in for CheckpointLoaderSimple in the SDXL sample workflow;
``TinyFluxCheckpointLoader``, ``TinySD3CheckpointLoader`` and ``TinyChromaCheckpointLoader`` stand in for it on Flux,
SD3.x and Chroma (harness/tiny_dit.py); ``TinyFluxUNETLoader``, ``TinyFluxDualCLIPLoader`` and ``TinyVAE16Loader``
stand in for the three loaders of the Flux sample workflows (UNETLoader, DualCLIPLoader, VAELoader), one for one with
the same widgets, so a test swaps a node's type only.  ComfyUI's checkpoint detection only accepts a full-size SDXL
U-Net (the smallest SDXL-family match, Segmind Vega, has 780 M parameters), so the end-to-end tests swap the
workflow's loader for this node: the same MODEL / CLIP / VAE outputs, built in memory by ``harness/tiny_sdxl.py``
with ComfyUI's own SDXL classes.
"""
import os
import runpy

HARNESS = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _harness():
    """The harness package, imported under a private name (ComfyUI loads this folder by path, and the repository
    is not on sys.path in the server)."""
    runpy.run_path(os.path.join(HARNESS, "packages.py"))["import_folder"]("hspace_harness", HARNESS)
    import hspace_harness

    return hspace_harness


def _tiny_sdxl():
    """harness/tiny_sdxl.py."""
    _harness()
    import hspace_harness.tiny_sdxl as tiny_sdxl

    return tiny_sdxl


def _tiny_dit():
    """harness/tiny_dit.py."""
    _harness()
    import hspace_harness.tiny_dit as tiny_dit

    return tiny_dit


class TinySDXLCheckpointLoader:
    DESCRIPTION = ("Test harness only: a tiny random-weight SDXL (ComfyUI's SDXL model and text-encoder classes at "
                   "small widths) in place of CheckpointLoaderSimple, which cannot detect a tiny SDXL.")
    CATEGORY = "h-space test harness"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The tiny SDXL U-Net.", "Tiny CLIP-L + CLIP-G with the real tokenizers.", "A tiny TAESD VAE.")
    FUNCTION = "load"
    CHECKPOINT = "sd_xl_base_1.0.safetensors"  # the checkpoint a sample workflow names (not read)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": cls.CHECKPOINT,
                                                      "tooltip": "The checkpoint this stands in for (not read)."})}}

    def load(self, ckpt_name):
        tiny = _tiny_sdxl()
        return tiny.tiny_sdxl(), tiny.tiny_sdxl_clip(), tiny.tiny_vae()


def _stand_in(name: str, checkpoint: str, description: str, tooltips: tuple, build):
    """A stand-in for CheckpointLoaderSimple whose ``load`` returns ``build(harness.tiny_dit)``."""
    return type(name, (TinySDXLCheckpointLoader,), {
        "DESCRIPTION": f"Test harness only: {description} in place of CheckpointLoaderSimple.",
        "OUTPUT_TOOLTIPS": tooltips, "CHECKPOINT": checkpoint, "load": lambda self, ckpt_name: build(_tiny_dit())})


_VAE16 = "A tiny 16-channel TAESD VAE."
# ComfyUI 0.3.75's Flux detection fixes 24 heads of 128 channels: too large for tests, so both are built in code
TinyFluxCheckpointLoader = _stand_in(
    "TinyFluxCheckpointLoader", "flux1-dev-fp8.safetensors",
    "a tiny random-weight Flux.1-dev (ComfyUI's Flux model, CLIP-L + T5-XXL at small widths, a 16-channel TAESD)",
    ("The tiny Flux transformer.", "Tiny CLIP-L + T5-XXL with the real tokenizers.", _VAE16),
    lambda tiny: (tiny.tiny_flux(), tiny.tiny_flux_clip(), tiny.tiny_vae16()))
TinyFluxBF16CheckpointLoader = _stand_in(  # the bfloat16 lane (Flux's native dtype); text encoders stay float32
    "TinyFluxBF16CheckpointLoader", "flux1-dev.safetensors",
    "the tiny Flux.1-dev of TinyFluxCheckpointLoader with its transformer in bfloat16",
    ("The tiny Flux transformer, bfloat16.", "Tiny CLIP-L + T5-XXL with the real tokenizers.", _VAE16),
    lambda tiny: (tiny.tiny_flux(dtype="bfloat16"), tiny.tiny_flux_clip(), tiny.tiny_vae16()))
TinySD3CheckpointLoader = _stand_in(
    "TinySD3CheckpointLoader", "sd3.5_medium.safetensors",
    "a tiny random-weight SD3 (ComfyUI's MMDiT, CLIP-L + CLIP-G at small widths, a 16-channel TAESD)",
    ("The tiny SD3 MMDiT.", "Tiny CLIP-L + CLIP-G with the real tokenizers.", _VAE16),
    lambda tiny: (tiny.tiny_sd3(), tiny.tiny_sd3_clip(), tiny.tiny_vae16()))
TinyChromaCheckpointLoader = _stand_in(
    "TinyChromaCheckpointLoader", "chroma-unlocked-v50.safetensors",
    "a tiny random-weight Chroma (ComfyUI's Chroma model, T5-XXL at small width, a 16-channel TAESD)",
    ("The tiny Chroma transformer.", "Tiny T5-XXL with the real tokenizer.", _VAE16),
    lambda tiny: (tiny.tiny_chroma(), tiny.tiny_chroma_clip(), tiny.tiny_vae16()))


def _loader(name: str, inputs: tuple, returns: str, description: str, tooltip: str, build):
    """A stand-in for one stock loader: the same widget names (as STRING, not read) in the same order, one output."""
    return type(name, (), {
        "DESCRIPTION": f"Test harness only: {description}.", "CATEGORY": TinySDXLCheckpointLoader.CATEGORY,
        "RETURN_TYPES": (returns,), "OUTPUT_TOOLTIPS": (tooltip,), "FUNCTION": "load",
        "INPUT_TYPES": classmethod(lambda cls: {"required": {
            k: ("STRING", {"default": "", "tooltip": "The setting of the loader this stands in for (not read)."})
            for k in inputs}}),
        "load": lambda self, **widgets: (build(_tiny_dit()),)})


TinyFluxUNETLoader = _loader("TinyFluxUNETLoader", ("unet_name", "weight_dtype"), "MODEL",
                             "the tiny random-weight Flux transformer in place of UNETLoader",
                             "The tiny Flux transformer.", lambda tiny: tiny.tiny_flux())
TinyFluxDualCLIPLoader = _loader("TinyFluxDualCLIPLoader", ("clip_name1", "clip_name2", "type", "device"), "CLIP",
                                 "Flux's tiny CLIP-L + T5-XXL in place of DualCLIPLoader",
                                 "Tiny CLIP-L + T5-XXL with the real tokenizers.", lambda tiny: tiny.tiny_flux_clip())
TinyVAE16Loader = _loader("TinyVAE16Loader", ("vae_name",), "VAE", "a tiny 16-channel TAESD in place of VAELoader",
                          _VAE16, lambda tiny: tiny.tiny_vae16())

NODE_CLASS_MAPPINGS = {"TinySDXLCheckpointLoader": TinySDXLCheckpointLoader,
                       "TinyFluxCheckpointLoader": TinyFluxCheckpointLoader,
                       "TinyFluxBF16CheckpointLoader": TinyFluxBF16CheckpointLoader,
                       "TinySD3CheckpointLoader": TinySD3CheckpointLoader,
                       "TinyChromaCheckpointLoader": TinyChromaCheckpointLoader,
                       **{c.__name__: c for c in (TinyFluxUNETLoader, TinyFluxDualCLIPLoader, TinyVAE16Loader)}}
