"""``HSpaceModel`` over a ComfyUI MODEL, called inside ComfyUI's own sampling machinery (``run``: a SAMPLER's
KSAMPLER, or ``run.run_in_comfy``'s body): ComfyUI loads the model, processes CONDITIONING (SDXL pooled/size conds,
ControlNet, area conds, hooks) and applies CFG exactly as KSampler does.  h is read and replaced by an
``output_block_patch`` acting at block ("output", 0) for site "middle", or at the first output block after the site's
decoder level (``checks.site_block``; the vocabulary is ``hspace_core.sites``), added to a per-call copy of
``model_options``: the MODEL itself is never patched.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math

import torch

import comfy.model_management
import comfy.model_patcher

from ...hspace_core import Prediction, schedule_from_sigmas
from ...hspace_core.adapters.base import autograd_ready, edited_rows
from ...hspace_core.sigmas import eps_of_denoised, sigma_of_alpha_bar, vp_to_ve
from ...hspace_core.sites import DEFAULT_SITE
from ...hspace_core.implicit import TimeEmbedding
from . import dit, edit_batch
from .dit_time import dit_time_embedding
from .allocations import kept, outside_allocation_graph
from .checks import check_has_h_space, resolve_site, site_block
from .fingerprint import model_fingerprint
from .guidance import linear_cfg, negative_wrapper
from .noise_levels import noise_levels

log = logging.getLogger("hspace")


class _HPatch:
    """output_block_patch: records h at ("output", ``block``) per branch and optionally edits it."""

    def __init__(self, branches, edit=None, t=None, edit_branches="cond", block=0, t_key=None):
        self.branches, self.edit, self.t, self.edit_branches = branches, edit, t, edit_branches
        self.block, self.t_key = block, t_key  # t_key: the step's timestep (per-step negatives are looked up by it)
        self.rows = {"cond": [], "uncond": []}
        self.recording = True

    def __call__(self, h, hsp, transformer_options):
        if transformer_options.get("block") != ("output", self.block):
            return h, hsp
        return self.apply(h, transformer_options), hsp

    def apply(self, h, transformer_options):
        """h (rows of every branch) recorded and, when editing, edited: the U-Net's output block and a
        transformer's block (``dit.DitH``) both hand h here."""
        names = edit_batch.branch_names(transformer_options)
        out = []
        with outside_allocation_graph():  # what it keeps and what it edits are not the U-Net's recorded allocations
            for name, rows in zip(names, h.chunk(len(names))):
                if self.recording:
                    self.rows[name].append(kept(rows.detach()))
                if self.edit is not None:
                    label = name if self.branches != ("single",) else "single"
                    rows = edited_rows(rows, self.t, (label,), self.edit, self.edit_branches)
                out.append(rows)
            if self.edit is None:
                return h
            return torch.empty_like(h).copy_(torch.cat(out))

    def start_editing(self, edit, t, edit_branches):
        """From now on edit h (and stop recording): the decoder pass of ``edit_batch.EditedCopies``."""
        self.edit, self.t, self.edit_branches, self.recording = edit, t, edit_branches, False

    def h(self) -> torch.Tensor:
        if self.branches == ("single",):
            return torch.cat(self.rows["cond"])
        return torch.cat([torch.cat(self.rows[name]) for name in ("uncond", "cond") if self.rows[name]])


