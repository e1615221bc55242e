"""Scores of the papers' claims on the demo model, shared by ``benchmarks/demo_model.py`` and the fast tests."""
from __future__ import annotations

import numpy as np
import torch

from .. import processes as hp
from ..state import EditSchedule
from . import readouts as ro
from .shapes import SHAPES, Factors, render


def injection_scores(out: torch.Tensor, content: np.ndarray, style: np.ndarray) -> dict:
    """Mean IoU of the output's shape with the content's and the style's, and background colour distances."""
    o = out.numpy()
    iou_c = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(c)) for a, c in zip(o, content)]
    iou_s = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(s)) for a, s in zip(o, style)]
    bg_s = [ro.colour_distance(ro.mean_background(a), ro.mean_background(s)) for a, s in zip(o, style)]
    bg_c = [ro.colour_distance(ro.mean_background(a), ro.mean_background(c)) for a, c in zip(o, content)]
    return {"iou_content": float(np.mean(iou_c)), "iou_style": float(np.mean(iou_s)),
            "bg_to_style": float(np.nanmean(bg_s)), "bg_to_content": float(np.nanmean(bg_c))}


def h_swap_ratio(model, a: torch.Tensor, b: torch.Tensor, t: int, seed: int = 0) -> float:
    """‖ε(x_a | h_b) − ε(x_a)‖ / ‖ε(x_b) − ε(x_a)‖ with the same noise: how much of the difference h carries."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(a.shape, generator=g)
    ab = model.schedule.alpha_bar(t)
    xa, xb = ab**0.5 * a + (1 - ab) ** 0.5 * noise, ab**0.5 * b + (1 - ab) ** 0.5 * noise
    pa, pb = model.predict(xa, t), model.predict(xb, t)
    swapped = model.predict(xa, t, lambda h, tt, br: pb.h).eps_edited
    return float(((swapped - pa.eps).flatten(1).norm(dim=1) / (pb.eps - pa.eps).flatten(1).norm(dim=1)).mean())


def size_examples(n: int, radius: tuple[float, float], seed: int) -> torch.Tensor:
    """Centred shapes of random type and colours with a radius in the given range."""
    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        fg = tuple(rng.uniform(0.3, 1.0, 3))
        bg = tuple(rng.uniform(0.0, 0.4, 3))
        imgs.append(render(Factors(int(rng.integers(len(SHAPES))), float(rng.uniform(*radius)), 16.0, 16.0, fg, bg, bg)))
    return torch.from_numpy(np.stack(imgs))


def size_direction_effect(model, direction, test_images: torch.Tensor, strengths, steps: int, t_edit: int = 400) -> dict:
    """Per strength: median area ratio edited/reconstruction, share moved the intended way, median fg colour shift."""
    inv = hp.invert(model, test_images, steps)
    base = inv.reconstruction.numpy()
    out = {}
    for s in strengths:
        edited = hp.edit(model, inv.x_T, direction, s, EditSchedule(steps, t_edit=t_edit)).numpy()
        ratio = [ro.area(o) / max(ro.area(b), 1) for o, b in zip(edited, base)]
        shift = [ro.colour_distance(ro.foreground_colour(o), ro.foreground_colour(b)) for o, b in zip(edited, base)]
        moved = np.mean([(r > 1) if s > 0 else (r < 1) for r in ratio]) if s != 0 else float("nan")
        out[s] = {"area_ratio": float(np.median(ratio)), "moved_intended_way": float(moved),
                  "fg_colour_shift": float(np.nanmedian(shift))}
    return out


def sample_quality(model, n: int, steps: int, seed: int = 0, clip_x0: float | None = None) -> float:
    """Share of samples from pure noise that look like training images (``readouts.looks_like_dataset``)."""
    x_T = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    out = hp.generate(model, x_T, EditSchedule(steps, t_edit=0, clip_x0=clip_x0))
    return float(np.mean([ro.looks_like_dataset(img) for img in out.numpy()]))
