"""One denoiser call for an edited step: the encoder runs once, the decoder for the plain and the edited rows.

``ComfyHSpaceModel.predict`` calls ComfyUI's CFG denoiser on ``[x; x]``, so ComfyUI repeats the conds, computes
ControlNet hints, batches cond/uncond and applies CFG (``sampler_cfg_function``, post-CFG hooks) to each half
exactly as for a plain call.  Inside, a DIFFUSION_MODEL wrapper (innermost) sees each chunk of the batch
(cond or uncond) as plain rows followed by identical copies.  It runs the whole U-Net on the plain rows only,
keeping the skips, h (the input of the output block at the h site) and the time embedding, then runs the decoder
from the h site on again on the copies of the chunks whose h is edited, with h̃ put in by the same ``output_block_patch`` as before (so FreeU and every other
patch still apply).  Copies of chunks that are not edited (the uncond rows when only the cond branch is edited)
take the plain rows' output without running anything.

A transformer (Flux, SD3.x: ``dit``) runs ``[x; x]`` the same way block by block: the dit replace patch at the h site
(``DitCopies``) records h from the plain rows and edits it in the copies of the edited chunks only, and every other
block runs only the rows that differ (``dit.SharedRows``: before the site the plain rows, after it those and the
edited copies), so one call gives both predictions.
"""
from __future__ import annotations

import contextlib

import torch

from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock, UNetModel, forward_timestep_embed

from ...hspace_core.adapters.base import is_edited, take_rows
from ...hspace_core.adapters.diffusers_unet import capture_pass, EncoderCache, replay_pass
from .allocations import outside_allocation_graph


class UnusualBatch(Exception):
    """The batch the wrapper saw is not [plain; copies] per chunk: the caller falls back to two calls."""


def supports_edited_copies(diffusion_model) -> bool:
    """Whether an edited step on this network is the one call on [x; x]: a U-Net the decoder pass knows, or a
    transformer the dit patch knows (``DitCopies``)."""
    from .dit import dit_family

    return _decoder_for(diffusion_model) is not None or dit_family(diffusion_model) is not None


def _decoder_for(diffusion_model):
    if getattr(diffusion_model, "hspace_pixel_unet", False):
        return _PixelDecoder(diffusion_model)
    if type(diffusion_model) is UNetModel and not diffusion_model.predict_codebook_ids:
        return _UNetDecoder(diffusion_model)
    return None


def branch_names(transformer_options: dict) -> list[str]:
    """The guidance branch of each chunk of a U-Net batch, in order: ComfyUI's ``cond_or_uncond`` lists 0 for the
    positive CONDITIONING and 1 for the negative (any other index, e.g. a DualCFGGuider's middle cond, counts as
    "uncond": only ``edit_branches`` "both" edits it).  The one rule for which rows an h edit touches."""
    return ["cond" if c == 0 else "uncond" for c in (transformer_options.get("cond_or_uncond") or [0])]


def with_patch(options: dict, patch, first: bool) -> dict:
    """A copy of transformer_options with ``patch`` added to output_block_patch (first or last)."""
    options = dict(options)
    patches = dict(options.get("patches", {}))
    current = list(patches.get("output_block_patch", []))
    patches["output_block_patch"] = [patch, *current] if first else [*current, patch]
    options["patches"] = patches
    return options


def with_wrapper(options: dict, wrapper) -> dict:
    """A copy of transformer_options with ``wrapper`` as the innermost DIFFUSION_MODEL wrapper."""
    import comfy.patcher_extension as ext

    options = dict(options)
    wrappers = {kind: dict(by_key) for kind, by_key in options.get("wrappers", {}).items()}
    wrappers.setdefault(ext.WrappersMP.DIFFUSION_MODEL, {})["hspace_edited_copies"] = [wrapper]
    options["wrappers"] = wrappers
    return options


