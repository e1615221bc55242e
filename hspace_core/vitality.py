"""Block vitality (Stable Flow, Avrahami et al., CVPR 2025, §3.1): how much one transformer block matters to the image.

Stable Flow generates an image with the full model and again with block ℓ bypassed (the block hands its input on
unchanged), from the same noise, and measures the perceptual change between the two (DINOv2 similarity on the decoded
images, averaged over 64 prompts).  The blocks whose removal changes the image most are *vital*: on Flux.1-dev its
code (snap-research/stable-flow, ``run_stable_flow.py``) injects only at double blocks 0, 1, 17, 18 and single blocks
6, 9, 34, 35, 37 (overall indices 0, 1, 17, 18, 25, 28, 53, 54, 56 of 57).  The measurement itself is not in that
code; the selection rule here (the k largest changes, or every change at least a fraction of the largest) is the
pack's, as the paper picks its set by a threshold on the similarity it measured.

The change per block is what the caller measures: LPIPS between decoded images when a VAE is given, else
``relative_change`` of the final latents (below).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RULES = ("count", "fraction")


def relative_change(plain: torch.Tensor, bypassed: torch.Tensor) -> float:
    """‖x_bypassed − x_plain‖ / ‖x_plain‖ per image (over every latent value), averaged over the batch: the latent
    distance the vitality uses without a VAE (0: the block changed nothing)."""
    a, b = plain.float().flatten(1), bypassed.float().flatten(1)
    return float(((b - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).mean())


def select_vital(changes: dict[str, float], count: int = 0, fraction: float = 0.5) -> tuple[str, ...]:
    """The vital blocks, in block order: the ``count`` largest changes (ties broken by block order) when ``count`` >
    0, else every block whose change is at least ``fraction`` × the largest.  A model whose blocks change nothing
    (all 0) has no vital block."""
    if count < 0 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"vital_count is {count} and vital_fraction {fraction}: use a count ≥ 0 and a fraction in "
                         "[0, 1].")
    order = list(changes)
    top = max(changes.values(), default=0.0)
    if top <= 0:
        return ()
    if count > 0:
        chosen = set(sorted(order, key=lambda name: (-changes[name], order.index(name)))[:count])
    else:
        chosen = {name for name in order if changes[name] >= fraction * top}
    return tuple(name for name in order if name in chosen)


@dataclass(frozen=True)
class BlockVitality:
    """The change each block's bypass made (``sites`` in block order, ``changes`` aligned) and the vital ones."""

    sites: tuple[str, ...]
    changes: tuple[float, ...]
    vital: tuple[str, ...]
    metric: str
    rule: str

    def ranked(self) -> list[tuple[str, float]]:
        """(site, change), largest change first."""
        return sorted(zip(self.sites, self.changes), key=lambda item: -item[1])

    def to_json(self) -> dict:
        return {"metric": self.metric, "rule": self.rule, "vital": list(self.vital),
                "blocks": [{"site": s, "change": c, "vital": s in self.vital} for s, c in zip(self.sites, self.changes)],
                "ranked": [s for s, _ in self.ranked()]}


def block_vitality(changes: dict[str, float], metric: str, count: int = 0, fraction: float = 0.5) -> BlockVitality:
    """The report of one measurement: ``changes`` maps each block's site name (block order) to its change."""
    vital = select_vital(changes, count, fraction)
    rule = f"the {count} largest changes" if count > 0 else f"change ≥ {fraction:g} × the largest"
    return BlockVitality(tuple(changes), tuple(float(c) for c in changes.values()), vital, metric, rule)


def vitality_plot(report: BlockVitality, bar: int = 14, height: int = 300) -> torch.Tensor:
    """A bar chart of the changes (1, H, W, 3) in [0, 1]: one bar per block in block order, vital blocks red, the
    others grey, each labelled with its site under the axis; drawn with PIL (no plotting library needed)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label_w = max((int(font.getlength(s)) for s in report.sites), default=0) + 6
    left, top, right, gap = 48, 28, 12, 2
    width = left + len(report.sites) * (bar + gap) + right
    canvas = Image.new("RGB", (max(width, 320), top + height + label_w + 8), "white")
    draw = ImageDraw.Draw(canvas)
    top_value = max(report.changes, default=0.0) or 1.0
    base = top + height
    draw.text((left, 6), f"block vitality: {report.metric}; vital (red): {report.rule}", fill="black", font=font)
    draw.line((left - 2, top, left - 2, base), fill="black")
    draw.line((left - 2, base, left + len(report.sites) * (bar + gap), base), fill="black")
    draw.text((4, top - 4), f"{top_value:.3g}", fill="black", font=font)
    draw.text((4, base - 10), "0", fill="black", font=font)
    for i, (site, change) in enumerate(zip(report.sites, report.changes)):
        x = left + i * (bar + gap)
        draw.rectangle((x, base - round(height * change / top_value), x + bar - 1, base),
                       fill=(214, 39, 40) if site in report.vital else (150, 150, 150))
        text = Image.new("RGB", (label_w, bar), "white")
        ImageDraw.Draw(text).text((2, bar // 2), site, fill="black", font=font, anchor="lm")
        canvas.paste(text.rotate(270, expand=True), (x, base + 4))
    return torch.from_numpy(np.asarray(canvas).astype("float32") / 255)[None]
