"""The image tokens' Q, K and V of a transformer block's attention (Flux double / single blocks, SD3 joint blocks), for
StyleID on transformers (``hspace_core.flow_styleid``), and the run that feeds it.

A ``BlockAttention`` is a ``patches_replace["dit"]`` patch at one block (``dit.with_dit_patch``): while that block
runs inside it, two forward hooks live on its modules and are removed in ``finally``:

- the qkv projection (Flux double ``img_attn.qkv``, Flux single ``linear1``, SD3 ``x_block.attn.qkv``): its output is
  laid out (tokens, [q | k | v (| mlp)]) with q, k, v each (heads, head_dim); the image tokens' K and V parts are
  handed to the patch and replaced by what it returns, before the block's QK-norm (as Stable Flow replaces them);
- the query norm (Flux ``img_attn.norm`` / single ``norm``: QKNorm, (q, k) as (B, heads, L, d); SD3 ``ln_q``,
  (B, L, heads, d), an Identity without qk_norm): the image tokens' normalised query goes to the patch the same way.

The image tokens are the block's image stream (the first H/p·W/p tokens: Kontext reference tokens follow them) or,
in a single block's [text; image] sequence, the tokens from ``img_slice`` (0.33.0) or after the text (0.3.75).
0.3.75's Flux has no attention patch and 0.33.0's ``attn1_patch`` sees q, k, v after the norm and RoPE, text and
image together; MMDiT has none in either: module hooks are the one mechanism for both versions and both families.
"""
from __future__ import annotations

import copy
import logging

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers

from ...hspace_core.attention_store import LAYER_PRESETS
from ...hspace_core.flow_styleid import STABLE_FLOW_VITAL, TRANSFORMER_PRESETS
from ...hspace_core.sites import BlockSite, block_site
from . import dit
from .allocations import outside_allocation_graph
from .checks import check_has_h_space, check_latent
from .model import ComfyHSpaceModel
from .noise_levels import noise_levels

log = logging.getLogger("hspace")
DEFAULT_UNET_PRESET = "StyleID SD1.x"  # the widget's default: on a transformer it stands for the family's preset


def attention_layers(diffusion_model) -> tuple[str, ...]:
    """Every block with an image-token attention, in forward order: "double.i", "single.i" (Flux), "joint.i" (SD3)."""
    return tuple(f"{kind}.{i}" for kind, n in dit.block_counts(diffusion_model).items() for i in range(n))


def default_layers(diffusion_model) -> tuple[str, ...]:
    """Flux.1 (19 double, 38 single blocks): Stable Flow's vital layers; any other transformer, Chroma's same-shaped
    stack included (its blocks are retrained: Flux's measurement does not carry over): every block (no paper names
    layers for it; users choose with custom_layers, from H-Space Block Vitality)."""
    have = attention_layers(diffusion_model)
    flux = dit.dit_family(diffusion_model) == "flux"
    return STABLE_FLOW_VITAL if flux and all(layer in have for layer in STABLE_FLOW_VITAL) else have


def transformer_layers(diffusion_model, preset: str, custom: str, node: str) -> tuple[str, ...]:
    """The blocks a StyleID node injects at on a transformer: a transformer preset, the U-Net default preset read
    as this model's default (logged), or ``custom`` ("double.0, single.6", "joint.3", "all")."""
    have = attention_layers(diffusion_model)
    if preset == DEFAULT_UNET_PRESET:
        chosen = default_layers(diffusion_model)
        log.info("H-Space: %s on a %s injects at %s (the transformer default for attention_layers %r).", node,
                 type(diffusion_model).__name__, ", ".join(chosen), preset)
        return chosen
    if preset in LAYER_PRESETS:
        raise ValueError(f"{node}: attention_layers {preset!r} names U-Net decoder layers; this MODEL is a "
                         f"transformer: choose one of {list(TRANSFORMER_PRESETS)} or 'custom'.")
    what = "custom_layers" if preset == "custom" else "attention_layers"
    names = TRANSFORMER_PRESETS[preset] if preset in TRANSFORMER_PRESETS else tuple(
        e.strip() for e in str(custom).replace(";", ",").split(",") if e.strip())
    if names == ("all",):
        return have
    shown = f"{have[0]} … {have[-1]}" if have else "none"
    for name in names:
        if name not in have:  # "double.0.attn", U-Net layers ("7.0") and blocks it lacks
            raise ValueError(f"{node}: {what} names {name!r}, which is not a block of this "
                             f"{type(diffusion_model).__name__}: its blocks are {shown} (comma-separated, or 'all'; "
                             f"the Stable Flow preset is for Flux.1's 19 + 38 blocks).")
    if not names:
        raise ValueError(f"{node}: {what} is empty; give blocks like 'double.0, single.6' or 'all'.")
    return tuple(dict.fromkeys(names))


