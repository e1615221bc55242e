"""Runs made of several sub-runs (sweeps): one progress bar over all of them; Cancel is checked at every step."""
from __future__ import annotations

import torch

from ..comfy.progress import progress_bar


def sweep(values, steps: int, run, model=None) -> torch.Tensor:
    """``run(value, progress)`` for each value of a sweep (each a run of ``steps`` steps that reports
    ``progress(done, total, x0=None)``), concatenated along the batch, value-major, under one progress bar (with
    latent previews of the ``x0`` given when the MODEL is)."""
    total = steps * len(values)
    progress = progress_bar(total, model)
    return torch.cat([run(value, lambda done, _, x0=None, before=k * steps: progress(before + done, total, x0))
                      for k, value in enumerate(values)])
