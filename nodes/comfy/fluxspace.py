"""FluxSpace on a ComfyUI MODEL (Flux, SD3.x): ``hspace_core.fluxspace`` through an APPLY_MODEL wrapper and dit
replace patches on a clone.

Inside the σ window each model call becomes one call on three times its rows (issue 38 item 6, as the U-Net path's
[x; x]): [the call's own rows; the same x with the edit prompt; with the empty prompt, or the base prompt where the
node was given one], each row with its own text tokens and pooled vector, so each row computes what it would alone.
At each edited block the patch records the image tokens' attention outputs ℓ of the edit and null rows and makes the
own rows' ℓ + λ·ℓ⊥; the pooled embedding of the own rows moves by the coarse λ.  After the last edited block the edit
and null rows are not needed: the later blocks run only the own rows (``_FirstRows``), as ``dit.SharedRows`` does for
Asyrp's copies.  Prompts whose token counts differ cannot be rows of one call (ComfyUI's own cond batching does not
pad Flux's or SD3's text, ``CONDRegular``): those prompts run as separate calls, logged.  Outside the window, or at
λ = λ_coarse = 0, the call is the plain one.  The per-call state travels in a nested object of transformer_options
(ComfyUI copies that dict shallowly on its way down)."""
from __future__ import annotations

import comfy.patcher_extension
import torch

from ...hspace_core.adapters.base import take_rows
from ...hspace_core.fluxspace import fluxspace_edit, orthogonal_part
from ...hspace_core.sites import BlockSite
from . import dit
from .memory import with_rows_per_latent

KEY = "hspace_fluxspace"
MODES = ("apply", "edit", "null")  # the row segments of one call: own rows first, then the edit and null prompts'


class _Call:
    """What one model call records and uses: ℓ per block for the edit and null prompts, and the row segments
    (mode, rows) of the batch the model runs now."""

    def __init__(self):
        self.layout, self.seen = (), {"edit": {}, "null": {}}


