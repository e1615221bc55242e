"""Guidance wrappers put in a per-call ``model_options``: a negative embedding for the unconditional rows and
linear CFG at another scale (null-text inversion, inverting at guidance ≠ the node's cfg)."""
from __future__ import annotations

import torch


def negative_wrapper(embedding: torch.Tensor, inner):
    """model_function_wrapper: the unconditional rows' cross-attention context becomes ``embedding`` (repeated over
    tokens to the batch's length, as ComfyUI's CONDCrossAttn.concat does)."""

    def wrapper(apply_model, args):
        c = dict(args["c"])
        context = c.get("c_crossattn")
        order = args.get("cond_or_uncond") or []
        if context is not None and 1 in order:
            rows = context.shape[0] // len(order)
            tokens = context.shape[1]
            if tokens % embedding.shape[1]:
                raise ValueError(f"The negative embedding has {embedding.shape[1]} tokens; the batch has {tokens}.")
            new = embedding.to(context).repeat(1, tokens // embedding.shape[1], 1).expand(rows, -1, -1)
            parts = list(context.split(rows))
            c["c_crossattn"] = torch.cat([new if kind == 1 else part for kind, part in zip(order, parts)])
            args = {**args, "c": c}
        if inner is not None:
            return inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    return wrapper


def linear_cfg(scale: float):
    """sampler_cfg_function for uncond + s·(cond − uncond) (args hold x − prediction for both branches)."""
    return lambda args: args["uncond"] + scale * (args["cond"] - args["uncond"])
