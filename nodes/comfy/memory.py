"""Memory reservation for the rows a process really runs (one rule, ``rows_run``; the nodes through
``run_in_comfy(rows=…)``, the SAMPLERs through ``reserve_rows``)."""
from __future__ import annotations

import logging

import comfy.model_management

from . import edit_batch

log = logging.getLogger("hspace")


def rows_run(model, batch: int, *, copies: int = 1, edited: bool = False) -> int:
    """How many latent rows one U-Net call of a process runs: the one rule behind every memory reservation
    (``run_in_comfy(rows=…)`` for the nodes, ``reserve_rows`` for the SAMPLERs).  ``copies`` of each of ``batch``
    latents (the Direction Explorer's strengths, Jacobian Directions' k + oversample probes), twice over when an edited
    step is the one-call [x; x] of ``edit_batch`` (plain and edited rows), which a U-Net that cannot take it replaces
    by two calls of the plain rows.  ComfyUI's own estimate then doubles it again for cond and uncond."""
    one_call = edited and edit_batch.supports_edited_copies(model.get_model_object("diffusion_model"))
    return batch * copies * (2 if one_call else 1)


def reserve_rows(guider, rows: int, shape) -> None:
    """Inside a guider's sampling (the body of a SAMPLER), reserve memory for ``rows`` latent rows of ``shape`` as
    ComfyUI's ``sampler_helpers.prepare_sampling`` does for the latent: its ``estimate_memory`` over the guider's conds
    plus the ControlNets' inference memory, through ``load_models_gpu`` with the guider's other loaded models
    (ControlNets, GLIGEN, hooks' models).  The guider reserved for ``shape[0]`` rows; ``rows`` equal to that is a no-op."""
    if rows == shape[0]:
        return
    import comfy.sampler_helpers as helpers

    patcher, conds = guider.model_patcher, getattr(guider, "conds", None)
    if conds is None:
        log.info("H-Space: this guider (%s) has no conds to estimate memory from; it keeps its reservation for %d "
                 "rows while the sampler runs %d.", type(guider).__name__, shape[0], rows)
        return
    _, inference_memory = helpers.get_additional_models(conds, patcher.model_dtype())
    required, minimum = helpers.estimate_memory(patcher, [rows, *shape[1:]], conds)
    others = list(getattr(guider, "loaded_models", None) or [])
    comfy.model_management.load_models_gpu([patcher, *others], memory_required=required + inference_memory,
                                           minimum_memory_required=minimum + inference_memory)


def with_row_reservation(model, rows: int):
    """A clone of ``model`` for which ComfyUI reserves memory as for a batch of ``rows`` latents (a
    PREPARE_SAMPLING wrapper hands ``estimate_memory`` that batch size; nothing else changes)."""
    import comfy.patcher_extension as ext

    def reserve(executor, model_patcher, noise_shape, conds, *args, **kwargs):
        return executor(model_patcher, [rows, *noise_shape[1:]], conds, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.PREPARE_SAMPLING, "hspace_rows", reserve)
    return clone
