"""Progress, cancellation and input checks shared by every loop of the library."""
from __future__ import annotations

from typing import Callable

import torch

ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised when ``should_stop()`` asks a loop to end."""


class StepLoop:
    """Progress and cancellation for one loop: call ``tick()`` before each step."""

    def __init__(self, total: int, progress: ProgressFn | None = None, should_stop: StopFn | None = None):
        self.total, self.done, self.progress, self.should_stop = total, 0, progress, should_stop

    def tick(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"Stopped after {self.done} of {self.total} steps.")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def check_batch(x: torch.Tensor, what: str) -> None:
    """A finite (B, C, H, W) batch of images or latents, or a ValueError naming ``what``."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"{what} must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf; check the image or latent you passed.")
