"""Self-attention features of the decoder (StyleID's style K/V, the content's Q): layer names and a frozen store.

Layers are named as ComfyUI numbers them: ``"b.k"`` is transformer block k of output block b (the attn1 of
``output_blocks[b]``'s SpatialTransformer).  A diffusers ``up_blocks[i].attentions[j].transformer_blocks[k]`` is
output block ``Σ_{m<i} len(up_blocks[m].resnets) + j`` (``adapters.attention``), so one name is one layer in both
families.  For SD 1.x the official StyleID code's decoder layers 7–11 (``up_blocks[i // 3].attentions[i % 3]``) are
output blocks 7–11, transformer 0.  ``"middle.k"`` is transformer k of the middle block (not a StyleID layer; for
U-Nets whose decoder has no self-attention).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .file_format import check_fingerprint
from .trajectory import H_DTYPES, HStorage

KINDS = ("q", "k", "v")
STYLE_KINDS = ("k", "v")  # what the style pass keeps
CONTENT_KINDS = ("q",)  # what the content pass keeps (query preservation)
LAYER_PRESETS = {
    # the official code's default (diffusers implementation; its LDM script also takes block 6)
    "StyleID SD1.x": ("7.0", "8.0", "9.0", "10.0", "11.0"),
    # this pack's choice (no official SDXL setting): the finest decoder attention level, 64² tokens at 1024²
    "SDXL": ("3.0", "3.1", "4.0", "4.1", "5.0", "5.1"),
}


def layer_name(block: int, transformer: int = 0) -> str:
    return f"{int(block)}.{int(transformer)}"


def parse_layers(text: str, available: tuple[str, ...] | None = None, what: str = "layers") -> tuple[str, ...]:
    """Comma-separated layers: ``"7"`` (every transformer block of output block 7, needs ``available``) or
    ``"7.0"`` (one); ``"all"`` is every decoder layer available; ``"middle.k"`` is the middle block's k-th.  Each must be in ``available`` when it is given."""
    entries = [e.strip() for e in str(text).replace(";", ",").split(",") if e.strip()]
    if not entries:
        raise ValueError(f"{what} is empty; give output blocks like '7, 8, 9, 10, 11' or layers like '7.0, 8.0'.")
    layers: list[str] = []
    for entry in entries:
        if entry == "all":  # the decoder's: StyleID's layers are decoder layers
            layers += [name for name in _need(available, what) if not name.startswith("middle")]
            continue
        if entry.startswith("middle.") and entry[7:].isdigit():
            layers.append(entry)
            continue
        parts = entry.split(".")
        if len(parts) > 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{what}: {entry!r} is not an output block ('7') or a block.transformer pair ('7.0').")
        if len(parts) == 2:
            layers.append(layer_name(*map(int, parts)))
            continue
        found = [name for name in _need(available, what) if name.split(".")[0] == parts[0]]
        if not found:
            raise ValueError(f"{what}: output block {entry} has no self-attention in this U-Net; its decoder "
                             f"self-attention layers are {_shown(available)}.")
        layers += found
    if available is not None:
        missing = [name for name in layers if name not in available]
        if missing:
            raise ValueError(f"{what}: this U-Net has no decoder self-attention layer {', '.join(missing)} "
                             f"(block.transformer); it has {_shown(available)}. Pick layers it has, or the "
                             "preset made for this model family.")
    return tuple(dict.fromkeys(layers))


def _need(available, what):
    if available is None:
        raise ValueError(f"{what}: a whole output block or 'all' needs the model's layer list.")
    return available


def _shown(available) -> str:
    return ", ".join(available) if available else "none (its decoder has no self-attention)"


def keeps_window(t: int, window: tuple[int, int]) -> bool:
    """Whether t lies in the injection window (t_start ≥ t ≥ t_stop)."""
    return window[1] <= int(t) <= window[0]


def check_window(window) -> tuple[int, int]:
    start, stop = (int(w) for w in window)
    if not 0 <= stop <= start:
        raise ValueError(f"The time window must be t_start ≥ t_stop ≥ 0, got t_start={start}, t_stop={stop}.")
    return start, stop


