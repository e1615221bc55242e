"""Memory reservation for the rows a process really runs (one rule, ``rows_run``; the nodes through
``run_in_comfy(rows=…)``, the SAMPLERs through ``reserve_rows``)."""
from __future__ import annotations

import logging
from typing import Callable

import comfy.model_management

from . import edit_batch

log = logging.getLogger("hspace")
ROWS_KEY = "hspace_rows_per_latent"  # model_options: rows each model call runs per row given (``with_rows_per_latent``)


def rows_run(model, batch: int, *, copies: int = 1, edited: bool = False) -> int:
    """How many latent rows one U-Net call of a process runs: the one rule behind every memory reservation
    (``run_in_comfy(rows=…)`` for the nodes, ``reserve_rows`` for the SAMPLERs).  ``copies`` of each of ``batch``
    latents (the Direction Explorer's strengths, Jacobian Directions' k + oversample probes), twice over when an edited
    step is the one-call [x; x] of ``edit_batch`` (plain and edited rows), which a U-Net that cannot take it replaces
    by two calls of the plain rows, times the rows a MODEL patch adds to each call (``with_rows_per_latent``).
    ComfyUI's own estimate then doubles it again for cond and uncond."""
    one_call = edited and edit_batch.supports_edited_copies(model.get_model_object("diffusion_model"))
    return batch * copies * (2 if one_call else 1) * model.model_options.get(ROWS_KEY, 1)


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


def with_row_reservation(model, rows: int | Callable[[int], int]):
    """A clone of ``model`` for which ComfyUI reserves memory as for a batch of ``rows`` latents, or of
    ``rows(n)`` for a latent of n rows (a model patch that runs more rows per call: FluxSpace Edit); a
    PREPARE_SAMPLING wrapper hands ``estimate_memory`` that batch size; nothing else changes."""
    import comfy.patcher_extension as ext

    def reserve(executor, model_patcher, noise_shape, conds, *args, **kwargs):
        n = rows(noise_shape[0]) if callable(rows) else rows
        return executor(model_patcher, [n, *noise_shape[1:]], conds, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.PREPARE_SAMPLING, "hspace_rows", reserve)
    return clone


def with_rows_per_latent(model, rows: int):
    """A clone of ``model`` whose model calls run ``rows`` rows for each row they are given (a MODEL patch's own
    rows: FluxSpace Edit's edit and null prompts): ``rows_run`` counts them for the pack's processes, and a
    PREPARE_SAMPLING wrapper makes ComfyUI reserve memory for them under any sampler."""
    clone = with_row_reservation(model, lambda n: n * rows)
    clone.model_options[ROWS_KEY] = model.model_options.get(ROWS_KEY, 1) * rows
    return clone
