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
"""
from __future__ import annotations

SITES = ("middle", "up1", "up2")
DEFAULT_SITE = "middle"


def check_site(site: str) -> str:
    """``site`` itself, or a ValueError naming the sites there are."""
    if site not in SITES:
        raise ValueError(f"h site {site!r} is unknown; use one of {SITES} (middle = Asyrp's bottleneck h).")
    return site


def up_level(site: str) -> int:
    """How many decoder levels come before h: 0 for the middle block, k for ``"upk"``."""
    return 0 if check_site(site) == "middle" else int(site[2:])


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