def _modules(block: torch.nn.Module, kind: str):
    """(the qkv projection, the query norm, the norm's layout) of one block."""
    if kind == "double":
        return block.img_attn.qkv, block.img_attn.norm, "flux"
    if kind == "single":
        return block.linear1, block.norm, "flux"
    return block.x_block.attn.qkv, block.x_block.attn.ln_q, "sd3"


class BlockAttention:
    """The dit replace patch at one block: ``patch(layer, kind, value)`` sees and replaces its image tokens' Q, K, V
    (module docstring) while the block runs; ``grid`` is the image's patch grid."""

    def __init__(self, diffusion_model, where: BlockSite, patch, grid: tuple[int, int]):
        self.where, self.patch, self.grid = where, patch, tuple(grid)
        self.key = dit.replace_key(where)
        blocks = {"double": "double_blocks", "single": "single_blocks", "joint": "joint_blocks"}[where.kind]
        self.qkv, self.norm, self.layout = _modules(getattr(diffusion_model, blocks)[where.index], where.kind)
        self.dim = diffusion_model.hidden_size  # q, k, v each heads·head_dim wide

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options") or {}
        tokens = self.grid[0] * self.grid[1]
        if self.where.kind == "single":
            where = options.get("img_slice")
            offset = int(where[0]) if where is not None else args["img"].shape[1] - tokens
        else:
            offset = 0
        image = slice(offset, offset + tokens)
        hooks = [self.qkv.register_forward_hook(lambda m, i, out: self._kv(out, image)),
                 self.norm.register_forward_hook(lambda m, i, out: self._q(out, image))]
        try:
            return extra["original_block"](args)
        finally:
            for hook in hooks:
                hook.remove()

    def _kv(self, out: torch.Tensor, image: slice):
        dim = self.dim
        new = None
        with outside_allocation_graph():  # recorded K/V outlive the forward
            for part, kind in ((1, "k"), (2, "v")):
                cols = slice(part * dim, (part + 1) * dim)
                value = out[:, image, cols]
                got = self.patch(self.where.name, kind, value)
                if got is not value:
                    new = out.clone() if new is None else new
                    new[:, image, cols] = got.to(out.dtype)
        return new

    def _q(self, out, image: slice):
        q = out[0] if self.layout == "flux" else out
        if self.layout == "flux":  # (B, heads, L, d)
            b, heads, _, d = q.shape
            value = q[:, :, image].transpose(1, 2).reshape(b, -1, heads * d)
        else:  # (B, L, heads, d)
            b, _, heads, d = q.shape
            value = q[:, image].reshape(b, -1, heads * d)
        with outside_allocation_graph():
            got = self.patch(self.where.name, "q", value)
            if got is value:
                return None
            new = q.clone()
            rows = got.to(q.dtype).reshape(b, -1, heads, d)
            if self.layout == "flux":
                new[:, :, image] = rows.transpose(1, 2)
                return (new, *out[1:])
            new[:, image] = rows
            return new


def with_attention_patch(transformer_options: dict, diffusion_model, layers, patch, grid) -> dict:
    """A copy of ``transformer_options`` with a ``BlockAttention`` at each of ``layers`` (``dit.with_dit_patch``)."""
    for name in layers:
        transformer_options = dit.with_dit_patch(transformer_options,
                                                 BlockAttention(diffusion_model, block_site(name), patch, grid))
    return transformer_options