class EditedCopies:
    """DIFFUSION_MODEL wrapper: plain rows through the whole U-Net, edited copies through the decoder only.

    ``h_patch`` is the ``_HPatch`` already in output_block_patch: it records h from the plain rows, then
    ``h_patch.start_editing`` turns it into the edit for the decoder pass.
    """

    def __init__(self, h_patch, edit, t: int, edit_branches: str, single: bool):
        self.h_patch, self.edit, self.t = h_patch, edit, t
        self.edit_branches, self.single = edit_branches, single

    def __call__(self, executor, x, timesteps=None, context=None, y=None, control=None, transformer_options={},
                 **kwargs):
        decoder = _decoder_for(executor.class_obj)
        order = list(transformer_options.get("cond_or_uncond") or [0])
        plain = _halves(x, len(order))
        if decoder is None or plain is None:
            raise UnusualBatch(f"a batch of {x.shape[0]} rows in {len(order)} chunks, or an unknown U-Net")
        take = lambda value: take_rows(value, plain, x.shape[0])
        options = dict(transformer_options)
        if torch.is_tensor(options.get("sigmas")) and options["sigmas"].shape[0] == x.shape[0]:
            options["sigmas"] = options["sigmas"][plain]
        args = [take(v) for v in (x, timesteps, context, y, control)]
        kwargs = take(kwargs)
        with decoder.capture(options, self.h_patch.block) as (state, options):
            out = executor(*args, options, **kwargs)
        rows = x.shape[0] // (2 * len(order))
        names = branch_names(transformer_options)
        chosen = [i for i, name in enumerate(names) if self.single or is_edited(name, self.edit_branches)]
        edited = {}
        with outside_allocation_graph():  # the edited rows' decoder pass runs on edited steps only
            if chosen:
                sel = torch.cat([torch.arange(i * rows, (i + 1) * rows) for i in chosen]).to(x.device)
                self.h_patch.start_editing(self.edit, self.t, self.edit_branches)
                decoded = decoder.decode(state, sel, options, [order[i] for i in chosen], args, kwargs)
                edited = dict(zip(chosen, decoded.chunk(len(chosen))))
            parts = []
            for i, chunk in enumerate(out.chunk(len(order))):
                parts += [chunk, edited.get(i, chunk)]
            return torch.cat(parts)


