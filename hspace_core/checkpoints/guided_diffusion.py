"""openai guided-diffusion / iDDPM ``UNetModel`` checkpoints, converted to a diffusers ``UNet2DModel``.

The layout of Nichol & Dhariwal's improved DDPM and Dhariwal & Nichol's guided diffusion (openai/guided-diffusion
``guided_diffusion/unet.py``), which the P2-weighting models (AFHQ-dog, METFACES; Choi et al. 2022) and the ImageNet
models Asyrp and InjectFusion use are saved in.  It maps exactly onto ``UNet2DModel``: cos-first sinusoidal time
embedding (flip_sin_to_cos=True, freq_shift=0), GroupNorm(32, eps 1e-5), scale-shift norm
(``resnet_time_scale_shift="scale_shift"``), resblock up/down-sampling (``ResnetDownsampleBlock2D`` /
``ResnetUpsampleBlock2D``, ``downsample_type="resnet"``), the fused qkv attention split into to_q / to_k / to_v in
either head order, learned-σ outputs (6 channels: ε, then the variance interpolation) and class conditioning
(``label_emb`` → ``num_class_embeds``).  Two things the config cannot say are set on the built modules: a fixed head
count with varying head width (``num_heads``; diffusers fixes the head width) and a first level narrower than
``model_channels`` (ImageNet 512's channel_mult[0] = 0.5: the sinusoid stays model_channels wide).

Read off the weights: model_channels, channel_mult, num_res_blocks, the levels with attention, resblock_updown,
scale-shift norm, learned σ, the number of classes.  Not in the weights: the attention head split (num_heads or
num_head_channels, and use_new_attention_order) and the β schedule.  The published models are recognised by their
architecture (``KNOWN_MODELS``); for any other the head split must be given, or a ValueError names it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from .files import fit_problems

log = logging.getLogger("hspace")

__all__ = ["GuidedLayout", "AttentionSplit", "PublishedModel", "KNOWN_MODELS", "guided_layout", "attention_split", "guided_unet_config",
           "guided_to_diffusers", "guided_unet"]


@dataclass(frozen=True)
class GuidedLayout:
    """What a ``UNetModel`` state dict says about its architecture."""

    in_channels: int
    out_channels: int
    model_channels: int
    widths: tuple[int, ...]          # channels per level (model_channels · channel_mult)
    num_res_blocks: int
    attention: tuple[bool, ...]      # per level; the middle block always has attention
    resblock_updown: bool
    scale_shift: bool
    num_classes: int | None = None
    condition_dims: int | None = None     # a continuous conditioning input: label_emb is Linear layers, not a table
    condition_layers: tuple[int, ...] = ()  # the Linear layers' indices in a label_emb nn.Sequential; () for one Linear

    @property
    def channel_mult(self) -> tuple[float, ...]:
        return tuple(w / self.model_channels for w in self.widths)

    @property
    def attention_rates(self) -> tuple[int, ...]:
        """The downsample rates with attention (the original's ``attention_resolutions``)."""
        return tuple(2 ** level for level, on in enumerate(self.attention) if on)

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels


@dataclass(frozen=True)
class AttentionSplit:
    """How the fused qkv splits into heads: ``num_head_channels`` (fixed head width) or ``num_heads`` (fixed count);
    ``new_order`` is openai's use_new_attention_order (QKVAttention: q, k, v first, then heads) against the legacy
    QKVAttentionLegacy (heads first, each holding its own q, k, v)."""

    num_heads: int | None = None
    num_head_channels: int | None = None
    new_order: bool = False

    def heads(self, channels: int) -> int:
        """The number of heads of an attention block ``channels`` wide."""
        if self.num_head_channels:
            heads, fits = channels // self.num_head_channels, channels % self.num_head_channels == 0
            wanted = f"heads of {self.num_head_channels} channels"
        else:
            heads, fits = self.num_heads, channels % self.num_heads == 0
            wanted = f"{self.num_heads} heads"
        if not fits or heads < 1:
            raise ValueError(f"An attention block of {channels} channels cannot be split into {wanted}; give the "
                             "num_heads / num_head_channels the model was trained with.")
        return heads


@dataclass(frozen=True)
class PublishedModel:
    """A published checkpoint's architecture (what the weights show) and the settings they do not record, from its
    README / training command."""

    name: str
    model_channels: int
    channel_mult: tuple[float, ...]
    num_res_blocks: int
    attention_rates: tuple[int, ...]
    split: AttentionSplit
    beta_schedule: str
    resblock_updown: bool = True

    def matches(self, layout: GuidedLayout) -> bool:
        return (layout.model_channels, layout.channel_mult, layout.num_res_blocks, layout.attention_rates,
                layout.resblock_updown) == (self.model_channels, tuple(map(float, self.channel_mult)),
                                            self.num_res_blocks, self.attention_rates, self.resblock_updown)

    @property
    def settings(self) -> str:
        split = self.split
        return (f"num_head_channels={split.num_head_channels}" if split.num_head_channels else
                f"num_heads={split.num_heads}") + (", new_attention_order=True" if split.new_order else "")


KNOWN_MODELS = (
    PublishedModel("guided-diffusion 256×256 (ImageNet cond./uncond., LSUN bedroom/cat/horse)", 256,
                   (1, 1, 2, 2, 4, 4), 2, (8, 16, 32), AttentionSplit(num_head_channels=64), "linear"),
    PublishedModel("guided-diffusion 512×512 ImageNet (Asyrp's ImageNet)", 256, (0.5, 1, 1, 2, 2, 4, 4), 2,
                   (16, 32, 64), AttentionSplit(num_head_channels=64), "linear"),
    PublishedModel("guided-diffusion 128×128 ImageNet", 256, (1, 1, 2, 3, 4), 2, (4, 8, 16),
                   AttentionSplit(num_heads=4), "linear"),
    PublishedModel("guided-diffusion 64×64 ImageNet", 192, (1, 2, 3, 4), 3, (2, 4, 8),
                   AttentionSplit(num_head_channels=64, new_order=True), "cosine"),
    PublishedModel("P2-weighting 256×256 (AFHQ-dog, METFACES, FFHQ, CUB; Asyrp / InjectFusion)", 128,
                   (1, 1, 2, 2, 4, 4), 1, (16,), AttentionSplit(num_head_channels=64), "linear"),
)


def _indices(state: dict, prefix: str) -> list[int]:
    """The sorted integers k of the keys ``prefix.k.…``."""
    found = {key[len(prefix) + 1:].split(".", 1)[0] for key in state if key.startswith(prefix + ".")}
    return sorted(int(k) for k in found if k.isdigit())


def _layer_after_attention(state: dict, block: str) -> str:
    """The index of the layer after the ResBlock (and the AttentionBlock, when there is one) in a block."""
    return f"{block}.2" if f"{block}.1.qkv.weight" in state else f"{block}.1"


def _has_layer(state: dict, prefix: str) -> bool:
    return any(key.startswith(prefix + ".") for key in state)


def guided_layout(state: dict) -> GuidedLayout:
    """The architecture of a ``UNetModel`` state dict; a ValueError for one diffusers cannot express."""
    try:
        model_channels = state["time_embed.0.weight"].shape[1]
        first = state["input_blocks.0.0.weight"]
        out_channels = state["out.2.weight"].shape[0]
    except KeyError as missing:
        raise ValueError(f"The guided-diffusion checkpoint lacks {missing}; it is truncated or not a UNetModel.") from None
    if first.dim() != 4:
        raise ValueError(f"This UNetModel is {first.dim() - 2}-D; only 2-D image models (dims=2) convert.")
    outputs, inputs = _indices(state, "output_blocks"), _indices(state, "input_blocks")
    ups = [k for k in outputs if _has_layer(state, _layer_after_attention(state, f"output_blocks.{k}"))]
    blocks = ups[0] if ups else len(outputs) - 1  # the first upsampler closes the deepest level's num_res_blocks + 1
    levels = len(outputs) // (blocks + 1) if blocks else 0
    if not blocks or outputs != list(range(levels * (blocks + 1))) or inputs != list(range(len(outputs))):
        raise ValueError(f"The UNetModel's blocks do not form a U-Net (input blocks {inputs[:3]}…, output blocks "
                         f"{outputs[:3]}…, upsamplers at {ups[:3]}); the checkpoint is truncated or not a UNetModel "
                         "(conv_resample=False, whose resamplers hold no weights, is not supported).")
    first_of = [1 + level * (blocks + 1) for level in range(levels)]
    widths = tuple(int(state[f"input_blocks.{k}.0.out_layers.3.weight"].shape[0]) for k in first_of)
    attention = tuple(f"input_blocks.{k}.1.qkv.weight" in state for k in first_of)
    updown = levels > 1 and f"input_blocks.{blocks + 1}.0.in_layers.0.weight" in state
    problems = []
    if widths[0] != first.shape[0]:
        problems.append(f"the first level is {widths[0]} wide but the input convolution gives {first.shape[0]}")
    if any(v.dim() == 4 and v.shape[-1] != 1 for k, v in state.items() if ".skip_connection." in k):
        problems.append("3×3 skip connections (ResBlock use_conv=True; diffusers has 1×1 shortcuts)")
    if problems:
        raise ValueError("This guided-diffusion checkpoint cannot be expressed as a diffusers UNet2DModel: "
                         + "; ".join(problems) + ".")
    emb = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    return GuidedLayout(in_channels=int(first.shape[1]), out_channels=int(out_channels),
                        model_channels=int(model_channels), widths=widths, num_res_blocks=blocks, attention=attention,
                        resblock_updown=updown, scale_shift=emb == 2 * widths[0],
                        **label_input(state, int(state["time_embed.2.weight"].shape[0])))


def label_input(state: dict, emb: int) -> dict:
    """What ``label_emb`` is: a class table (nn.Embedding: weight only, (classes, emb)), or a continuous input's
    Linear layers (one nn.Linear, or an nn.Sequential of Linear layers with parameter-free activations between:
    SiLU assumed, as in ``time_embed``).  {} without label_emb."""
    keys = {key[len("label_emb."):]: value for key, value in state.items() if key.startswith("label_emb.")}
    if not keys:
        return {}
    shapes = ", ".join(f"label_emb.{k} {tuple(v.shape)}" for k, v in keys.items())
    if set(keys) == {"weight"} and keys["weight"].dim() == 2 and keys["weight"].shape[1] == emb:
        return {"num_classes": int(keys["weight"].shape[0])}
    layers = sorted({int(k.split(".")[0]) for k in keys if k.split(".")[0].isdigit()})
    linears = [f"{i}." for i in layers] if layers else [""]
    expected = {f"{p}{part}" for p in linears for part in ("weight", "bias")}
    chain = [keys.get(f"{p}weight") for p in linears]
    fits = set(keys) == expected and all(w is not None and w.dim() == 2 for w in chain) and all(
        keys[f"{p}bias"].shape == (w.shape[0],) for p, w in zip(linears, chain))
    fits = fits and chain[-1].shape[0] == emb and all(a.shape[0] == b.shape[1] for a, b in zip(chain, chain[1:]))
    if not fits:
        raise ValueError(f"label_emb ({shapes}) is neither a class table (nn.Embedding(classes, {emb})) nor Linear "
                         f"layers from a conditioning input to the {emb}-wide time embedding; this loader converts "
                         "those two.")
    if len(layers) > 1:
        log.info("label_emb is an MLP of %d Linear layers (%s): SiLU assumed between them, as in time_embed.",
                 len(layers), shapes)
    return {"condition_dims": int(chain[0].shape[1]), "condition_layers": tuple(layers)}


def known_model(layout: GuidedLayout) -> PublishedModel | None:
    """The published model whose architecture this is, or None."""
    return next((model for model in KNOWN_MODELS if model.matches(layout)), None)


class MissingHeadSplit(ValueError):
    """The head split is neither given nor known from a published architecture (``load_checkpoint`` adds the other
    settings that are missing)."""


def attention_split(layout: GuidedLayout, num_heads: int | None = None, num_head_channels: int | None = None,
                    new_attention_order: bool | None = None) -> AttentionSplit:
    """The head split: as given, else the recognised published model's, else a ValueError naming what to give.
    ``num_heads`` = 1 (one head over all channels) needs no order."""
    if num_heads is not None and num_head_channels is not None:
        raise ValueError("Give num_heads or num_head_channels, not both (num_head_channels overrides num_heads in "
                         "openai's UNetModel; pass only the one the model was trained with).")
    for name, value in (("num_heads", num_heads), ("num_head_channels", num_head_channels)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if num_heads is None and num_head_channels is None:
        known = known_model(layout)
        if known is None:
            raise MissingHeadSplit(
                "The attention head split of this guided-diffusion checkpoint is not in its weights and its "
                f"architecture (model_channels={layout.model_channels}, channel_mult={layout.channel_mult}, "
                f"num_res_blocks={layout.num_res_blocks}, attention at downsample rates {layout.attention_rates}) "
                "is none of the published ones (" + "; ".join(f"{model.name}: {model.settings}" for model in KNOWN_MODELS)
                + "; improved-diffusion (iDDPM): num_heads=4): give num_heads or num_head_channels (and "
                "new_attention_order) as the model was trained with, from its training command or config. Without "
                "them, hspace_core.checkpoints.rank_head_splits(path) loads every split that fits and ranks them by "
                "denoising loss on noised probe images: try the first, and check a sample with it.")
        log.info("guided-diffusion checkpoint recognised as %s: %s.", known.name, known.settings)
        if new_attention_order is None or new_attention_order == known.split.new_order:
            return known.split
        log.info("new_attention_order=%s as given, instead of the published model's.", new_attention_order)
        return dataclasses.replace(known.split, new_order=bool(new_attention_order))
    widths = set(layout.widths[i] for i, on in enumerate(layout.attention) if on) | {layout.widths[-1]}
    split = AttentionSplit(num_heads, num_head_channels, bool(new_attention_order))
    if new_attention_order is None and any(split.heads(w) > 1 for w in widths):
        raise ValueError("With more than one attention head the head order matters and is not in the weights: give "
                         "new_attention_order (False: openai's default, QKVAttentionLegacy, used by all published "
                         "guided-diffusion models but the 64×64 ImageNet one; True: QKVAttention).")
    for width in widths:
        split.heads(width)
    return split


def guided_unet_config(layout: GuidedLayout, split: AttentionSplit, sample_size: int | None = None) -> dict:
    """The ``UNet2DModel`` config of a guided-diffusion layout."""
    down = "Resnet" if layout.resblock_updown else ""
    return dict(
        sample_size=sample_size, in_channels=layout.in_channels, out_channels=layout.out_channels,
        block_out_channels=layout.widths, layers_per_block=layout.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else f"{down}Down{'sample' if down else ''}Block2D"
                               for a in layout.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else f"{down}Up{'sample' if down else ''}Block2D"
                             for a in reversed(layout.attention)),
        downsample_type="resnet" if layout.resblock_updown else "conv",
        upsample_type="resnet" if layout.resblock_updown else "conv",
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        time_embedding_dim=4 * layout.model_channels, norm_eps=1e-5, norm_num_groups=32, attn_norm_num_groups=32,
        act_fn="silu", attention_head_dim=split.num_head_channels, downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if layout.scale_shift else "default",
        num_class_embeds=layout.num_classes, class_embed_type="identity" if layout.condition_dims else None,
        add_attention=True)


_RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _module_plan(layout: GuidedLayout) -> list[tuple[str, str, str]]:
    """(openai module, diffusers module, kind) for every module with weights; kind: plain, resnet or attention."""
    plan = [("time_embed.0", "time_embedding.linear_1", "plain"), ("time_embed.2", "time_embedding.linear_2", "plain"),
            ("input_blocks.0.0", "conv_in", "plain"), ("out.0", "conv_norm_out", "plain"),
            ("out.2", "conv_out", "plain"), ("label_emb", "class_embedding", "plain"),
            ("middle_block.0", "mid_block.resnets.0", "resnet"), ("middle_block.1", "mid_block.attentions.0", "attention"),
            ("middle_block.2", "mid_block.resnets.1", "resnet")]
    levels, blocks, k = len(layout.widths), layout.num_res_blocks, 1
    for level in range(levels):
        for i in range(blocks):
            plan.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{i}", "resnet"))
            if layout.attention[level]:
                plan.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{i}", "attention"))
            k += 1
        if level < levels - 1:
            plan.append((f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", "resnet")
                        if layout.resblock_updown else
                        (f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
            k += 1
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(blocks + 1):
            plan.append((f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", "resnet"))
            after = 1
            if layout.attention[level]:
                plan.append((f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", "attention"))
                after = 2
            if level and i == blocks:
                plan.append((f"output_blocks.{k}.{after}", f"up_blocks.{up}.upsamplers.0", "resnet")
                            if layout.resblock_updown else
                            (f"output_blocks.{k}.{after}.conv", f"up_blocks.{up}.upsamplers.0.conv", "plain"))
            k += 1
    return plan


def split_qkv(weight: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, ...]:
    """q, k, v rows of a fused qkv projection (3C rows).  New order: [q | k | v], each head-major.  Legacy order:
    head-major, each head holding [q_h | k_h | v_h] (QKVAttentionLegacy reshapes to (heads, 3·ch) and splits)."""
    if new_order:
        return weight.chunk(3, dim=0)
    rows = weight.shape[0] // 3
    grouped = weight.reshape(heads, 3, rows // heads, *weight.shape[1:])
    return tuple(grouped[:, part].reshape(rows, *weight.shape[1:]) for part in range(3))


def _linear(weight: torch.Tensor, key: str) -> torch.Tensor:
    """An attention projection's weight as a linear one: 1×1 Conv1d (guided-diffusion: (out, in, 1)) and Conv2d
    (consistency models' conv_nd(2, …): (out, in, 1, 1)) weights squeezed; a bias as it is."""
    if weight.dim() > 2 and any(n != 1 for n in weight.shape[2:]):
        raise ValueError(f"{key} has shape {tuple(weight.shape)}: an attention projection must be a 1×1 convolution "
                         "or a linear layer; the checkpoint is not a UNetModel this loader converts.")
    return weight.reshape(weight.shape[0], -1) if weight.dim() > 2 else weight


def guided_to_diffusers(state: dict, layout: GuidedLayout, split: AttentionSplit, origins: dict | None = None
                        ) -> dict[str, torch.Tensor]:
    """Rename a ``UNetModel`` state dict to ``UNet2DModel``'s, splitting each fused qkv into to_q / to_k / to_v and
    squeezing the attention's 1×1 convolution weights (Conv1d or Conv2d) to linear ones.  A key no module of the
    layout claims is refused.  ``origins``, when given, is filled with {diffusers key: the file's key}."""
    out, used = {}, set()
    origins = {} if origins is None else origins
    for old, new, kind in _module_plan(layout):
        keys = [key for key in state if key.startswith(old + ".")]
        used.update(keys)
        for key in keys:
            value, rest = state[key], key[len(old) + 1:]
            part, _, param = rest.rpartition(".")  # e.g. "in_layers.0", "weight"
            if kind == "attention" and part == "qkv":
                heads = split.heads(value.shape[0] // 3)
                pieces = split_qkv(_linear(value, key), heads, split.new_order)
                converted = {f"{new}.{name}.{param}": piece for name, piece in zip(("to_q", "to_k", "to_v"), pieces)}
            elif kind == "attention":
                name = {"norm": "group_norm", "proj_out": "to_out.0"}.get(part, part)
                converted = {f"{new}.{name}.{param}": _linear(value, key) if part == "proj_out" else value}
            elif kind == "resnet":
                converted = {f"{new}.{_RESNET_PARTS.get(part, part)}.{param}": value}
            else:
                converted = {f"{new}.{rest}": value}
            out.update(converted)
            origins.update(dict.fromkeys(converted, key))
    unclaimed = [key for key in state if key not in used]
    if unclaimed:
        raise ValueError(f"The guided-diffusion checkpoint has weights its inferred architecture has no place for "
                         f"({', '.join(unclaimed[:4])}); it is not a plain UNetModel (SuperResModel and "
                         "EncoderUNetModel classifiers are not diffusion U-Nets this loader converts).")
    return out


def _fix_label(weights: dict, layout: GuidedLayout, class_label: int | None, condition):
    """The weights and layout with the class or the continuous input fixed, as asked; what does not fit the model's
    ``label_emb`` is refused, saying what it has."""
    has = (f"a class table of {layout.num_classes} classes" if layout.num_classes else
           f"a continuous conditioning input (label_emb: Linear layers from {layout.condition_dims} numbers)"
           if layout.condition_dims else "no label_emb: it is unconditional")
    if class_label is not None:
        if not layout.num_classes:
            instead = (f"give condition (a list of {layout.condition_dims} numbers) instead"
                       if layout.condition_dims else "leave it unset")
            raise ValueError(f"class_label was given but this guided-diffusion model has {has}; {instead}.")
        return fold_class_label(weights, class_label), dataclasses.replace(layout, num_classes=None)
    if condition is not None:
        if not layout.condition_dims:
            instead = "give class_label instead" if layout.num_classes else "leave it unset"
            raise ValueError(f"condition was given but this guided-diffusion model has {has}; {instead}.")
        return fold_condition(weights, layout, tuple(condition)), dataclasses.replace(
            layout, condition_dims=None, condition_layers=())
    return weights, layout


def fold_class_label(weights: dict, label: int) -> dict:
    """A class-conditional model fixed to one class: emb = W·e_t + b + E[y] (openai adds ``label_emb(y)`` to the time
    embedding), so E[y] moves into linear_2's bias and the class embedding goes."""
    table = weights["class_embedding.weight"]
    if not 0 <= label < table.shape[0]:
        raise ValueError(f"class_label must be in 0 … {table.shape[0] - 1} for this {table.shape[0]}-class model, "
                         f"got {label}.")
    out = {k: v for k, v in weights.items() if k != "class_embedding.weight"}
    out["time_embedding.linear_2.bias"] = weights["time_embedding.linear_2.bias"] + table[label]
    return out


def condition_mlp(layout: GuidedLayout, weights: dict) -> torch.nn.Module:
    """The continuous-input ``label_emb`` as a module shaped like the file's: one Linear, or Linear layers at the
    file's indices with SiLU between (see ``label_input``)."""
    def linear(prefix):
        out_features, in_features = weights[f"{prefix}weight"].shape
        return torch.nn.Linear(in_features, out_features)

    if not layout.condition_layers:
        return linear("class_embedding.")
    layers = [torch.nn.SiLU() for _ in range(layout.condition_layers[-1] + 1)]
    for i in layout.condition_layers:
        layers[i] = linear(f"class_embedding.{i}.")
    return torch.nn.Sequential(*layers)


def fold_condition(weights: dict, layout: GuidedLayout, condition: tuple[float, ...]) -> dict:
    """A continuously conditioned model fixed to one input c: openai adds ``label_emb(c)`` to the time embedding, a
    constant for a fixed c, so it moves into linear_2's bias and the MLP goes."""
    if len(condition) != layout.condition_dims:
        raise ValueError(f"condition has {len(condition)} numbers but this model's label_emb takes "
                         f"{layout.condition_dims}; give {layout.condition_dims}.")
    mlp = condition_mlp(layout, weights)
    mlp.load_state_dict({k[len("class_embedding."):]: v.float() for k, v in weights.items()
                         if k.startswith("class_embedding.")})
    with torch.no_grad():
        constant = mlp(torch.tensor([condition], dtype=torch.float32))[0]
    out = {k: v for k, v in weights.items() if not k.startswith("class_embedding.")}
    bias = weights["time_embedding.linear_2.bias"]
    out["time_embedding.linear_2.bias"] = bias + constant.to(bias.dtype)
    return out


def _fix_modules(unet, layout: GuidedLayout, split: AttentionSplit, weights: dict) -> None:
    """What UNet2DModel's config cannot say: a fixed head count over blocks of several widths, a sinusoid
    model_channels wide when the first level is narrower (channel_mult[0] < 1), and a continuous-input label_emb
    (``class_embed_type="identity"`` in the config, the file's MLP as the module)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    if split.num_heads:
        for module in unet.modules():
            if isinstance(module, Attention):
                module.heads = module.sliceable_head_dim = split.heads(module.inner_dim)
                module.scale = (module.inner_dim // module.heads) ** -0.5
    if layout.widths[0] != layout.model_channels:
        unet.time_proj = Timesteps(layout.model_channels, True, 0)
        unet.time_embedding = TimestepEmbedding(layout.model_channels, 4 * layout.model_channels)
    if layout.condition_dims:
        unet.class_embedding = condition_mlp(layout, weights)


def guided_unet(state: dict, sample_size: int | None = None, *, num_heads: int | None = None,
                num_head_channels: int | None = None, new_attention_order: bool | None = None,
                class_label: int | None = None, condition: tuple[float, ...] | None = None):
    """A float32 ``UNet2DModel`` (eval) computing what the ``UNetModel`` of ``state`` computes, and its layout.

    ``class_label`` fixes a class-conditional model to one class, ``condition`` a continuously conditioned one (a
    ``label_emb`` MLP) to one input; an unconditional U-Net results.  Without them such a model needs
    ``class_labels`` at every call (``DiffusersUNet(…, class_labels=…)``: integer labels for a class table, (B, d)
    float inputs for an MLP)."""
    from diffusers import UNet2DModel

    layout = guided_layout(state)
    split = attention_split(layout, num_heads, num_head_channels, new_attention_order)
    origins = {}
    weights = guided_to_diffusers(state, layout, split, origins)
    weights, layout = _fix_label(weights, layout, class_label, condition)
    config = guided_unet_config(layout, split, sample_size)
    unet = UNet2DModel(**config)
    _fix_modules(unet, layout, split, weights)
    problems = fit_problems(unet.state_dict(), weights, origins)
    if problems:
        raise ValueError(f"The checkpoint does not fit the UNetModel read off its weights (model_channels="
                         f"{layout.model_channels}, channel_mult={layout.channel_mult}, num_res_blocks="
                         f"{layout.num_res_blocks}, attention at downsample rates {layout.attention_rates}): "
                         f"{problems}.")
    unet.load_state_dict({k: v.float() for k, v in weights.items()})
    if layout.learned_sigma:
        log.info("This guided-diffusion model predicts %d channels (ε, then the learned-σ variance interpolation): "
                 "only the first %d, ε, are used; DDIM sampling does not need σ.", layout.out_channels,
                 layout.in_channels)
    return unet.eval(), layout
