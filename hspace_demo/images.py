"""Small image helpers for demos and figures (PIL only)."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(rows: list[torch.Tensor], scale: int = 4, pad: int = 2) -> "PIL.Image.Image":
    """Rows of image batches → one PNG-ready picture (nearest upscaling keeps pixels crisp)."""
    from PIL import Image

    arrays = [to_uint8(r) for r in rows]
    h, w = arrays[0].shape[1:3]
    cols = max(a.shape[0] for a in arrays)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, a in enumerate(arrays):
        for j, img in enumerate(a):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = img
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)
