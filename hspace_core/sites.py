"""Which U-Net block is h: one site vocabulary for every model family.

- ``"middle"`` (default, Asyrp's h-space): the middle block's output, the bottleneck.
- ``"up1"``, ``"up2"``: the output of the first / second decoder *level* (all its resnets and its upsampler), one
  resolution step finer than the previous site.  Research on Stable Diffusion finds these decoder features more
  semantic than the bottleneck.

The same name means the same feature in both families.  A diffusers ``up_blocks[k-1]`` is one whole level; ComfyUI
splits a level into ``num_res_blocks + 1`` ``output_blocks`` (the last one with the upsampler), so ``"upk"`` is the
output of ComfyUI's output block ``Σ_{first k levels}(num_res_blocks + 1) − 1``, i.e. what the
``output_block_patch`` sees as ``h`` at block ``("output", Σ_{first k levels}(num_res_blocks + 1))``.  For SD 1.x/2.x
(2 res blocks per level) that is block ("output", 3) for up1 and ("output", 6) for up2.

Diffusion transformers (Flux, SD3.x) have no bottleneck: h is the image-token hidden state of one block
(``BlockSite``), named ``<kind>.<index>`` for the block's output (the residual stream after it) or
``<kind>.<index>.attn`` for its image-token attention output (FluxSpace's space, Dalva et al. 2025 §3): ``double.9``,
``double.9.attn`` and ``single.20`` in Flux, ``joint.12`` and ``joint.12.attn`` in SD3's MMDiT.  h is kept in its
spatial view (B, C, H/p, W/p) (``tokens_to_spatial``), so masks, previews and directions treat it as a U-Net's h.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

SITES = ("middle", "up1", "up2")
DEFAULT_SITE = "middle"
BLOCK_KINDS = ("double", "single", "joint")  # Flux double-stream, Flux single-stream, SD3 MMDiT joint blocks
_BLOCK_SITE = re.compile(r"^(double|single|joint)\.(\d+)(\.attn)?$")
# The deepest stacks of the models the pack serves: Flux.1 (19 double, 38 single blocks), SD3.5 large (38 joint).
BLOCK_COUNTS = {"double": 19, "single": 38, "joint": 38}


@dataclass(frozen=True)
class BlockSite:
    """h at a transformer block: its image tokens after the block (``attention`` False) or the image tokens of its
    attention output, after the output projection and before the gate (``attention`` True)."""

    kind: str
    index: int
    attention: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.index}{'.attn' if self.attention else ''}"


def block_site(site: str) -> BlockSite | None:
    """The ``BlockSite`` a transformer site names; None for a U-Net site; a ValueError for a malformed one."""
    if site in SITES:
        return None
    match = _BLOCK_SITE.match(site) if isinstance(site, str) else None
    if match is None:
        raise ValueError(f"h site {site!r} is unknown; use one of {SITES} on a U-Net (middle = Asyrp's bottleneck "
                         "h) or a transformer block: double.<i>, double.<i>.attn, single.<i> (Flux), joint.<i>, "
                         "joint.<i>.attn (SD3).")
    kind, index, attention = match.group(1), int(match.group(2)), match.group(3) is not None
    if kind == "single" and attention:
        raise ValueError(f"h site {site!r}: a Flux single-stream block projects attention and MLP together (one "
                         f"linear2), so it has no attention output of its own; use single.{index} (the block's "
                         f"output) or a double block's attention output, double.<i>.attn.")
    return BlockSite(kind, index, attention)


def is_block_site(site: str) -> bool:
    return block_site(site) is not None


def check_site(site: str) -> str:
    """``site`` itself, or a ValueError naming the sites there are."""
    block_site(site)
    return site


def site_choices() -> tuple[str, ...]:
    """Every site a node can offer: the U-Net sites, then each block of ``BLOCK_COUNTS`` (its output and, but for
    single-stream blocks, its attention output).  A block the connected model lacks is refused when it runs."""
    blocks = [name for kind, count in BLOCK_COUNTS.items() for i in range(count)
              for name in ((f"{kind}.{i}",) if kind == "single" else (f"{kind}.{i}.attn", f"{kind}.{i}"))]
    return (*SITES, *blocks)


def default_block_site(kind: str, num_blocks: int) -> str:
    """The default transformer site: the attention output of the middle block of the joint (double / MMDiT) stack.
    FluxSpace edits the attention outputs of Flux's joint blocks (its semantic, linearly editable space); the pack
    reads h at one block, and the middle of the stack stands where Asyrp's bottleneck stands in a U-Net (half the
    network before it).  Not measured on real weights here."""
    return BlockSite(kind, num_blocks // 2, True).name


def tokens_to_spatial(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Image tokens (B, H/p·W/p, C), row-major as Flux's and SD3's patchify order them, as (B, C, H/p, W/p)."""
    rows, cols = grid
    if tokens.shape[1] != rows * cols:
        raise ValueError(f"{tokens.shape[1]} image tokens do not make a {rows}×{cols} patch grid.")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)


