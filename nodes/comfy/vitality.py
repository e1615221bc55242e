"""Block vitality on a ComfyUI transformer MODEL (Stable Flow §3.1; ``hspace_core.vitality``): one plain generation,
then one per block with that block bypassed, same noise, sigmas and guidance.

The bypass is a ``patches_replace["dit"]`` patch on a clone of the MODEL that returns the block's inputs unchanged
(Flux double / SD3 joint blocks: ``img`` and ``txt``; Flux single blocks: the joint ``img`` sequence), so the block
and any patch another node put at it are skipped; the MODEL given is never patched.  Sampling is ComfyUI's own
``euler`` through ``comfy.sample.sample_custom`` (what SamplerCustomAdvanced runs), the noise is RandomNoise's for
the seed, made from a generator of its own (never the global RNG).  Cancel is honoured at every step and between
blocks (``progress.progress_bar``)."""
from __future__ import annotations

import logging

import comfy.sample
import comfy.samplers
import torch

from ...hspace_core.sites import BlockSite
from ...hspace_core.vitality import relative_change
from . import dit
from .progress import progress_bar

log = logging.getLogger("hspace")


class _Bypass:
    """The replace patch of one bypassed block: the block's inputs go on as its outputs."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, args: dict, extra: dict) -> dict:
        return {"img": args["img"]} if self.kind == "single" else {"img": args["img"], "txt": args["txt"]}


def transformer_blocks(diffusion_model) -> list[BlockSite]:
    """Every block of the transformer in the order it runs: Flux's double then single blocks, SD3's joint blocks."""
    return [BlockSite(kind, i) for kind, n in dit.block_counts(diffusion_model).items() for i in range(n)]


def bypassed(model, where: BlockSite):
    """A clone of ``model`` whose block ``where`` hands its inputs on unchanged."""
    clone = model.clone()
    kind, index = dit.replace_key(where)
    clone.set_model_patch_replace(_Bypass(where.kind), "dit", kind, index)
    return clone


def seeded_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """RandomNoise's noise for ``seed`` (``comfy.sample.prepare_noise``'s values) from a generator of its own."""
    return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout,
                       generator=torch.Generator().manual_seed(seed), device="cpu")


def measure(model, positive, negative, latent: dict, sigmas: torch.Tensor, seed: int, cfg: float, distance):
    """{site name: change} over every block, in block order.  ``distance(plain, bypassed)`` compares two sampled
    LATENT tensors (None: ``relative_change``)."""
    dm = model.get_model_object("diffusion_model")
    blocks = transformer_blocks(dm)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = seeded_noise(samples, seed)
    steps = len(sigmas) - 1
    update = progress_bar((len(blocks) + 1) * steps, model)
    sampler = comfy.samplers.sampler_object("euler")
    mask = latent.get("noise_mask")

    def run(patcher, k: int) -> torch.Tensor:
        def callback(step, x0, x, total):
            update(k * steps + step + 1, (len(blocks) + 1) * steps, x0)

        return comfy.sample.sample_custom(patcher, noise, cfg, sampler, sigmas, positive, negative, samples,
                                          noise_mask=mask, callback=callback, disable_pbar=True, seed=seed)

    plain = run(model, 0)
    distance = distance or relative_change
    changes = {}
    for k, where in enumerate(blocks, start=1):
        other = run(bypassed(model, where), k)
        with torch.no_grad():
            changes[where.name] = float(distance(plain, other))
        log.info("h-space: block vitality: %s bypassed changes the image by %.4g", where.name, changes[where.name])
    return changes