class DitCopies:
    """The function of h a transformer's dit patch (``dit.DitH``) calls in a one-call edited step: each guidance
    chunk of the batch is [plain rows; the same rows again]; ``record`` (an ``_HPatch`` recording, not editing) sees
    the plain rows' h, ``edited`` (an ``_HPatch`` that edits and does not record) the copies' h, which it edits for
    the chunks its edit_branches name, so the copies come out as the edited prediction; the other blocks run only the
    rows that differ (``prepare``: before the site the plain rows, after it those and the edited copies).  A batch not
    made of such chunks raises ``UnusualBatch`` (two calls instead)."""

    def __init__(self, record, edited):
        self.record, self.edited, self.t_key = record, edited, record.t_key

    def edits(self, branch: str) -> bool:
        """Whether the copies of ``branch``'s chunk are edited (the rule ``_HPatch.apply`` follows)."""
        return self.edited.branches == ("single",) or is_edited(branch, self.edited.edit_branches)

    def prepare(self, transformer_options: dict, diffusion_model, where) -> dict:
        """The call's transformer_options with the other blocks running only the rows that differ
        (``dit.with_shared_rows``)."""
        from .dit import with_shared_rows

        return with_shared_rows(transformer_options, diffusion_model, where, self.edits)

    def apply(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        chunks = len(branch_names(transformer_options))
        if h.shape[0] % (2 * chunks):
            raise UnusualBatch(f"h of {h.shape[0]} rows in {chunks} chunks is not [plain; copies] per chunk")
        halves = [chunk.chunk(2) for chunk in h.chunk(chunks)]
        self.record.apply(torch.cat([plain for plain, _ in halves]), transformer_options)
        copies = torch.cat([copy for _, copy in halves])
        edited = self.edited.apply(copies, transformer_options)
        if edited is copies:
            return h
        return torch.cat([part for (plain, _), copy in zip(halves, edited.chunk(chunks)) for part in (plain, copy)])


def _halves(x: torch.Tensor, chunks: int):
    """Row indices of the plain rows when every chunk is [rows; the same rows again], else None."""
    if x.shape[0] % (2 * chunks):
        return None
    rows = x.shape[0] // (2 * chunks)
    plain = torch.cat([torch.arange(2 * i * rows, (2 * i + 1) * rows) for i in range(chunks)]).to(x.device)
    copies = plain + rows
    if not torch.equal(x[plain], x[copies]):
        return None
    return plain


class _SkipRecorder:
    """output_block_patch (first in the list): the inputs of the decoder from output block ``start`` on (h there and
    every skip from there) of one forward."""

    def __init__(self, start: int = 0):
        self.active, self.skips, self.h, self.index, self.start = True, [], None, 0, start

    def __call__(self, h, hsp, transformer_options):
        block = transformer_options.get("block", ())
        if self.active and block[:1] == ("output",) and block[1] >= self.start:
            if hsp is None:  # newer ComfyUI may skip the skip concatenation: nothing to replay from
                raise UnusualBatch("an output block without a skip connection")
            with outside_allocation_graph():  # kept for the decoder pass after this forward
                if block[1] == self.start:
                    self.h, self.index = h.clone(), transformer_options.get("transformer_index", 0)
                self.skips.append(hsp.clone())
        return h, hsp


class _UNetDecoder:
    """ComfyUI's ``UNetModel``: its output-block loop (``UNetModel._forward``) over recorded inputs."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def capture(self, options, start: int = 0):
        recorder = _SkipRecorder(start)
        state = {"recorder": recorder, "start": start}
        first = next((m for m in self.model.output_blocks[start] if isinstance(m, TimestepBlock)), None)
        if first is None:
            raise UnusualBatch(f"output block {start} has no timestep block")
        def keep_emb(module, args):
            state.setdefault("emb", args[1])

        handle = first.register_forward_pre_hook(keep_emb)
        try:
            yield state, with_patch(options, recorder, first=True)
        finally:
            handle.remove()
            recorder.active = False

    def decode(self, state, sel, options, order, args, kwargs):
        x, _, context, _, _ = args
        recorder, model = state["recorder"], self.model
        skips = [s[sel] for s in recorder.skips]
        options = {**options, "transformer_index": recorder.index, "cond_or_uncond": order,
                   "original_shape": [len(sel), *x.shape[1:]]}
        patches = options.get("patches", {}).get("output_block_patch", [])
        h, emb = recorder.h[sel], state["emb"][sel]
        context = take_rows(context, sel, x.shape[0])
        extra = {"time_context": take_rows(kwargs.get("time_context"), sel, x.shape[0]),
                 "num_video_frames": kwargs.get("num_video_frames", model.default_num_video_frames),
                 "image_only_indicator": take_rows(kwargs.get("image_only_indicator"), sel, x.shape[0])}
        start = state["start"]
        for k, module in enumerate(model.output_blocks[start:]):
            options["block"] = ("output", start + k)
            hsp = skips[k]
            for patch in patches:
                h, hsp = patch(h, hsp, options)
            h = torch.cat([h, hsp], dim=1)
            shape = skips[k + 1].shape if k + 1 < len(skips) else None
            h = forward_timestep_embed(module, h, emb, context, options, shape, **extra)
        return model.out(h.type(x.dtype))


class _PixelDecoder:
    """'H-Space Load Pixel U-Net' (a diffusers ``UNet2DModel``): the encoder replayed from its cached outputs."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def capture(self, options, start: int = 0):
        site = self.model.site_at_block(start)
        with capture_pass(self.model.unet, True, site) as cache:
            yield {"cache": cache, "site": site}, options

    def decode(self, state, sel, options, order, args, kwargs):
        x, timesteps = args[0], args[1]
        cache, rows = EncoderCache(), x.shape[0]
        cache.outputs = {m: take_rows(out, sel, rows) for m, out in state["cache"].outputs.items()}
        cache.output = take_rows(state["cache"].output, sel, rows)
        options = {**options, "cond_or_uncond": order}
        with replay_pass(self.model.unet, cache, state["cache"].h[sel], state["site"]):
            return self.model._forward(x[sel], take_rows(timesteps, sel, rows), transformer_options=options)
