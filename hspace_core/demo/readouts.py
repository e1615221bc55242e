"""Factor read-outs from pixels, for scoring generated shapes images (numpy only).

The background is estimated from the image border (the shapes never touch it); pixels far from the
background colour are foreground.  Everything works on (3, H, W) arrays in [-1, 1].
"""
from __future__ import annotations

import numpy as np


def _to_unit(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    return (a.clip(-1, 1) + 1) / 2


def background_colour(img) -> np.ndarray:
    """Mean colour of the 2-pixel border, per row band (handles the vertical gradient): (3, H)."""
    a = _to_unit(img)
    left, right = a[:, :, :2], a[:, :, -2:]
    return np.concatenate([left, right], axis=2).mean(axis=2)


def foreground_mask(img, threshold: float = 0.18) -> np.ndarray:
    """Boolean (H, W): pixels whose colour is far from the background of their row."""
    a = _to_unit(img)
    bg = background_colour(img)[:, :, None]
    return np.sqrt(((a - bg) ** 2).sum(axis=0)) > threshold


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    union = np.logical_or(mask_a, mask_b).sum()
    return float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0


def foreground_colour(img) -> np.ndarray:
    """Median foreground colour (the median ignores anti-aliased edge pixels)."""
    a, m = _to_unit(img), foreground_mask(img)
    return np.median(a[:, m], axis=1) if m.any() else np.full(3, np.nan)


def mean_background(img) -> np.ndarray:
    a, m = _to_unit(img), ~foreground_mask(img)
    return a[:, m].mean(axis=1) if m.any() else np.full(3, np.nan)


def colour_distance(c1, c2) -> float:
    return float(np.sqrt(((np.asarray(c1) - np.asarray(c2)) ** 2).sum()))


def area(img) -> int:
    return int(foreground_mask(img).sum())


def largest_component_fraction(mask: np.ndarray) -> float:
    """Share of the foreground in its largest 4-connected component (1.0 for one clean shape)."""
    total = int(mask.sum())
    if total == 0:
        return 0.0
    seen, best = np.zeros_like(mask, dtype=bool), 0
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        best = max(best, size)
    return best / total


def looks_like_dataset(img, min_area: float = 0.03, max_area: float = 0.5, max_spread: float = 0.12) -> bool:
    """One solid shape on a clean background, as every training image is: foreground covering 3–50 % of the image,
    ≥ 90 % of it in one connected piece, and a uniform foreground colour (median distance to the median colour
    below ``max_spread``)."""
    a, m = _to_unit(img), foreground_mask(img)
    share = m.mean()
    if not min_area <= share <= max_area or largest_component_fraction(m) < 0.9:
        return False
    fg = a[:, m]
    spread = np.median(np.sqrt(((fg - np.median(fg, axis=1, keepdims=True)) ** 2).sum(axis=0)))
    return bool(spread < max_spread)
