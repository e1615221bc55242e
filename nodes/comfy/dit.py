"""h in a diffusion transformer (Flux, Chroma, SD3.x's MMDiT) through ComfyUI's dit block-replace patch.

ComfyUI runs ``transformer_options["patches_replace"]["dit"][("double_block" | "single_block", i)]`` in place of
Flux's and Chroma's double / single block i and of SD3's joint block i (which uses the "double_block" key); the
patch gets
``{"img", "txt", "vec", "pe", …, "transformer_options"}`` and ``{"original_block": f}`` and returns ``{"img", "txt"}``
(file and line per ComfyUI version: docs/transformers.md).  ``DitH`` runs the original block and hands the image tokens
of its output (site ``kind.i``) or of its attention output (``kind.i.attn``) to a function of h in its spatial view
(``sites.tokens_to_spatial``), putting back what that returns.  The attention output is read by a forward hook on the
block's image-stream output projection (Flux and Chroma ``img_attn.proj``, SD3 ``x_block.attn.proj``) that lives only
while that one block runs inside the patch (removed in ``finally``): 0.3.75's Flux and every version's MMDiT have no
attention-output patch.  The patch goes into a per-call copy of ``transformer_options`` (``with_dit_patch``), or on a
clone's model options (H-Space Shift), never on the MODEL given.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import comfy.model_management
import torch

from ...hspace_core.sites import BlockSite, block_site, default_block_site, spatial_to_tokens, tokens_to_spatial

log = logging.getLogger("hspace")
TRANSFORMERS = "Flux.1 (dev, schnell), Chroma and SD3 / SD3.5 (MMDiT)"
# whose blocks a site names
SITE_FAMILY = {"double": "Flux / Chroma", "single": "Flux / Chroma", "joint": "SD3 / SD3.5 (MMDiT)"}
FLUX_BLOCKS = ("flux", "chroma")  # families built of Flux's DoubleStreamBlock / SingleStreamBlock (flux/layers.py)
GRID_KEY = "hspace_patch_grid"  # transformer_options: the call's patch grid, for a DitH made without one
CHAINED = "hspace_chained"  # in a patch's extra: its original_block is another node's patch, not ComfyUI's block


def dit_family(diffusion_model) -> str | None:
    """"flux" (ComfyUI's ``comfy.ldm.flux.model.Flux``), "chroma" (``comfy.ldm.chroma.model.Chroma``: Flux's blocks,
    modulated per block by its approximator), "sd3" (``MMDiT``) or None for any other network."""
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    if isinstance(diffusion_model, Flux) and hasattr(diffusion_model, "double_blocks"):
        # Flux.2 shares the class but modulates globally (other block inputs): not tested here, so not accepted
        return None if getattr(diffusion_model.params, "global_modulation", False) else "flux"
    if isinstance(diffusion_model, Chroma) and hasattr(diffusion_model, "double_blocks"):
        # Chroma Radiance shares the class but works in pixels through a NeRF head: not tested here, so not accepted
        return None if hasattr(diffusion_model, "nerf_blocks") else "chroma"
    if isinstance(diffusion_model, MMDiT) and hasattr(diffusion_model, "joint_blocks"):
        return "sd3"
    return None


def adds_in_place(diffusion_model) -> bool:
    """Whether the blocks add to their residual streams in place (Flux's blocks: ``saved_before_in_place_adds``)."""
    return dit_family(diffusion_model) in FLUX_BLOCKS


def block_counts(diffusion_model) -> dict[str, int]:
    """How many blocks of each kind the transformer has (its site vocabulary)."""
    if dit_family(diffusion_model) in FLUX_BLOCKS:
        return {"double": len(diffusion_model.double_blocks), "single": len(diffusion_model.single_blocks)}
    return {"joint": len(diffusion_model.joint_blocks)}


def default_site(diffusion_model) -> str:
    """``sites.default_block_site`` for this transformer's joint stack (Flux.1 and Chroma, 19 double blocks:
    double.9.attn; SD3.5 large: joint.19.attn)."""
    kind = "double" if dit_family(diffusion_model) in FLUX_BLOCKS else "joint"
    return default_block_site(kind, block_counts(diffusion_model)[kind])


def check_block_site(diffusion_model, site: str) -> BlockSite:
    """The ``BlockSite`` ``site`` names in this transformer, or a ValueError naming the sites it has."""
    where = block_site(site)
    counts = block_counts(diffusion_model)
    have = ", ".join(f"{kind}.0 … {kind}.{n - 1}" for kind, n in counts.items())
    if where is None or where.kind not in counts or where.index >= counts[where.kind]:
        family = "a U-Net" if where is None else SITE_FAMILY[where.kind]
        other = "" if where is not None and where.kind in counts else (
            f" {site!r} is a site of {family}: an h-space object made there (a direction, an h trajectory) was "
            f"made with another model; connect the model it was made with, or make it again with this one"
            + (" (or, on a node's site widget, set site to 'middle': this model's default)." if where is None else "."))
        raise ValueError(f"h site {site!r} is not a block of this {type(diffusion_model).__name__}: its sites are "
                         f"{have} (add .attn to a double / joint block for its attention output); default "
                         f"{default_site(diffusion_model)}.{other}")
    return where


def replace_key(where: BlockSite) -> tuple[str, int]:
    """The ``patches_replace["dit"]`` key of a site's block: SD3's joint blocks use Flux's "double_block" key."""
    return ("single_block" if where.kind == "single" else "double_block", where.index)


def attention_projection(diffusion_model, where: BlockSite) -> torch.nn.Module:
    """The module whose output is the block's image-token attention output (before the gate)."""
    if where.kind == "double":
        return diffusion_model.double_blocks[where.index].img_attn.proj
    return diffusion_model.joint_blocks[where.index].x_block.attn.proj


def patch_grid(diffusion_model, latent_hw) -> tuple[int, int]:
    """Rows and columns of image tokens for a latent of (H, W): ⌈H/p⌉ × ⌈W/p⌉ (both pad to the patch size)."""
    p = diffusion_model.patch_size
    return math.ceil(latent_hw[0] / p), math.ceil(latent_hw[1] / p)


class DitH:
    """The dit replace patch at one site: ``fn(h, transformer_options)`` sees h (B, C, H/p, W/p) and returns it,
    or an edited h, which replaces the image tokens.  ``grid`` is the image's patch grid (``patch_grid``)."""

    def __init__(self, diffusion_model, where: BlockSite, fn, grid: tuple[int, int]):
        self.where, self.fn, self.grid = where, fn, None if grid is None else tuple(grid)
        self.key = replace_key(where)
        self.projection = attention_projection(diffusion_model, where) if where.attention else None
        self.joint = diffusion_model.joint_blocks[where.index] if where.attention and where.kind == "joint" else None

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options: the patch holds the live block's projection, never a copy
        return self

    def grid_of(self, transformer_options: dict) -> tuple[int, int]:
        """The patch grid given, or (a patch made for any image size) the one a wrapper put in ``GRID_KEY``."""
        return self.grid if self.grid is not None else tuple(transformer_options[GRID_KEY])

    def _through(self, tokens: torch.Tensor, transformer_options: dict, offset: int) -> torch.Tensor:
        if self.grid is None and GRID_KEY not in transformer_options:
            return tokens  # a patch for any image size that no wrapper armed for this call
        grid = self.grid_of(transformer_options)
        n = grid[0] * grid[1]
        if tokens.shape[1] < offset + n:
            raise ValueError(f"The block at h site {self.where.name} has {tokens.shape[1]} tokens, fewer than the "
                             f"{n} image tokens of a {grid[0]}×{grid[1]} patch grid.")
        # a copy: Flux's next block adds to this block's output in place (``img += …``), which a kept view would see
        h = tokens_to_spatial(tokens[:, offset:offset + n], grid).clone()
        new = self.fn(h, transformer_options)
        if new is h:
            return tokens
        out = tokens.clone()
        out[:, offset:offset + n] = spatial_to_tokens(new).to(tokens.dtype)
        return out

    def __call__(self, args: dict, extra: dict) -> dict:
        comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel lands within one block pass
        original = extra["original_block"]
        options = args.get("transformer_options") or {}
        if self.projection is not None:
            if self.joint is not None and torch.is_grad_enabled() and not extra.get(CHAINED):
                original = self._joint_unchecked
            hook = self.projection.register_forward_hook(lambda module, inputs, out: self._through(out, options, 0))
            try:
                return original(args)
            finally:
                hook.remove()
        out = original(args)
        return {**out, "img": self._through(out["img"], options, self._image_offset(args, options))}

    def _joint_unchecked(self, args: dict) -> dict:
        """SD3's joint block as ComfyUI's ``block_wrap`` runs it, without the activation checkpointing that path turns
        on (``mmdit.block_mixing(use_checkpoint=True)``, both versions): under gradients (CLIP training, Jacobian) its
        backward would run the block again after the h hook is gone, and autograd refuses the mismatch."""
        txt, img = self.joint(args["txt"], args["img"], c=args["vec"], use_checkpoint=False,
                              transformer_options=args["transformer_options"])
        return {"txt": txt, "img": img}

    def _image_offset(self, args: dict, options: dict) -> int:
        """Where the image tokens start: after the text in a single-stream block's [text; image (; reference)]
        sequence (newer ComfyUI says where: ``img_slice``; else the text is what precedes the last H/p·W/p
        tokens, so a Kontext reference image at a single site needs a ComfyUI that sets img_slice), else 0."""
        if self.where.kind != "single" or (self.grid is None and GRID_KEY not in options):
            return 0
        where = options.get("img_slice")
        if where is not None:
            return int(where[0])
        grid = self.grid_of(options)
        return args["img"].shape[1] - grid[0] * grid[1]


class _Chained:
    """A replace patch already at the same key runs inside ours, as our block's ``original_block``."""

    def __init__(self, outer, inner):
        self.outer, self.inner = outer, inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        return self.outer(args, {**extra, "original_block": lambda a: self.inner(a, extra), CHAINED: True})


def saved_before_in_place_adds():
    """Autograd through a transformer's blocks: Flux adds to its residual streams in place (``img += …``, ``txt += …``,
    ``x += …``: ``flux/layers.py``) after a norm saved them for backward, which autograd then refuses ("modified by an
    inplace operation"). Tensors that need a gradient are copied as they are saved (``saved_tensors_hooks``), so the
    backward pass sees the forward's values; frozen weights and other tensors are kept as they are (no copy). Costs one
    copy of the saved activations downstream of h."""
    return torch.autograd.graph.saved_tensors_hooks(
        lambda tensor: tensor.detach().clone() if tensor.requires_grad else tensor, lambda tensor: tensor)


def with_dit_patch(transformer_options: dict, patch: DitH) -> dict:
    """A copy of ``transformer_options`` with ``patch`` in ``patches_replace["dit"]`` at its block (a patch already
    there, e.g. another node's, runs inside it); nothing it was given is changed."""
    options = dict(transformer_options)
    replace = dict(options.get("patches_replace", {}))
    dit = dict(replace.get("dit", {}))
    inner = dit.get(patch.key)
    dit[patch.key] = patch if inner is None else _Chained(patch, inner)
    replace["dit"] = dit
    options["patches_replace"] = replace
    return options


def blocks_in_order(diffusion_model) -> list[BlockSite]:
    """Every block of the transformer in the order it runs (Flux, Chroma: double then single blocks; SD3: joint
    blocks)."""
    return [BlockSite(kind, i) for kind, n in block_counts(diffusion_model).items() for i in range(n)]


class SharedRows:
    """The dit replace patch at a block other than the h site's in a one-call edited step (``edit_batch.DitCopies``):
    each guidance chunk of the batch is [plain rows; copies].  Before the site every copy equals its plain row, and
    after it so do the copies of the chunks that are not edited (the uncond rows when only cond is edited), so the
    block runs only on the rows that differ and each other row takes its plain row's output: the transformer's
    counterpart of the U-Net path running its encoder once.  ``after`` says which side of the site the block is on;
    ``edited(branch)`` which chunks the edit touches.  A block input whose batch is not the call's (e.g. a
    modulation vector of other rows) makes the block run on every row."""

    def __init__(self, after: bool, edited):
        self.after, self.edited = after, edited

    def __deepcopy__(self, memo):
        return self

    def rows(self, batch: int, transformer_options: dict, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(the rows run, for every row the position of the row whose output it takes), or None: all rows."""
        from .edit_batch import branch_names

        names = branch_names(transformer_options)
        if batch % (2 * len(names)):
            return None
        half = batch // (2 * len(names))
        run, source = [], []
        for i, name in enumerate(names):
            start, first = 2 * i * half, len(run)
            plain = list(range(first, first + half))  # where this chunk's plain rows are among the rows run
            run += range(start, start + half)
            if self.after and self.edited(name):
                run += range(start + half, start + 2 * half)
                source += plain + list(range(first + half, first + 2 * half))
            else:
                source += plain + plain
        if len(run) == batch:
            return None
        return torch.tensor(run, device=device), torch.tensor(source, device=device)

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        batch = args["img"].shape[0]
        chosen = self.rows(batch, args.get("transformer_options") or {}, args["img"].device)
        if chosen is None or any(v.shape[0] not in (batch, 1) for v in _tensors(args)):
            return original(args)
        run, source = chosen
        out = original({k: _take_rows(v, run, batch) for k, v in args.items()})
        return {k: _take_rows(v, source, len(run)) for k, v in out.items()}


def _tensors(value):
    """The batched tensors in a block input: itself, or inside the tuples and dataclasses Chroma's ``vec`` nests
    (``((img_mod1, img_mod2), (txt_mod1, txt_mod2))`` of ``ModulationOut``); dicts (transformer_options) are not."""
    if torch.is_tensor(value):
        return [value] if value.dim() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    return []


def _take_rows(value, rows: torch.Tensor, batch: int):
    """``value`` (``_tensors``' nesting) with each tensor of ``batch`` rows taken at ``rows``; the rest as it is."""
    if torch.is_tensor(value):
        return value[rows] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take_rows(v, rows, batch) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _take_rows(getattr(value, f.name), rows, batch)
                                             for f in dataclasses.fields(value) if f.init})
    return value


_told: set = set()  # what with_shared_rows has logged: once per process, not at every edited step


def _tell_once(message: str, *args) -> None:
    if (message, args) not in _told:
        _told.add((message, args))
        log.info(message, *args)


def with_shared_rows(transformer_options: dict, diffusion_model, where: BlockSite, edited) -> dict:
    """A copy of ``transformer_options`` with ``SharedRows`` at every block but the site's own (which runs every row
    when h is its attention output, and the plain rows when h is its output: the edit comes after it).  Blocks that
    already hold a replace patch, and every block when attention patches are set (they run inside the blocks and see
    the whole batch's layout), run every row, logged once."""
    options = dict(transformer_options)
    replace = dict(options.get("patches_replace", {}))
    dit = dict(replace.get("dit", {}))
    if any(options.get("patches", {}).values()):
        _tell_once("H-Space: attention patches are set, so every block of an edited step runs the plain and the "
                   "edited rows.")
        return options
    site_key, passed = replace_key(where), False
    for block in blocks_in_order(diffusion_model):
        key = replace_key(block)
        if key == site_key:
            passed = True
            if where.attention:
                continue
        if key in dit:
            _tell_once("H-Space: block %s holds another patch; in an edited step it runs every row.", key)
            continue
        dit[key] = SharedRows(after=passed and key != site_key, edited=edited)
    replace["dit"] = dit
    options["patches_replace"] = replace
    return options