def spatial_to_tokens(h: torch.Tensor) -> torch.Tensor:
    """The inverse of ``tokens_to_spatial``: (B, C, H/p, W/p) → (B, H/p·W/p, C)."""
    return h.flatten(2).transpose(1, 2)


def up_level(site: str) -> int:
    """How many decoder levels come before h: 0 for the middle block, k for ``"upk"``."""
    if is_block_site(site):
        raise ValueError(f"h site {site!r} is a transformer block; this model is a U-Net: use one of {SITES}.")
    return 0 if site == "middle" else int(site[2:])


def output_block_of_site(site: str, blocks_per_level) -> int:
    """The index of the output block whose input is h at ``site``: 0 for the middle block, for "upk" the number of
    output blocks in the first k decoder levels.  ``blocks_per_level`` lists the output blocks of each decoder
    level, deepest first (ComfyUI: ``num_res_blocks + 1`` per level, reversed; diffusers: ``len(resnets)`` of each
    up block).  A site deeper than the U-Net's levels is refused, naming the sites it has."""
    level, per_level = up_level(site), list(blocks_per_level)
    if level > len(per_level) - 1:
        raise ValueError(f"This U-Net has {len(per_level)} decoder levels, so it has no h site {site!r}; use middle"
                         f"{''.join(f', up{k}' for k in range(1, len(per_level)))}.")
    return sum(per_level[:level])


def site_at_output_block(block: int, blocks_per_level) -> str:
    """The site whose h is the input of output block ``block`` (the inverse of ``output_block_of_site``)."""
    per_level = list(blocks_per_level)
    for level in range(len(per_level)):
        if sum(per_level[:level]) == block and level < len(SITES):
            return SITES[level]
    raise ValueError(f"Output block {block} does not start a decoder level of this U-Net.")


def check_same_site(made_at: str, used_at: str, what: str) -> None:
    """Refuse an h-space object made at one site being used at another, saying which site to set."""
    made_at, used_at = made_at or DEFAULT_SITE, used_at or DEFAULT_SITE
    if made_at != used_at:
        raise ValueError(
            f"This {what} holds h read at site {made_at!r}, but h is read at site {used_at!r} here: set site to "
            f"{made_at!r} where the model runs (or make the {what} again at site {used_at!r}).")


def common_site(items, what: str) -> str:
    """The one site shared by h-space objects (directions, trajectories); refuse a mixture."""
    sites = {site_of(item) for item in items}
    if len(sites) > 1:
        raise ValueError(f"These {what} were made at different h sites {sorted(sites)}; use ones made at one site.")
    return sites.pop() if sites else DEFAULT_SITE


def site_of(obj) -> str:
    """The site of a model, direction or trajectory; objects with none (adapters of other families, older
    objects) read h at the middle block."""
    return getattr(obj, "site", DEFAULT_SITE) or DEFAULT_SITE
