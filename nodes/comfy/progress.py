"""Progress, Cancel and latent previews for the pack's long nodes (ComfyUI's ProgressBar and previewer)."""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils

log = logging.getLogger("hspace")


def progress_bar(total: int, model=None):
    """A progress callback ``update(done, total, x0=None)`` for the core that also honours Cancel at every step.
    Given the MODEL, an ``x0`` passed to it (the step's denoised latent, model space) is sent as ComfyUI's latent
    preview (``latent_preview``'s previewer, as core samplers do; none when the server runs without previews).
    A preview that cannot be made is logged once and dropped: it never fails the run."""
    bar = comfy.utils.ProgressBar(total)
    previewer = _previewer(model) if model is not None else None

    def update(done, total_now, x0=None):
        nonlocal previewer
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = None
        if previewer is not None and x0 is not None:
            try:
                preview = previewer.decode_latent_to_preview_image("JPEG", x0)
            except Exception as e:  # a preview is a nicety: log it, keep sampling
                log.warning("H-Space: latent preview failed (%s: %s); this run continues without previews.",
                            type(e).__name__, e)
                previewer = None
        bar.update_absolute(done, total_now, preview)

    return update


def _previewer(model):
    """ComfyUI's previewer for ``model``'s latent format (None, logged, where it cannot be made)."""
    try:
        import latent_preview

        return latent_preview.get_previewer(model.load_device, model.model.latent_format)
    except Exception as e:
        log.warning("H-Space: no latent preview for this model (%s: %s).", type(e).__name__, e)
        return None