def flow_grid(model, steps: int) -> tuple[torch.Tensor, list[int]]:
    """The σ grid of both StyleID nodes on a flow model: ComfyUI's 'simple' scheduler of ``steps`` on the MODEL's
    own model_sampling (its shift included), and the model's timestep of each σ > 0 (the store's keys)."""
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).float()
    return sigmas, noise_levels(model).timesteps(sigmas[:-1])


def percent_steps(model, sigmas, timesteps, start_percent: float, end_percent: float) -> tuple[int, int]:
    """A start/end percent window as StyleID's (t_start, t_stop) on this grid: the steps whose σ lies in
    [σ(end_percent), σ(start_percent)]; refused when it holds none."""
    window = noise_levels(model).percent_window(start_percent, end_percent, "H-Space StyleID")
    inside = [t for t, s in zip(timesteps, sigmas.tolist()) if window.contains(s)]
    if not inside:
        raise ValueError(f"H-Space StyleID: the window {start_percent:.2f}–{end_percent:.2f} holds no step of the "
                         f"{len(timesteps)}-step grid; widen start_percent / end_percent or raise steps.")
    return max(inside), min(inside)


def run_on_transformer(model, latent: torch.Tensor, body, *, positive, sigmas, layers, site: str | None = None):
    """Run ``body(denoise, x)`` inside ComfyUI's sampling of a Flux / SD3 ``model`` at cfg 1 (the official StyleID
    records and generates under one, empty, prompt without CFG): ``x`` is the latent in model space and
    ``denoise(x, sigma, patch, edit=None, t=None)`` is the denoiser with ``patch`` at ``layers`` (None: the plain
    call), in a per-call copy of the model options (nothing reaches the MODEL): (D(x | h), D(x | h̃) or None, h) with
    h read (and, with the h edit ``edit`` at timestep ``t``, edited in one call on [x; x]) at ``site`` (None: the
    transformer's default; ``model.ComfyHSpaceModel.denoised``).  Returns what ``body`` returns."""
    check_has_h_space(model)
    check_latent(model, latent)
    if positive is None:
        raise ValueError("H-Space StyleID on a transformer needs text conditioning: connect positive (the empty "
                         "prompt '' encoded for this model, with FluxGuidance on Flux-dev).")
    dm = model.get_model_object("diffusion_model")
    result = {}

    def sampler_function(denoiser, x, sigmas_in, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        hs = ComfyHSpaceModel.for_node(1.0)(denoiser, extra_args, model, "cond", site)

        def denoise(x_i, sigma, patch, edit=None, t=None):
            comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel within one model call
            call = hs
            if patch is not None:
                options = comfy.model_patcher.create_model_options_clone(extra_args["model_options"])
                grid = dit.patch_grid(dm, x_i.shape[-2:])
                options["transformer_options"] = with_attention_patch(options.get("transformer_options", {}), dm,
                                                                      layers, patch, grid)
                call = copy.copy(hs)
                call.extra_args = {**extra_args, "model_options": options}
            return call.denoised(x_i, sigma, edit, t)

        with torch.no_grad():  # no gradients: a caller outside ComfyUI's inference mode keeps no graph
            result["value"] = body(denoise, model.model.process_latent_in(latent.to(x)))
        return x

    comfy.sample.sample_custom(model, torch.zeros_like(latent), 1.0, comfy.samplers.KSAMPLER(sampler_function),
                               sigmas, positive, positive, latent, disable_pbar=True, seed=0)
    return result["value"]


def sigma_denoise(denoise, sigmas: torch.Tensor, timesteps):
    """``hspace_core.flow_styleid``'s ``denoise(x, i, patch, edit=None)`` over a grid's ``sigmas`` (on x's device)
    and the model's ``timesteps`` of them (where an h edit is evaluated)."""
    on = {}

    def call(x, i, patch, edit=None):
        s = on.setdefault(x.device, sigmas.to(x.device))
        return denoise(x, s[i], patch, edit, timesteps[i])
    return call