class ComfyHSpaceModel:
    """``HSpaceModel`` over the CFG-wrapped denoiser ComfyUI passes to a sampler function.

    The core works in VP space, ComfyUI's denoiser in VE space (``hspace_core.sigmas`` converts; ComfyUI
    returns the denoised x0 for every prediction type, v included).  ``denoised`` is the σ-space view the
    pack's SAMPLERs use, ``predict`` the VP view of the same call.
    """

    def __init__(self, denoiser, extra_args: dict, model_patcher, cfg: float, edit_branches: str, negative=None,
                 site: str = DEFAULT_SITE):
        check_has_h_space(model_patcher)  # the SAMPLER nodes meet their MODEL only here
        self.site = resolve_site(model_patcher, site)
        self.h_block = site_block(model_patcher.get_model_object("diffusion_model"), self.site)
        self.levels = noise_levels(model_patcher)
        self.schedule = schedule_from_sigmas(self.levels.table.double())
        self.branches = ("uncond", "cond") if not math.isclose(cfg, 1.0) else ("single",)
        self.fingerprint = model_fingerprint(model_patcher)
        self.denoiser, self.extra_args, self.edit_branches = denoiser, extra_args, edit_branches
        self.model_patcher, self.cfg, self.negative = model_patcher, cfg, negative
        self.negative_override = None  # a cross-attention tensor, or {t: tensor} (null-text inversion)
        self.scale_override = None
        self.one_call = True  # False: an edited step takes two denoiser calls (the reference path)

    @classmethod
    def for_guider(cls, denoiser, extra_args: dict, model_patcher, edit_branches: str, site: str = DEFAULT_SITE):
        """Over whatever guider a SAMPLER was given: its branches are named by ComfyUI's ``cond_or_uncond``
        (``edit_batch.branch_names``), whatever the guider batches."""
        model = cls(denoiser, extra_args, model_patcher, 2.0, edit_branches, None, site)
        model.branches = ("uncond", "cond")
        return model

    @classmethod
    def for_node(cls, cfg: float, negative=None, negative_at: dict | None = None):
        """``h_edit_sampler``'s ``hs_for`` for a process node: branches named by the node's ``cfg`` (one "single"
        branch at cfg 1, as ``run_in_comfy``'s bodies see them), ``negative_at`` ({t: embedding}, a null-text
        inversion's) put in for the unconditional rows."""

        def make(denoiser, extra_args, model_patcher, edit_branches, site):
            model = cls(denoiser, extra_args, model_patcher, cfg, edit_branches, negative, site)
            return model.with_negative(negative_at) if negative_at else model

        return make

    # --- guidance (``hspace_core.GuidedModel``) ---
    @property
    def guidance_scale(self) -> float:
        return self.cfg if self.scale_override is None else self.scale_override

    def with_guidance(self, scale: float) -> "ComfyHSpaceModel":
        """The same denoiser combined at another scale (a ``sampler_cfg_function``; both branches still run)."""
        other = copy.copy(self)
        other.scale_override = float(scale)
        other.branches = ("single",) if math.isclose(scale, 1.0) else self.branches
        return other

    def negative_embedding(self) -> torch.Tensor:
        if self.negative is None or math.isclose(self.cfg, 1.0):
            raise ValueError("Null-text inversion needs cfg ≠ 1 and a negative CONDITIONING.")
        return self.negative[0][0].detach().clone()

    def with_negative(self, negative) -> "ComfyHSpaceModel":
        """A negative cross-attention embedding (tensor) or per-step ones ({t: tensor}) for the unconditional
        rows, put in by a ``model_function_wrapper`` (chained after any the MODEL already has)."""
        if isinstance(negative, str):
            raise ValueError("On a ComfyUI MODEL, negative-prompt guidance is set by passing the positive "
                             "CONDITIONING as the negative.")
        other = copy.copy(self)
        other.negative_override = negative
        return other

    def time_embedding(self) -> TimeEmbedding:
        return time_embedding_of(self.model_patcher)

    @contextlib.contextmanager
    def autograd_ready(self):
        """Gradients through the frozen diffusion model (``adapters.base.autograd_ready``) on ComfyUI's training paths
        (``training_paths``); Flux's and Chroma's saved activations are copied before its in-place residual adds
        (``dit.saved_before_in_place_adds``; SD3's blocks add out of place)."""
        dm = self.model_patcher.get_model_object("diffusion_model")
        in_place = dit.adds_in_place(dm)
        with autograd_ready(dm), training_paths(), \
                (dit.saved_before_in_place_adds() if in_place else contextlib.nullcontext()):
            yield

    def denoise(self, x, sigma, patch, wrapper=None):
        """D(x, σ): the guided denoiser at the VE point ``x`` (``sigma`` a float or a 0-dim tensor on x's device),
        with ``patch`` in output_block_patch and ``wrapper`` (the one-call batch) in a per-call model_options."""
        comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel lands within one U-Net pass
        options = comfy.model_patcher.create_model_options_clone(self.extra_args["model_options"])
        if self.h_block is None:  # a transformer: h at a block through the dit replace patch
            dm = self.model_patcher.get_model_object("diffusion_model")
            where = dit.check_block_site(dm, self.site)
            transformer_options = options.get("transformer_options", {})
            if hasattr(patch, "prepare"):  # edit_batch.DitCopies: the other blocks run the rows that differ
                transformer_options = patch.prepare(transformer_options, dm, where)
            transformer_options = dit.with_dit_patch(transformer_options,
                                                     dit.DitH(dm, where, patch.apply, dit.patch_grid(dm, x.shape[-2:])))
        else:
            transformer_options = edit_batch.with_patch(options.get("transformer_options", {}), patch, first=False)
        if wrapper is not None:
            transformer_options = edit_batch.with_wrapper(transformer_options, wrapper)
        options["transformer_options"] = transformer_options
        override = self.negative_override
        if isinstance(override, dict):
            override = override.get(patch.t_key)
        if override is not None:
            options["model_function_wrapper"] = negative_wrapper(override, options.get("model_function_wrapper"))
        if self.scale_override is not None:
            if "sampler_cfg_function" in options:
                log.info("The MODEL's own sampler_cfg_function is not used while inverting at guidance %s.",
                         self.scale_override)
            options["sampler_cfg_function"] = linear_cfg(self.scale_override)
        sigma_in = x.new_ones((x.shape[0],)) * sigma
        return self.denoiser(x, sigma_in, denoise_mask=None, model_options=options, seed=self.extra_args.get("seed"))

    def denoised(self, x, sigma, edit=None, t: int | None = None):
        """(D(x | h), D(x | h̃) or None, h) at the VE point ``x`` (``hspace_core.denoise_at``'s shape); ``t`` is the
        timestep the edit is evaluated at (None: nearest σ, read on the host).
        An edit takes one denoiser call on [x; x] where the U-Net allows it (``edit_batch``), else two."""
        t = self.levels.timestep(float(sigma)) if t is None else t
        record = _HPatch(self.branches, block=self.h_block, t_key=t)
        if edit is None:
            return self.denoise(x, sigma, record), None, record.h()
        if self.one_call and edit_batch.supports_edited_copies(self.model_patcher.get_model_object("diffusion_model")):
            try:
                if self.h_block is None:  # a transformer: the dit patch edits the copies' h (edit_batch.DitCopies)
                    edits = _HPatch(self.branches, block=self.h_block, t_key=t)
                    edits.start_editing(edit, t, self.edit_branches)
                    patch, copies = edit_batch.DitCopies(record, edits), None
                else:
                    patch = record
                    copies = edit_batch.EditedCopies(record, edit, t, self.edit_branches, self.branches == ("single",))
                plain, edited = self.denoise(torch.cat([x, x]), sigma, patch, copies).chunk(2)
                return plain, edited, record.h()
            except edit_batch.UnusualBatch as why:
                log.info("H-Space: an edited step takes two denoiser calls here (%s).", why)
                record = _HPatch(self.branches, block=self.h_block, t_key=t)
        plain = self.denoise(x, sigma, record)
        edited = _HPatch(self.branches, edit, t, self.edit_branches, self.h_block, t_key=t)
        return plain, self.denoise(x, sigma, edited), record.h()

    def predict(self, x_t, t, edit=None):
        """The VP view of ``denoised`` (``hspace_core.sigmas``): x = x_t/√ᾱ_t, ε = (x − D)/σ_t."""
        t = max(int(t), 0)
        a = self.schedule.alpha_bar(t)
        sigma = sigma_of_alpha_bar(a)
        x = vp_to_ve(x_t, a)
        plain, edited, h = self.denoised(x, sigma, edit, t)
        eps = lambda d: eps_of_denoised(x, d, sigma).to(x_t.dtype)
        return Prediction(eps(plain), h, None if edited is None else eps(edited))


@contextlib.contextmanager
def training_paths():
    """ComfyUI's own switch for gradients through its models, ``model_management.in_training`` (0.33.0; its LoRA
    training node sets it): kernels with no autograd formula give way to PyTorch's (Flux's RoPE, otherwise
    comfy_kitchen's ``apply_rope``, which autograd refuses).  Put back on exit; 0.3.75 has neither flag nor kernels."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


def time_embedding_of(model_patcher) -> TimeEmbedding:
    """A frozen copy of the diffusion model's timestep embedding (for implicit directions f_t); a Flux / SD3
    transformer's is read at its time input per σ-table entry (``dit_time``)."""
    dm = model_patcher.get_model_object("diffusion_model")
    if dit.dit_family(dm) is not None:
        return dit_time_embedding(dm, model_patcher.get_model_object("model_sampling"))
    if getattr(dm, "hspace_pixel_unet", False):
        return TimeEmbedding.of_diffusers_unet(dm.unet)
    # ComfyUI's U-Net: timestep_embedding(t, model_channels) is [cos, sin] with no frequency shift
    return TimeEmbedding.copy_of(dm.time_embed[0], dm.time_embed[2], dm.model_channels, True, 0.0)