class FluxSpace:
    """The wrapper and the block patches of one FluxSpace edit.  ``one_call`` False runs each prompt as its own call
    (the path before; the tests' and the benchmark's reference)."""

    def __init__(self, diffusion_model, blocks: list[BlockSite], edit_cond, null_cond, lam: float, lam_coarse: float,
                 window, one_call: bool = True):
        self.diffusion_model, self.blocks = diffusion_model, blocks
        self.lam, self.lam_coarse, self.window = float(lam), float(lam_coarse), window
        self.edit_cond, self.null_cond, self.one_call = edit_cond, null_cond, one_call

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model options: conditioning tensors are shared
        return self

    def block_fn(self, where: BlockSite):
        def fn(h, transformer_options):
            call = transformer_options.get(KEY)
            if call is None or not call.layout:
                return h
            modes, sizes = zip(*call.layout)
            if h.shape[0] != sum(sizes):
                raise ValueError(f"H-Space FluxSpace Edit: block {where.name} ran {h.shape[0]} rows, not the "
                                 f"{sum(sizes)} of its call ({dict(call.layout)}): a patch that changes the batch "
                                 "inside the model cannot be combined with FluxSpace; remove it from this MODEL.")
            parts = dict(zip(modes, h.split(sizes)))
            for mode in ("edit", "null"):
                if mode in parts:
                    call.seen[mode][where.name] = parts[mode]
            if "apply" not in parts:
                return h
            seen = call.seen
            parts["apply"] = fluxspace_edit(parts["apply"], seen["edit"][where.name], seen["null"][where.name],
                                            self.lam)
            return torch.cat([parts[mode] for mode in modes])
        return fn

    @staticmethod
    def _context(cond, like, rows):
        return cond.to(like.device, like.dtype).expand(rows, *cond.shape[1:]) if like is not None else None

    def _pooled(self):
        return {mode: cond[1].get("pooled_output") for mode, cond in (("edit", self.edit_cond),
                                                                       ("null", self.null_cond))}

    def _coarse(self, y, pooled):
        """The call's pooled vector y moved by the coarse edit, y + λ_coarse·(ȳ_edit ⊥ ȳ_null) (FluxSpace's coarse
        edit); y itself when λ_coarse = 0 or a prompt has no pooled output."""
        if not self.lam_coarse or y is None or pooled["edit"] is None or pooled["null"] is None:
            return y
        return y + self.lam_coarse * orthogonal_part(pooled["edit"].to(y), pooled["null"].to(y)).expand_as(y)

    def _segments(self, c_crossattn, y, rows):
        """(mode, context, pooled y) of each row segment: the call's own rows (y moved by the coarse edit), the edit
        prompt's and the null prompt's (a prompt without a pooled output keeps the call's y, as before)."""
        pooled = self._pooled()
        segments = [("apply", c_crossattn, self._coarse(y, pooled))]
        for mode, cond in (("edit", self.edit_cond), ("null", self.null_cond)):
            ys = self._context(pooled[mode], y, rows) if y is not None and pooled[mode] is not None else y
            segments.append((mode, self._context(cond[0], c_crossattn, rows), ys))
        return segments

    def _groups(self, segments):
        """The segments that run as one call: those whose text tokens have the call's own shape join its rows (one
        group for every prompt of equal length); each other shape is a call of its own, before the own rows' call
        (the edit needs their ℓ), logged once."""
        shape = lambda context: None if context is None else tuple(context.shape[1:])  # noqa: E731
        if not self.one_call:
            return [[s] for s in segments[1:]] + [segments[:1]]
        groups: dict = {}
        for segment in segments:
            groups.setdefault(shape(segment[1]), []).append(segment)
        if len(groups) > 1:
            dit._tell_once("H-Space FluxSpace Edit: the prompts have different numbers of text tokens (%s); ComfyUI "
                           "does not pad a transformer's text, so those prompts run as separate model calls.",
                           ", ".join(f"{s[0].replace('apply', 'own')} {shape(s[1])[0]}" for s in segments))
        own = groups.pop(shape(segments[0][1]))
        return [*groups.values(), own]

    def wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if not self.window.contains(float(t.detach().flatten()[0])):  # one host read per model call, as core's gates
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if not self.lam:  # the coarse edit alone: the pooled vector moves, no prompt's ℓ is needed
            return executor(x, t, c_concat, c_crossattn, control, transformer_options,
                            **{**kwargs, "y": self._coarse(kwargs.get("y"), self._pooled())})
        rows, call = x.shape[0], _Call()
        options = {**transformer_options, KEY: call, dit.GRID_KEY: dit.patch_grid(self.diffusion_model, x.shape[-2:])}
        for group in self._groups(self._segments(c_crossattn, kwargs.get("y"), rows)):
            out = self._run(executor, group, call, rows, (x, t, c_concat, control), options, kwargs)
        return out[:rows]  # the last group holds the own rows, first

    def _run(self, executor, group, call, rows: int, args, options: dict, kwargs: dict):
        """One model call on the rows of ``group``'s segments: every input of ``rows`` rows repeated per segment,
        the text tokens and pooled vector each segment's own; the guidance chunks (``cond_or_uncond``) repeat too."""
        k = len(group)
        call.layout = tuple((mode, rows) for mode, _, _ in group)
        tile = torch.arange(rows, device=args[0].device).repeat(k)
        x, t, c_concat, control = (take_rows(v, tile, rows) for v in args)
        extra = take_rows(kwargs, tile, rows)
        contexts, ys = [s[1] for s in group], [s[2] for s in group]
        context = None if contexts[0] is None else torch.cat(contexts)
        if ys[0] is not None:
            extra["y"] = torch.cat(ys)
        if k > 1:
            options = {**options, **{name: list(options[name]) * k for name in ("cond_or_uncond", "uuids")
                                     if name in options}}
            if torch.is_tensor(options.get("sigmas")):
                options["sigmas"] = take_rows(options["sigmas"], tile, rows)
            options = _with_rows_dropped(options, self.diffusion_model, self.blocks[-1])
        return executor(x, t, c_concat, context, control, options, **extra)


