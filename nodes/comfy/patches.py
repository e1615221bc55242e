"""A MODEL patch that moves h: h̃ = h + s·Δh inside a σ window, for plain KSampler graphs (shaped like core's FreeU).

This is the symmetric simplification (Haas et al. 2024, "Discovering Interpretable Directions in h-space"): the
edited h feeds both the predicted x0 and the direction of every step, unlike Asyrp's asymmetric process (the pack's
H-Space Asyrp Sampler).  The patch goes on a clone; the MODEL it was given is never changed.
"""
from __future__ import annotations

import logging

import torch

import comfy.patcher_extension

from ...hspace_core.adapters.base import is_edited
from ...hspace_core.direction_algebra import strength_edit
from ...hspace_core.sampling import check_window_steps
from .allocations import outside_allocation_graph
from .edit_batch import branch_names
from . import dit
from .checks import is_pixel_unet, site_block
from .noise_levels import noise_levels

log = logging.getLogger("hspace")


def shifted_h(h: torch.Tensor, edit, t: int, names, edit_branches: str) -> torch.Tensor:
    """``edit`` (``strength_edit``'s h + s·Δh_t) on the rows of the branches ``edit_branches`` chooses (each chunk
    of ``h`` is a branch)."""
    rows = h.chunk(len(names))
    return torch.cat([edit(r, t, n).to(r) if is_edited(n, edit_branches) else r for n, r in zip(names, rows)])


class HShift:
    """The patch closure: reads the step's σ from ``transformer_options["sigmas"]`` (one host read per U-Net pass,
    as core's σ-gated patches do) and shifts h when σ_end ≤ σ ≤ σ_start."""

    def __init__(self, direction, strength: float, window, edit_branches: str, timestep_of, block: int):
        self.direction, self.strength, self.window = direction, float(strength), window
        self.edit = strength_edit(direction, self.strength)  # the samplers' rule; no step count in a MODEL patch
        self.edit_branches, self.timestep_of, self.block = edit_branches, timestep_of, block

    def _apply(self, h, transformer_options):
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            return h
        sigma = float(sigmas.detach().flatten()[0])
        if self.edit is None or not self.window.contains(sigma):
            return h
        t = self.timestep_of(sigma)
        with outside_allocation_graph():  # allocated inside the window only: not part of the U-Net's recorded pattern
            return shifted_h(h, self.edit, t, branch_names(transformer_options), self.edit_branches)

    def output_block(self, h, hsp, transformer_options):
        if transformer_options.get("block") != ("output", self.block):
            return h, hsp
        return self._apply(h, transformer_options), hsp  # hsp may be None on newer ComfyUI: passed on untouched

    def middle_block_after(self, args: dict) -> dict:
        return {**args, "h": self._apply(args["h"], args["transformer_options"])}


def window_check(window, timestep_of):
    """An OUTER_SAMPLE wrapper (once per sampling run, with the sigmas the sampler got) holding the Shift's window
    to the edit windows' rule (``sampling.check_window_steps``): a window with none of the steps (start = end
    percent) is refused, as the nodes and the SAMPLERs refuse it, not run as a silent no-op."""

    def wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        host = sigmas.detach().float().cpu().tolist()
        inside = [timestep_of(s) for s in host[:-1] if s > 0 and window.contains(s)]
        try:
            check_window_steps(window.made_with, inside, len(host) - 1)
        except ValueError as refused:
            raise ValueError(f"H-Space Shift (model patch): {refused}") from None
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    return wrapper


def patched_with_h_shift(model, direction, strength: float, window, edit_branches: str):
    """A clone of ``model`` whose h at the direction's site is shifted.  A transformer's block site uses the dit
    replace patch (``dit.DitH``; a patch another node put at that block runs inside it).  The middle site uses core's
    ``set_model_middle_block_after_patch`` where this ComfyUI has it (and the U-Net is ComfyUI's own), else the
    ``output_block_patch`` of the first output block, which sees the same h."""
    dm = model.get_model_object("diffusion_model")
    patch = HShift(direction, strength, window, edit_branches, noise_levels(model).timestep,
                   site_block(dm, direction.site))
    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "hspace_shift_window",
                               window_check(window, patch.timestep_of))
    if patch.block is None:  # a transformer block site: the dit replace patch, on the clone's model options
        where = dit.check_block_site(dm, direction.site)
        if len(direction.h_shape) != 3:  # the patch grid comes from h's spatial shape (an implicit f_t's too)
            raise ValueError("H-Space Shift on a transformer takes a direction of h's spatial shape (C, H/p, W/p), "
                             "made at this site and image size.")
        replace = dit.DitH(dm, where, patch._apply, direction.h_shape[1:])
        clone.model_options["transformer_options"] = dit.with_dit_patch(
            clone.model_options.get("transformer_options", {}), replace)
    elif direction.site == "middle" and hasattr(clone, "set_model_middle_block_after_patch") and not is_pixel_unet(model):
        clone.set_model_middle_block_after_patch(patch.middle_block_after)
    else:
        if direction.site == "middle":
            log.info("h-space: this ComfyUI has no middle-block hook; h is shifted by an output_block_patch.")
        clone.set_model_output_block_patch(patch.output_block)
    return clone
