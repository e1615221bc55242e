"""Factor read-outs from pixels, for scoring generated shapes images (numpy only).

The background is estimated from the image border (the shapes never touch it); pixels far from the
background colour are foreground.  Everything works on (3, H, W) arrays in [-1, 1].
"""
from __future__ import annotations

import numpy as np

from .shapes import SHAPES, shape_mask

# Bounding box of each shape in units of its radius R: (half-width, half-height, bbox centre's offset below cy).
_BOX = {"circle": (1.0, 1.0, 0.0), "square": (0.85, 0.85, 0.0), "triangle": (1.1 * 1.6 * 0.62, 1.1 * 0.8, -0.22),
        "cross": (1.0, 1.0, 0.0)}


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


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected piece of a boolean mask (all False for an empty mask)."""
    labels, best, best_size = np.zeros(mask.shape, dtype=np.int32), 0, 0
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label = int(labels.max()) + 1
        stack, size = [start], 0
        labels[start] = label
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros(mask.shape, dtype=bool)


def largest_component_fraction(mask: np.ndarray) -> float:
    """Share of the foreground in its largest 4-connected component (1.0 for one clean shape)."""
    total = int(mask.sum())
    return float(largest_component(mask).sum() / total) if total else 0.0


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


def classify_shape(img) -> tuple[int, float]:
    """Template matching: for each shape type, the template with the foreground's bounding box (radius scaled by
    0.9 / 1 / 1.1) of its largest connected piece (stray pixels of an uneven background are ignored); returns
    (index into ``shapes.SHAPES``, IoU with the best template), or (-1, 0.0) with no foreground.  The IoU says how
    clean the shape is: dataset images score > 0.8, blobs lower."""
    m = largest_component(foreground_mask(img))
    if not m.any():
        return -1, 0.0
    ys, xs = np.nonzero(m)
    half_w, half_h = (xs.max() + 1 - xs.min()) / 2, (ys.max() + 1 - ys.min()) / 2
    mid_x, mid_y = (xs.max() + 1 + xs.min()) / 2, (ys.max() + 1 + ys.min()) / 2
    best = (-1, 0.0)
    for index, name in enumerate(SHAPES):
        bw, bh, dy = _BOX[name]
        radius = (half_w / bw + half_h / bh) / 2
        for scale in (0.9, 1.0, 1.1):
            template = shape_mask(index, radius * scale, mid_x, mid_y - dy * radius * scale) > 0.5
            score = iou(m, template)
            if score > best[1]:
                best = (index, score)
    return best
