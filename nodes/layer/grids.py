"""Sweeps as pictures: one labelled grid image from tiles (the Direction Explorer, strength and γ sweeps)."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["grid_image", "sweep_tiles", "value_labels"]


def sweep_tiles(images: torch.Tensor, n_values: int) -> torch.Tensor:
    """A value-major sweep batch (n_values·B, H, W, C) — index k·B + b is value k of image b, as the sweep nodes
    return it — → (B, n_values, H, W, C) tiles: one row per image, one column per value."""
    if n_values < 1 or images.shape[0] % n_values:
        raise ValueError(f"The batch holds {images.shape[0]} images, not a multiple of the {n_values} sweep values: "
                         f"connect the decoded sweep and the values it was made with.")
    return images.reshape(n_values, images.shape[0] // n_values, *images.shape[1:]).transpose(0, 1)


def value_labels(values: Sequence[float], name: str) -> list[str]:
    """Column labels "name value"; signs are written when any value is negative (strengths), not for γ ∈ [0, 1]."""
    signed = any(v < 0 for v in values)
    return [f"{name} {v:+g}" if signed else f"{name} {v:g}" for v in values]


def grid_image(images: torch.Tensor, row_labels: Sequence[str], column_labels: Sequence[str], *,
               scale: int = 4, pad: int = 2) -> torch.Tensor:
    """(rows, columns, H, W, 3) images in [0, 1] → one labelled grid (1, H', W', 3) in [0, 1]: tiles upscaled by
    ``scale`` (nearest), row labels on the left, column labels on top, written with PIL's default font (larger for
    large tiles, so a 512² SD grid stays readable)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    n_rows, n_cols, h, w, _ = images.shape
    if len(row_labels) != n_rows or len(column_labels) != n_cols:
        raise ValueError(f"{n_rows}×{n_cols} tiles need {n_rows} row and {n_cols} column labels.")
    th, tw = h * scale, w * scale
    size = max(10, min(th, tw) // 16)
    font = ImageFont.load_default(size) if size > 10 else ImageFont.load_default()
    left = max((int(font.getlength(label)) for label in row_labels), default=0) + 2 * pad + 4
    top = size + 4 + 2 * pad
    canvas = Image.new("RGB", (left + n_cols * (tw + pad) + pad, top + n_rows * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    tiles = (images.clamp(0, 1) * 255).round().byte().cpu().numpy()
    for j, label in enumerate(column_labels):
        draw.text((left + j * (tw + pad) + tw // 2, pad + top // 2), label, fill="black", font=font, anchor="mm")
    for i, label in enumerate(row_labels):
        y = top + i * (th + pad)
        draw.text((pad, y + th // 2), label, fill="black", font=font, anchor="lm")
        for j in range(n_cols):
            tile = Image.fromarray(tiles[i, j]).resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (left + j * (tw + pad), y))
    return torch.from_numpy(np.asarray(canvas).astype("float32") / 255)[None]
