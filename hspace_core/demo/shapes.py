"""Procedural 32×32 images with known, independent factors (numpy only, seeded).

CONTENT: shape (circle, square, triangle, cross), size, position.  STYLE: foreground colour, background
colour with an optional vertical gradient.  Images are float32 in [-1, 1], channels first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
SIZE = 32
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Factors:
    shape: int
    radius: float  # half-extent in pixels
    cx: float
    cy: float
    fg: tuple[float, float, float]  # RGB in [0, 1]
    bg_top: tuple[float, float, float]
    bg_bottom: tuple[float, float, float]


def sample_factors(rng: np.random.Generator, centred: bool = False) -> Factors:
    radius = rng.uniform(6.0, 11.0)
    if centred:
        cx = cy = SIZE / 2
    else:
        margin = radius + 1
        cx, cy = rng.uniform(margin, SIZE - margin, size=2)
    fg = _bright_colour(rng)
    bg_top = _dark_colour(rng)
    bg_bottom = bg_top if rng.random() < 0.5 else _dark_colour(rng)
    return Factors(int(rng.integers(len(SHAPES))), float(radius), float(cx), float(cy), fg, bg_top, bg_bottom)


def _bright_colour(rng):
    c = rng.uniform(0.0, 1.0, size=3)
    c[rng.integers(3)] = rng.uniform(0.75, 1.0)
    return tuple(float(v) for v in c)


def _dark_colour(rng):
    return tuple(float(v) for v in rng.uniform(0.0, 0.45, size=3))


def shape_mask(shape: int, radius: float, cx: float, cy: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape on the 32×32 grid."""
    n = SIZE * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE
    x, y = np.meshgrid(coords - cx, coords - cy)
    name = SHAPES[shape]
    if name == "circle":
        inside = x**2 + y**2 <= radius**2
    elif name == "square":
        r = radius * 0.85
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif name == "triangle":
        r = radius * 1.1
        inside = (y <= r * 0.6) & (y >= -r) & (np.abs(x) <= (y + r) * 0.62)
    else:
        w = radius * 0.38
        inside = ((np.abs(x) <= w) & (np.abs(y) <= radius)) | ((np.abs(y) <= w) & (np.abs(x) <= radius))
    return inside.reshape(SIZE, _SUPERSAMPLE, SIZE, _SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def render(f: Factors) -> np.ndarray:
    """(3, 32, 32) float32 image in [-1, 1]."""
    mask = shape_mask(f.shape, f.radius, f.cx, f.cy)[None]
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)[None, :, None]
    bg = np.asarray(f.bg_top, np.float32)[:, None, None] * (1 - ramp) + np.asarray(f.bg_bottom, np.float32)[:, None, None] * ramp
    img = bg * (1 - mask) + np.asarray(f.fg, np.float32)[:, None, None] * mask
    return (img * 2 - 1).astype(np.float32)


def make_batch(n: int, seed: int, centred: bool = False) -> tuple[np.ndarray, list[Factors]]:
    rng = np.random.default_rng(seed)
    factors = [sample_factors(rng, centred) for _ in range(n)]
    return np.stack([render(f) for f in factors]), factors


def with_factors(f: Factors, **changes) -> Factors:
    return Factors(**{**f.__dict__, **changes})