@dataclass(frozen=True)
class AttentionFeatures:
    """Decoder self-attention features of a batch of images at each kept timestep.

    ``tensors[f"{layer}.{kind}"]`` is (steps, images, tokens, dim) for every layer of ``layers`` and kind of
    ``kinds`` (q, k or v, after the projections, heads concatenated).  ``timesteps`` are the kept steps (decreasing),
    ``grid`` the whole grid they were recorded on; ``source`` is "inversion" or "reconstruction".  Rows are the
    images of the conditional branch (or the only one): the official code applies one set to every row.
    Kept as ``dtype`` on ``device`` (``HStorage``).
    """

    grid: tuple[int, ...]
    timesteps: tuple[int, ...]
    layers: tuple[str, ...]
    kinds: tuple[str, ...]
    tensors: dict = field(compare=False, repr=False)
    fingerprint: str = ""
    source: str = ""
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        for name in ("grid", "timesteps"):
            object.__setattr__(self, name, tuple(int(t) for t in getattr(self, name)))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if not self.layers or not self.timesteps:
            raise ValueError("Attention features need at least one layer and one timestep.")
        if set(self.timesteps) - set(self.grid):
            raise ValueError("Attention features were kept at timesteps that are not on their grid.")
        if set(self.kinds) - set(KINDS) or not self.kinds:
            raise ValueError(f"Attention feature kinds must be among {KINDS}, got {self.kinds}.")
        if self.dtype not in H_DTYPES:
            raise ValueError(f"Attention feature dtype {self.dtype!r} is unknown; use one of {tuple(H_DTYPES)}.")
        wanted = {f"{layer}.{kind}" for layer in self.layers for kind in self.kinds}
        if set(self.tensors) != wanted:
            raise ValueError(f"Attention features hold {sorted(self.tensors)} but layers × kinds need {sorted(wanted)}.")
        images = {v.shape[1] for v in self.tensors.values()}
        for key, value in self.tensors.items():
            if value.dim() != 4 or value.shape[0] != len(self.timesteps):
                raise ValueError(f"Attention feature {key} must be (steps={len(self.timesteps)}, images, tokens, dim), "
                                 f"got {tuple(value.shape)}.")
        if len(images) != 1:
            raise ValueError(f"Attention features disagree on the number of images: {sorted(images)}.")

    @property
    def images(self) -> int:
        return next(iter(self.tensors.values())).shape[1]

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors.values())

    def at(self, t: int, layer: str, kind: str) -> torch.Tensor:
        """(images, tokens, dim) at a kept timestep."""
        return self.tensors[f"{layer}.{kind}"][self.timesteps.index(int(t))]

    def check_for(self, grid, needed_steps, layers, kinds, fingerprint: str, what: str) -> None:
        """Refuse, saying what to change, a store made on another grid, model, layer set or without the steps."""
        check_fingerprint(self.fingerprint, fingerprint, what, "record the features again with this model")
        grid = tuple(int(t) for t in grid)
        if grid != self.grid:
            raise ValueError(f"The {what} were recorded on a {len(self.grid)}-step grid but this run uses {len(grid)} "
                             f"steps on another grid: set steps to {len(self.grid)} here, or record them again "
                             f"with steps = {len(grid)}.")
        missing_layers = [layer for layer in layers if layer not in self.layers]
        if missing_layers:
            raise ValueError(f"The {what} hold layers {', '.join(self.layers)}, not {', '.join(missing_layers)}: "
                             "use the same layers here as where they were recorded, or record them again.")
        missing_kinds = [kind for kind in kinds if kind not in self.kinds]
        if missing_kinds:
            raise ValueError(f"The {what} hold {'/'.join(self.kinds).upper()} only, and this run needs "
                             f"{'/'.join(missing_kinds).upper()}: record them with the other role (style: K, V; "
                             "content: Q).")
        missing = sorted(set(int(t) for t in needed_steps) - set(self.timesteps), reverse=True)
        if missing:
            raise ValueError(f"The {what} were kept at t = {self.timesteps[0]} … {self.timesteps[-1]} only, and this "
                             f"run injects at t = {missing[:4]}{' …' if len(missing) > 4 else ''}: record them with "
                             "the same time window.")


def features_from_steps(per_step: dict, grid, layers, kinds, storage: HStorage, fingerprint: str,
                        source: str) -> AttentionFeatures:
    """The store of ``per_step[t][f"{layer}.{kind}"]`` (tensors already ``storage.put``), steps in grid order."""
    kept = [t for t in grid if t in per_step]
    if not kept:
        raise ValueError("No attention features were recorded: the time window holds no step of the grid, or the "
                         "layers never ran.")
    first = per_step[kept[0]]
    tensors = {key: torch.stack([per_step[t][key] for t in kept]) for key in first}
    return AttentionFeatures(tuple(grid), tuple(kept), tuple(layers), tuple(kinds), tensors, fingerprint, source,
                             storage.dtype_for(next(iter(first.values()))),
                             "cpu" if storage.device == "cpu" else str(next(iter(first.values())).device))


def bytes_per_image(shapes: dict, kinds: int, steps: int, element_size: int) -> int:
    """Bytes one image's store takes: Σ_layers tokens·dim, times kinds kept, steps kept and element size."""
    return sum(tokens * dim for tokens, dim in shapes.values()) * kinds * steps * element_size

