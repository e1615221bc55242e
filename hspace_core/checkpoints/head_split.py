"""Finding a guided-diffusion checkpoint's attention head split, which its weights do not record.

Every split that fits the attention widths gives a working network, but only the one the model was trained with
denoises well: the others pair query, key and value rows that never met in training.  ``rank_head_splits``
loads each candidate and measures the DDPM training loss E‖ε̂(x_t, t) − ε‖² (Ho et al. 2020, eq. 14) on noised
probe images at a few noise levels, the same images and noise for every candidate.  The trained split should
have the lowest; how far it stands out depends on how much the model leans on attention, so it is a ranking to
check (sample with the winner), not a proof.  The probes are smooth random images unless you give your own (a few
images of the model's domain make the ranking clearer).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch

from .files import read_state_dict
from .guided_diffusion import AttentionSplit, GuidedLayout, guided_layout
from .loader import LoadedCheckpoint, convert, hspace_model, layout_of
from .settings import BETA_SCHEDULES, checkpoint_settings, settings_beside, sidecar_of

log = logging.getLogger("hspace")
MIN_HEAD_CHANNELS = 8
BETA_NAMES = {config["beta_schedule"]: name for name, config in BETA_SCHEDULES.items()}
__all__ = ["candidate_splits", "probe_images", "rank_head_splits"]


def candidate_splits(layout: GuidedLayout) -> list[AttentionSplit]:
    """The distinct head splits that fit every attention block of ``layout`` (heads of at least 8 channels), in
    both head orders where more than one head makes the order matter.  Two splits giving the same head count
    at every width compute the same network: only the first is kept."""
    widths = sorted({w for w, on in zip(layout.widths, layout.attention) if on} | {layout.widths[-1]})
    splits = [AttentionSplit(num_heads=n) for n in range(1, widths[0] // MIN_HEAD_CHANNELS + 1)]
    splits += [AttentionSplit(num_head_channels=c) for c in range(MIN_HEAD_CHANNELS, widths[-1] + 1)]
    found, seen = [], set()
    for split in splits:
        try:
            heads = tuple(split.heads(w) for w in widths)
        except ValueError:
            continue
        if any(w // h < MIN_HEAD_CHANNELS for w, h in zip(widths, heads)):
            continue
        for new_order in ((False, True) if max(heads) > 1 else (False,)):
            if (heads, new_order) not in seen:
                seen.add((heads, new_order))
                found.append(dataclasses.replace(split, new_order=new_order))
    return found


def probe_images(count: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [−1, 1]: 4×4 Gaussian fields upsampled bicubically, through tanh."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, channels, 4, 4, generator=g)
    return torch.tanh(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False))


def _split_settings(split: AttentionSplit) -> dict:
    return {"num_heads": split.num_heads, "num_head_channels": split.num_head_channels,
            "new_attention_order": split.new_order}


@torch.no_grad()
def rank_head_splits(path: str, sample_size: int | None = None, *, images: torch.Tensor | None = None,
                     fractions: tuple[float, ...] = (0.2, 0.4, 0.6), seed: int = 0, **settings
                     ) -> list[tuple[dict, float]]:
    """[(head-split settings, denoising loss)], best first, for a guided-diffusion checkpoint file.

    ``settings``: the other settings (parameterization, class_label, …), as for ``load_checkpoint``; the JSON file
    beside the checkpoint is read too, except its head split.  ``images``: (B, C, H, W) in [−1, 1], else 8 smooth
    probes of ``sample_size`` (default 64).  ``fractions``: the timesteps tried, as fractions of the model's T.
    Give the first entry's settings to ``load_checkpoint`` (or put them in the JSON file)."""
    name = os.path.basename(path)
    state = read_state_dict(path)
    if layout_of(state) != "guided_diffusion":
        raise ValueError(f"{name} is not a guided-diffusion UNetModel; only that layout has a head split to find.")
    layout = guided_layout(state)
    beside = {k: v for k, v in settings_beside(path).items()
              if k not in ("num_heads", "num_head_channels", "new_attention_order")}
    base = checkpoint_settings(settings, beside, os.path.basename(sidecar_of(path)))
    if images is None:
        images = probe_images(8, sample_size or 64, layout.in_channels, seed)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + 1))
    results = []
    for split in candidate_splits(layout):
        chosen = dataclasses.replace(base, **_split_settings(split))
        unet, scheduler = convert(state, sample_size, chosen)
        if scheduler is not None and base.beta_schedule is None:  # chosen (and logged) once, kept for the rest
            base = dataclasses.replace(base, beta_schedule=BETA_NAMES[scheduler["beta_schedule"]])
        model = hspace_model(LoadedCheckpoint(unet, scheduler, chosen, name))
        losses = []
        for fraction in fractions:
            t = round(fraction * (model.schedule.num_train_timesteps - 1))
            a = model.schedule.alpha_bar(t)
            x_t = a**0.5 * images + (1 - a) ** 0.5 * noise
            losses.append(float(((model.predict(x_t, t).eps - noise) ** 2).mean()))
        results.append((_split_settings(split), sum(losses) / len(losses)))
        log.info("%s: head split %s: denoising loss %.5f", name, results[-1][0], results[-1][1])
    return sorted(results, key=lambda item: item[1])
