"""Decoder self-attention access on a ComfyUI MODEL, through ComfyUI's own attention patches.

Each patched layer gets an ``attn1`` replace patch (``patches_replace["attn1"][("output", block, transformer)]``, what
``ModelPatcher.set_model_attn1_replace`` sets) in a per-call copy of the sampling ``model_options``: the MODEL is never
patched, and nothing outlives the call.  The patch receives the projected q, k, v and returns the attention output
before ``to_out``, as ComfyUI's BasicTransformerBlock expects; ``attend`` is ComfyUI's own ``optimized_attention``.
Layer names are "block.transformer" of ``output_blocks`` (``hspace_core.attention_store``).
"""
from __future__ import annotations

import contextlib
import copy

import comfy.model_patcher
from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention

from .allocations import outside_allocation_graph


def decoder_self_attention_layers(model_patcher) -> tuple[str, ...]:
    """The "middle.k" and "block.transformer" names of the U-Net's middle- and output-block self-attention layers,
    in forward order."""
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    names = []
    for module in getattr(diffusion_model, "middle_block", None) or []:
        if isinstance(module, SpatialTransformer):
            names += [f"middle.{k}" for k in range(len(module.transformer_blocks))]
    for b, block in enumerate(getattr(diffusion_model, "output_blocks", None) or []):
        for module in block:
            if isinstance(module, SpatialTransformer):
                names += [f"{b}.{k}" for k in range(len(module.transformer_blocks))]
    return tuple(names)


def _replace(name: str, patch):
    def attn1(q, k, v, extra_options):
        order = extra_options.get("cond_or_uncond") or [0]
        chunks = tuple("cond" if c == 0 else "uncond" for c in order)
        heads, precision = extra_options["n_heads"], extra_options.get("attn_precision")
        with outside_allocation_graph():  # the recorded K, V, Q are kept past the forward
            return patch(name, q, k, v, chunks, lambda q_, k_, v_: optimized_attention(q_, k_, v_, heads,
                                                                                       attn_precision=precision))
    return attn1


class ComfyAttention:
    """Self-attention access (``hspace_core.styleid``'s ``access``) for a ``ComfyHSpaceModel``."""

    def __init__(self, model):
        self.model = model

    @property
    def layers(self) -> tuple[str, ...]:
        return decoder_self_attention_layers(self.model.model_patcher)

    @contextlib.contextmanager
    def patched(self, layers, patch):
        options = comfy.model_patcher.create_model_options_clone(self.model.extra_args["model_options"])
        for name in layers:
            block, transformer = name.split(".")
            where = ("middle", 0) if block == "middle" else ("output", int(block))
            options = comfy.model_patcher.set_model_options_patch_replace(options, _replace(name, patch), "attn1",
                                                                          *where, int(transformer))
        other = copy.copy(self.model)
        other.extra_args = {**self.model.extra_args, "model_options": options}
        yield other