class _FirstRows(dit.SharedRows):
    """The dit replace patch at a block after the last edited one: only the first segment's rows are still needed
    (the own rows; in a call without them, any one segment), so the block runs those and every other row takes its
    output (``dit.SharedRows``' running and spreading of rows)."""

    def __init__(self):
        super().__init__(after=True, edited=None)

    def rows(self, batch: int, transformer_options: dict, device):
        call = transformer_options.get(KEY)
        if call is None or len(call.layout) < 2 or batch != sum(n for _, n in call.layout):
            return None
        run = torch.arange(call.layout[0][1], device=device)
        return run, run.repeat(len(call.layout))


def _with_rows_dropped(transformer_options: dict, diffusion_model, last: BlockSite) -> dict:
    """A copy of ``transformer_options`` with ``_FirstRows`` at every block after ``last``; as in
    ``dit.with_shared_rows``, a block holding another patch, and every block when attention patches are set, runs
    every row (logged once)."""
    options = dict(transformer_options)
    if any(options.get("patches", {}).values()):
        dit._tell_once("H-Space FluxSpace Edit: attention patches are set, so every block runs the edit and null "
                       "prompts' rows.")
        return options
    replace = dict(options.get("patches_replace", {}))
    blocks = dict(replace.get("dit", {}))
    order = [dit.replace_key(block) for block in dit.blocks_in_order(diffusion_model)]
    for key in order[order.index(dit.replace_key(last)) + 1:]:
        if key in blocks:
            dit._tell_once("H-Space FluxSpace Edit: block %s holds another patch; it runs the edit and null "
                           "prompts' rows.", key)
            continue
        blocks[key] = _FIRST_ROWS
    replace["dit"] = blocks
    options["patches_replace"] = replace
    return options


_FIRST_ROWS = _FirstRows()
ROWS_PER_LATENT = len(MODES)  # a FluxSpace call runs each latent row with its own, the edit and the null prompt


def joint_blocks(diffusion_model, which: str) -> list[BlockSite]:
    """The blocks FluxSpace edits, in the order they run: every joint (double / MMDiT) block's attention output
    ("all", the paper's), or the default site's block alone ("middle")."""
    counts = dit.block_counts(diffusion_model)
    kind = "double" if "double" in counts else "joint"
    if which == "middle":
        return [dit.check_block_site(diffusion_model, dit.default_site(diffusion_model))]
    return [BlockSite(kind, i, True) for i in range(counts[kind])]


def patched_with_fluxspace(model, edit_cond, null_cond, lam: float, lam_coarse: float, window, blocks: str,
                           one_call: bool = True):
    """A clone of ``model`` that applies FluxSpace's edit (module docstring), with memory reserved for the rows it
    runs (``memory.with_rows_per_latent``); λ = λ_coarse = 0 returns a plain clone, and λ = 0 (the coarse edit
    alone) runs no prompt rows and patches no block."""
    if lam == 0 and lam_coarse == 0:
        return model.clone()
    clone = with_rows_per_latent(model, ROWS_PER_LATENT) if one_call and lam else model.clone()
    dm = model.get_model_object("diffusion_model")
    edit = FluxSpace(dm, joint_blocks(dm, blocks), edit_cond, null_cond, lam, lam_coarse, window, one_call)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, edit.wrapper)
    options = clone.model_options.get("transformer_options", {})
    for where in edit.blocks if lam else ():
        options = dit.with_dit_patch(options, dit.DitH(dm, where, edit.block_fn(where), None))
    clone.model_options["transformer_options"] = options
    return clone
