"""Finding a guided-diffusion checkpoint's attention head split, which its weights do not record.

Every split that fits the attention widths gives a working network, but only the one the model was trained with
denoises well: the others pair query, key and value rows that never met in training.  ``rank_head_splits``
loads each candidate and measures the DDPM training loss E‖ε̂(x_t, t) − ε‖² (Ho et al. 2020, eq. 14) on noised
probe images at a few noise levels, the same images and noise for every candidate.  The trained split should
have the lowest; how far it stands out depends on how much the model leans on attention, so it is a ranking to
check (sample with the winner), not a proof.  The probes are synthetic images with flat regions and sharp edges
(``probes.structured_probes``) unless you give your own: smooth random fields separated nothing on a trained
consistency model (13 splits within 0.5 %), and a few images of the model's domain separate best.  Splits the
probes cannot tell apart are reported as tied, not ranked.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import torch

from .files import read_state_dict
from .guided_diffusion import AttentionSplit, GuidedLayout, guided_layout
from .loader import LoadedCheckpoint, convert, hspace_model, layout_of
from .probes import checked_probe_images, paired_log_ratio, structured_probes
from .settings import BETA_SCHEDULES, checkpoint_settings, settings_beside, sidecar_of

log = logging.getLogger("hspace")
MIN_HEAD_CHANNELS = 8
BETA_NAMES = {config["beta_schedule"]: name for name, config in BETA_SCHEDULES.items()}
TIE_MARGIN = 1e-4  # equal up to float32 rounding
TIE_Z = 3.0
__all__ = ["candidate_splits", "HeadSplitRanking", "rank_head_splits"]


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


def _split_settings(split: AttentionSplit) -> dict:
    return {"num_heads": split.num_heads, "num_head_channels": split.num_head_channels,
            "new_attention_order": split.new_order}


@dataclass(frozen=True)
class HeadSplitRanking:
    """What ``rank_head_splits`` found: ``ranked``, [(head-split settings, mean denoising loss)] best first (the
    object iterates and indexes as that list); ``tied``: the splits the probes could not tell from the best (the best
    among them): more than one means the ranking among them is noise, not evidence; ``message``: one line saying
    which."""

    ranked: tuple[tuple[dict, float], ...]
    tied: tuple[dict, ...]
    probes: str
    message: str

    def __iter__(self):
        return iter(self.ranked)

    def __getitem__(self, index):
        return self.ranked[index]

    def __len__(self) -> int:
        return len(self.ranked)


@torch.no_grad()
def rank_head_splits(path: str, sample_size: int | None = None, *, images: torch.Tensor | None = None,
                     fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), seed: int = 0, **settings
                     ) -> HeadSplitRanking:
    """The head splits of a guided-diffusion checkpoint file ranked by denoising loss (module docstring).

    ``settings``: the other settings (parameterization, class_label, …), as for ``load_checkpoint``; the JSON file
    beside the checkpoint is read too, except its head split.  ``images``: (B, C, H, W) in [−1, 1], a few images
    of the model's domain; else 8 structured probes of ``sample_size`` (default 32, ``probes.structured_probes``).
    ``fractions``: the timesteps tried, as fractions of the model's T (for a σ-parameterised model, of its
    log-uniform σ table).  The losses are compared paired, image by image and level by level, in log: a split
    within ``TIE_Z`` standard errors or ``TIE_MARGIN`` of the best is reported as tied with it, not ranked below it.
    Give the first entry's settings to ``load_checkpoint`` (or put them in the JSON file) when it is not tied."""
    name = os.path.basename(path)
    state = read_state_dict(path)
    if layout_of(state) != "guided_diffusion":
        raise ValueError(f"{name} is not a guided-diffusion UNetModel; only that layout has a head split to find.")
    layout = guided_layout(state)
    beside = {k: v for k, v in settings_beside(path).items()
              if k not in ("num_heads", "num_head_channels", "new_attention_order")}
    base = checkpoint_settings(settings, beside, os.path.basename(sidecar_of(path)))
    if images is None:
        images, probes = structured_probes(8, sample_size or 32, layout.in_channels, seed), "8 synthetic probes"
    else:
        images = checked_probe_images(images, layout.in_channels, f"{name}: rank_head_splits")
        probes = f"your {images.shape[0]} image(s)"
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed + 1))
    measured = []
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
            losses.append(((model.predict(x_t, t).eps - noise) ** 2).mean(dim=(1, 2, 3)))
        losses = torch.stack(losses)  # (levels, images)
        measured.append((_split_settings(split), losses))
        log.info("%s: head split %s: denoising loss %.5f", name, measured[-1][0], float(losses.mean()))
    measured.sort(key=lambda item: float(item[1].mean()))
    best = measured[0][1]
    tied = []
    for split, losses in measured:
        ratio, stderr = paired_log_ratio(losses, best)
        log.info("%s: head split %s: log loss ratio to the best %+.4f ± %.4f", name, split, ratio, stderr)
        if ratio <= max(TIE_MARGIN, TIE_Z * stderr):
            tied.append(split)
    ranked = tuple((split, float(losses.mean())) for split, losses in measured)
    if len(tied) > 1:
        message = (f"{name}: the probes cannot separate {len(tied)} head splits ({'; '.join(map(str, tied))}): "
                   f"their denoising losses on {probes} are within the noise band of the best, so their order is not "
                   "evidence. Give a few images of the model's domain (images=), or try each and look at samples.")
        log.warning("%s", message)
    else:
        message = (f"{name}: head split {tied[0]} denoises {probes} best, beyond the noise band of every other; "
                   "check a sample with it.")
        log.info("%s", message)
    return HeadSplitRanking(ranked, tuple(tied), probes, message)
