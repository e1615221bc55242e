"""Scores of the papers' claims on the demo model, shared by ``benchmarks/demo_model.py`` and the fast tests."""
from __future__ import annotations

import numpy as np
import torch

import hspace_core as hs
from hspace_core import EditSchedule
from . import readouts as ro
from .shapes import SHAPES, Factors, render, sample_colours


def injection_scores(out: torch.Tensor, content: np.ndarray, style: np.ndarray) -> dict:
    """Mean IoU of the output's shape with the content's and the style's, background colour distances, and, over
    the pairs whose shape types differ, the share of outputs whose type (``readouts.classify_shape``) is the
    content's and the style's."""
    o = out.numpy()
    types = [[ro.classify_shape(img)[0] for img in images] for images in (o, content, style)]
    differ = [i for i, (c, s) in enumerate(zip(types[1], types[2])) if c != s]
    type_c = [types[0][i] == types[1][i] for i in differ]
    type_s = [types[0][i] == types[2][i] for i in differ]
    iou_c = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(c)) for a, c in zip(o, content)]
    iou_s = [ro.iou(ro.foreground_mask(a), ro.foreground_mask(s)) for a, s in zip(o, style)]
    bg_s = [ro.colour_distance(ro.mean_background(a), ro.mean_background(s)) for a, s in zip(o, style)]
    bg_c = [ro.colour_distance(ro.mean_background(a), ro.mean_background(c)) for a, c in zip(o, content)]
    return {"iou_content": float(np.mean(iou_c)), "iou_style": float(np.mean(iou_s)),
            "bg_to_style": float(np.nanmean(bg_s)), "bg_to_content": float(np.nanmean(bg_c)),
            "type_content": float(np.mean(type_c)), "type_style": float(np.mean(type_s))}


def h_swap_ratio(model, a: torch.Tensor, b: torch.Tensor, t: int, seed: int = 0) -> float:
    """‖ε(x_a | h_b) − ε(x_a)‖ / ‖ε(x_b) − ε(x_a)‖ with the same noise: how much of the difference h carries."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(a.shape, generator=g)
    ab = model.schedule.alpha_bar(t)
    xa, xb = ab**0.5 * a + (1 - ab) ** 0.5 * noise, ab**0.5 * b + (1 - ab) ** 0.5 * noise
    pa, pb = model.predict(xa, t), model.predict(xb, t)
    swapped = model.predict(xa, t, lambda h, tt, br: pb.h).eps_edited
    return float(((swapped - pa.eps).flatten(1).norm(dim=1) / (pb.eps - pa.eps).flatten(1).norm(dim=1)).mean())


def centred_examples(n: int, radius: tuple[float, float], seed: int, shape: str | None = None) -> torch.Tensor:
    """Centred shapes with the dataset's colours (half of them mirrored, as the "wide" palette) and a radius in the
    given range; of random type unless ``shape`` is given.  The same seed gives the same colours and radii, so two
    sets differing only in radius range or shape are paired examples."""
    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        fg, bg = sample_colours(rng, mirrored=bool(rng.random() < 0.5))
        kind = int(rng.integers(len(SHAPES))) if shape is None else SHAPES.index(shape)
        imgs.append(render(Factors(kind, float(rng.uniform(*radius)), 16.0, 16.0, fg, bg, bg)))
    return torch.from_numpy(np.stack(imgs))


def _direction(model, positive: torch.Tensor, negative: torch.Tensor, steps: int, name: str):
    """Global Δh = mean h of the positive examples − mean h of the negative ones, averaged over timesteps."""
    return hs.direction_from_examples(hs.invert(model, positive, steps).trajectory,
                                      hs.invert(model, negative, steps).trajectory, name=name).global_mean()


def size_direction(model, n: int, seed: int, steps: int):
    """Asyrp direction from paired examples: large minus small centred shapes with the same types and colours."""
    return _direction(model, centred_examples(n, (10.0, 11.0), seed), centred_examples(n, (6.0, 7.0), seed), steps, "size")


def shape_direction(model, n: int, seed: int, steps: int, positive: str = "circle", negative: str = "square"):
    """Asyrp direction from paired examples: ``positive`` minus ``negative`` centred shapes with the same radii and
    colours."""
    return _direction(model, centred_examples(n, (7.0, 10.0), seed, positive),
                      centred_examples(n, (7.0, 10.0), seed, negative), steps, f"{negative} → {positive}")


def _edit_sweep(model, direction, test_images: torch.Tensor, strengths, steps: int, t_edit: int):
    """Yields (strength, reconstructions, edited images, median foreground colour shift) for each strength."""
    inv = hs.invert(model, test_images, steps)
    base = inv.reconstruction.numpy()
    for s in strengths:
        edited = hs.edit(model, inv.x_T, direction, s, EditSchedule(steps, t_edit=t_edit)).numpy()
        shift = [ro.colour_distance(ro.foreground_colour(o), ro.foreground_colour(b)) for o, b in zip(edited, base)]
        yield s, base, edited, float(np.nanmedian(shift))


def shape_direction_effect(model, direction, test_images: torch.Tensor, target: str, strengths, steps: int,
                           t_edit: int = 400) -> dict:
    """Per strength: share of edited images whose type (``readouts.classify_shape``) is ``target``, share whose
    type is unchanged from the reconstruction, and median foreground colour shift."""
    out, base_types = {}, None
    for s, base, edited, shift in _edit_sweep(model, direction, test_images, strengths, steps, t_edit):
        base_types = base_types or [ro.classify_shape(b)[0] for b in base]
        types = [ro.classify_shape(e)[0] for e in edited]
        out[s] = {"is_target": float(np.mean([k == SHAPES.index(target) for k in types])),
                  "unchanged": float(np.mean([k == b for k, b in zip(types, base_types)])), "fg_colour_shift": shift}
    return out


def size_direction_effect(model, direction, test_images: torch.Tensor, strengths, steps: int, t_edit: int = 400) -> dict:
    """Per strength: median area ratio edited/reconstruction, share moved the intended way, median fg colour shift."""
    out = {}
    for s, base, edited, shift in _edit_sweep(model, direction, test_images, strengths, steps, t_edit):
        ratio = [ro.area(o) / max(ro.area(b), 1) for o, b in zip(edited, base)]
        moved = np.mean([(r > 1) if s > 0 else (r < 1) for r in ratio]) if s != 0 else float("nan")
        out[s] = {"area_ratio": float(np.median(ratio)), "moved_intended_way": float(moved), "fg_colour_shift": shift}
    return out


def samples_from_noise(model, n: int, steps: int, seed: int = 0, clip_x0: float | None = None,
                       eta: float = 0.0) -> torch.Tensor:
    """``n`` 32×32 samples from pure noise; ``eta`` = 1 is DDPM-like ancestral sampling.

    x_T and the sampler's noise come from two streams of ``seed``: seeding both with ``seed`` itself would make the
    first ancestral step add x_T again."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 3, 32, 32, generator=generator)
    sampler_seed = int(torch.randint(2**62, (1,), generator=generator))
    return hs.generate(model, x_T, EditSchedule(steps, t_edit=0, clip_x0=clip_x0, eta=eta), seed=sampler_seed)


def sample_quality(model, n: int, steps: int, seed: int = 0, clip_x0: float | None = None, eta: float = 0.0) -> float:
    """Share of ``samples_from_noise`` that look like training images (``readouts.looks_like_dataset``)."""
    out = samples_from_noise(model, n, steps, seed, clip_x0, eta)
    return float(np.mean([ro.looks_like_dataset(img) for img in out.numpy()]))
