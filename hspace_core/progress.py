"""Progress, cancellation and input checks shared by every loop of the library."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

# progress(done, total) or progress(done, total, x0): a callback that takes a third positional argument is also
# handed each step's predicted clean sample x0 (P_t, model space: what a latent preview decodes), see takes_x0.
ProgressFn = Callable[..., None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised when ``should_stop()`` asks a loop to end."""


def takes_x0(progress: ProgressFn | None) -> bool:
    """The one rule for progress callbacks: one that accepts a third positional argument (or ``*args``) is given
    the step's x0; a ``progress(done, total)`` callback never is, so every 2-argument caller keeps working."""
    if progress is None:
        return False
    try:
        params = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called the old way
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def offset(progress: ProgressFn | None, before: int, total: int) -> ProgressFn | None:
    """``progress`` for one sub-run of a longer run: its (done, _) is reported as (before + done, total), with its
    x0 when ``progress`` takes one (and only then, so the sub-run computes no x0 for a 2-argument callback)."""
    if progress is None:
        return None
    if takes_x0(progress):
        return lambda done, _total, x0=None: progress(before + done, total, x0)
    return lambda done, _total: progress(before + done, total)


class StepLoop:
    """Progress and cancellation for one loop: call ``tick()`` before each step and, where the step has a predicted
    clean sample, ``show(x0)`` after it (only computed when ``wants_x0``)."""

    def __init__(self, total: int, progress: ProgressFn | None = None, should_stop: StopFn | None = None):
        self.total, self.done, self.progress, self.should_stop = total, 0, progress, should_stop
        self.wants_x0 = takes_x0(progress)

    def tick(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"Stopped after {self.done} of {self.total} steps.")
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def show(self, x0: torch.Tensor) -> None:
        """The step just ticked has predicted ``x0``: hand it to a callback that takes one (the tensor as it is,
        no host sync; what the callback does with it, e.g. ComfyUI's previewer, is its own)."""
        if self.wants_x0:
            self.progress(self.done, self.total, x0)

    def sub(self) -> ProgressFn:
        """A progress callback for a nested loop whose every step is one step of this loop (x0 passed on when this
        loop's callback takes one)."""
        if self.wants_x0:
            return lambda _done, _total, x0=None: self.tick() if x0 is None else self.show(x0)
        return lambda _done, _total: self.tick()

    def previews(self) -> ProgressFn | None:
        """A progress callback for a nested run that counts as one step of this loop: only its x0 are passed on
        (None when this loop's callback takes none)."""
        if not self.wants_x0:
            return None
        return lambda _done, _total, x0=None: None if x0 is None else self.show(x0)


def check_batch(x: torch.Tensor, what: str) -> None:
    """A finite (B, C, H, W) batch of images or latents, or a ValueError naming ``what``."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"{what} must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf; check the image or latent you passed.")
