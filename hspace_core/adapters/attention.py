"""Decoder self-attention (attn1) access on diffusers U-Nets: layer names, and a patch that always comes off.

An attention patch is called at every patched layer with the projected q, k, v (batch, tokens, heads·dim), the
layer's name (``attention_store``'s "block.transformer", or "middle.k"), the branch of each chunk of the batch (``chunks``) and
``attend(q, k, v)``, the layer's own attention (heads split as the layer does).  It returns the attention output
before the output projection; ``attend(q, k, v)`` itself leaves the layer as it was.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
AttentionPatch = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, tuple, Attend], torch.Tensor]


def decoder_self_attention(unet) -> dict:
    """{layer name: attn1 module} of the decoder, in forward order.

    ``up_blocks[i].attentions[j].transformer_blocks[k].attn1`` is layer "b.k" with b = Σ_{m<i} len(resnets of
    up_blocks[m]) + j: ComfyUI's output block of the same resnet (one output block per resnet).  Decoder attention
    that is not a transformer (a pixel U-Net's AttnUpBlock2D) is transformer 0 of its block.
    """
    layers, block = {}, 0
    for up in getattr(unet, "up_blocks", []):
        for j, attention in enumerate(getattr(up, "attentions", None) or []):
            transformers = getattr(attention, "transformer_blocks", None)
            if transformers is None:
                layers[f"{block + j}.0"] = attention
            else:
                for k, transformer in enumerate(transformers):
                    layers[f"{block + j}.{k}"] = transformer.attn1
        block += len(up.resnets)
    return layers


def self_attention_layers(unet) -> dict:
    """The middle block's self-attention ("middle.k": transformer k of the middle block, or its plain attention k),
    then the decoder's (``decoder_self_attention``).  StyleID injects in the decoder; the middle block is offered
    for U-Nets whose decoder has no attention (the bundled pixel model)."""
    layers = {}
    for j, attention in enumerate(getattr(getattr(unet, "mid_block", None), "attentions", None) or []):
        if attention is None:
            continue
        transformers = getattr(attention, "transformer_blocks", None)
        for k, module in enumerate([attention] if transformers is None else [t.attn1 for t in transformers]):
            layers[f"middle.{j + k}"] = module
    return {**layers, **decoder_self_attention(unet)}


class _Processor:
    """An attention processor running ``patch`` between the projections and the output projection."""

    def __init__(self, name: str, patch: AttentionPatch, chunks: tuple):
        self.name, self.patch, self.chunks = name, patch, chunks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None \
                or getattr(attn, "norm_q", None) is not None:
            raise ValueError(f"Decoder layer {self.name} is not a plain self-attention (it has a context, a mask or "
                             "a normalisation of q/k); StyleID patches plain self-attention only.")
        residual = hidden_states
        image = hidden_states.dim() == 4
        if image:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out = self.patch(self.name, q, k, v, self.chunks, lambda q_, k_, v_: _attend(q_, k_, v_, attn.heads))
        out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
        if image:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v per head, as diffusers' AttnProcessor2_0 computes it."""
    b, d = q.shape[0], q.shape[-1] // heads
    split = lambda x: x.view(x.shape[0], -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)


@contextlib.contextmanager
def self_attention_patched(unet, layers, patch: AttentionPatch, chunks: tuple = ("single",)):
    """During the block, the decoder self-attention ``layers`` run ``patch``; their processors are put back on exit,
    whatever happens.  A layer the U-Net lacks is refused before anything is attached."""
    modules = self_attention_layers(unet)
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"This U-Net has no self-attention layer {', '.join(missing)}; it has "
                         f"{', '.join(modules) or 'none'}.")
    previous = []
    try:
        for name in layers:
            module = modules[name]
            previous.append((module, module.processor))
            module.processor = _Processor(name, patch, chunks)  # not set_processor: it would log and re-wrap
        yield
    finally:
        for module, processor in reversed(previous):
            module.processor = processor


class DiffusersAttention:
    """Self-attention access for a ``DiffusersUNet`` (the ``styleid`` processes' ``access``)."""

    def __init__(self, model):
        self.model = model

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self_attention_layers(self.model.unet))

    @contextlib.contextmanager
    def patched(self, layers, patch: AttentionPatch):
        with self_attention_patched(self.model.unet, layers, patch, self.model.branches):
            yield self.model
