"""Procedural 32×32 images with known, independent factors (numpy only, seeded).

CONTENT: shape (circle, square, triangle, cross), size, position.  STYLE: foreground colour, background
colour with an optional vertical gradient.  Images are float32 in [-1, 1], channels first.

Two palettes: "dark" (bright shapes on dark backgrounds; the demo model's first 4,000 training steps) and "wide"
(half of the images mirrored: dark shapes on light backgrounds), where backgrounds differ enough between images
for "the background was kept" to be measurable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
SIZE = 32
PALETTES = ("dark", "wide")
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


def sample_factors(rng: np.random.Generator, centred: bool = False, palette: str = "wide") -> Factors:
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
    mirrored = palette == "wide" and rng.random() < 0.5
    radius = rng.uniform(6.0, 11.0)
    if centred:
        cx = cy = SIZE / 2
    else:
        margin = radius + 1
        cx, cy = rng.uniform(margin, SIZE - margin, size=2)
    fg, bg_top = sample_colours(rng, mirrored)
    bg_bottom = bg_top if rng.random() < 0.5 else sample_background(rng, mirrored)
    return Factors(int(rng.integers(len(SHAPES))), float(radius), float(cx), float(cy), fg, bg_top, bg_bottom)


def sample_colours(rng: np.random.Generator, mirrored: bool) -> tuple[tuple, tuple]:
    """(foreground, background): bright on dark, or, ``mirrored``, dark on light with the same contrast."""
    fg = _bright_colour(rng)
    return (_mirror(fg) if mirrored else fg), sample_background(rng, mirrored)


def sample_background(rng: np.random.Generator, mirrored: bool) -> tuple:
    bg = _dark_colour(rng)
    return _mirror(bg) if mirrored else bg


def _mirror(colour):
    return tuple(1.0 - v for v in colour)


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


def make_batch(n: int, seed: int, centred: bool = False, palette: str = "wide") -> tuple[np.ndarray, list[Factors]]:
    rng = np.random.default_rng(seed)
    factors = [sample_factors(rng, centred, palette) for _ in range(n)]
    return np.stack([render(f) for f in factors]), factors


def with_factors(f: Factors, **changes) -> Factors:
    return Factors(**{**f.__dict__, **changes})
