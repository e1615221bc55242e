"""FluxSpace on a ComfyUI MODEL (Flux, SD3.x): ``hspace_core.fluxspace`` through an APPLY_MODEL wrapper and dit
replace patches on a clone.

Inside the σ window each model call runs three times: with the edit prompt and with the empty prompt, or the base
prompt where the node was given one (their image tokens' attention outputs are recorded at the edited blocks), then with the call's own conditioning, whose attention
outputs become ℓ + λ·ℓ⊥ at those blocks; the pooled embedding moves by the coarse λ.  Outside the window, or at
λ = λ_coarse = 0, the call is the plain one.  The per-call state travels in a nested object of transformer_options
(ComfyUI copies that dict shallowly on its way down)."""
from __future__ import annotations

import comfy.patcher_extension

from ...hspace_core.fluxspace import fluxspace_edit, orthogonal_part
from ...hspace_core.sites import BlockSite
from . import dit

KEY = "hspace_fluxspace"


class _Call:
    """What one model call records and uses: ℓ per block for the edit and empty prompts."""

    def __init__(self):
        self.mode, self.seen = None, {"edit": {}, "null": {}}


class FluxSpace:
    """The wrapper and the block patches of one FluxSpace edit."""

    def __init__(self, diffusion_model, blocks: list[BlockSite], edit_cond, null_cond, lam: float, lam_coarse: float,
                 window):
        self.diffusion_model, self.blocks = diffusion_model, blocks
        self.lam, self.lam_coarse, self.window = float(lam), float(lam_coarse), window
        self.edit_cond, self.null_cond = edit_cond, null_cond

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model options: conditioning tensors are shared
        return self

    def block_fn(self, where: BlockSite):
        def fn(h, transformer_options):
            call = transformer_options.get(KEY)
            if call is None or call.mode is None:
                return h
            if call.mode != "apply":
                call.seen[call.mode][where.name] = h
                return h
            return fluxspace_edit(h, call.seen["edit"][where.name], call.seen["null"][where.name], self.lam)
        return fn

    @staticmethod
    def _context(cond, like, rows):
        return cond.to(like.device, like.dtype).expand(rows, *cond.shape[1:]) if like is not None else None

    def wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        if not self.window.contains(float(t.detach().flatten()[0])):  # one host read per model call, as core's gates
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        rows, call = x.shape[0], _Call()
        grid = dit.patch_grid(self.diffusion_model, x.shape[-2:])
        options = {**transformer_options, KEY: call, dit.GRID_KEY: grid}
        pooled = {}
        for mode, cond in (("edit", self.edit_cond), ("null", self.null_cond)):
            call.mode = mode
            y = kwargs.get("y")
            extra = dict(kwargs)
            pooled[mode] = cond[1].get("pooled_output")
            if y is not None and pooled[mode] is not None:
                extra["y"] = self._context(pooled[mode], y, rows)
            executor(x, t, c_concat, self._context(cond[0], c_crossattn, rows), control, options, **extra)
        call.mode = "apply"
        y = kwargs.get("y")
        if self.lam_coarse and y is not None and pooled["edit"] is not None and pooled["null"] is not None:
            move = orthogonal_part(pooled["edit"].to(y), pooled["null"].to(y)).expand_as(y)
            kwargs = {**kwargs, "y": y + self.lam_coarse * move}
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def joint_blocks(diffusion_model, which: str) -> list[BlockSite]:
    """The blocks FluxSpace edits: every joint (double / MMDiT) block's attention output ("all", the paper's), or
    the default site's block alone ("middle")."""
    counts = dit.block_counts(diffusion_model)
    kind = "double" if "double" in counts else "joint"
    if which == "middle":
        return [dit.check_block_site(diffusion_model, dit.default_site(diffusion_model))]
    return [BlockSite(kind, i, True) for i in range(counts[kind])]


def patched_with_fluxspace(model, edit_cond, null_cond, lam: float, lam_coarse: float, window, blocks: str):
    """A clone of ``model`` that applies FluxSpace's edit (module docstring); λ = λ_coarse = 0 returns a plain clone."""
    clone = model.clone()
    if lam == 0 and lam_coarse == 0:
        return clone
    dm = model.get_model_object("diffusion_model")
    edit = FluxSpace(dm, joint_blocks(dm, blocks), edit_cond, null_cond, lam, lam_coarse, window)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, edit.wrapper)
    options = clone.model_options.get("transformer_options", {})
    for where in edit.blocks:
        options = dit.with_dit_patch(options, dit.DitH(dm, where, edit.block_fn(where), None))
    clone.model_options["transformer_options"] = options
    return clone
