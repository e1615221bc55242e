"""The device and dtype rule (docs/precision.md), in one place.

- Every tensor a function creates takes its device and dtype from its inputs.
- float64 only on the CPU: Apple's MPS has none (and consumer GPUs run it at a small fraction of float32's speed),
  so accumulating math (norms, angles, SVDs) is float64 on the CPU and float32 on any other device.
- Half-precision inputs are widened to float32 for the step math and cast back.
- A per-step loop never waits for the device: finiteness is accumulated on the device and read once at the end,
  and h copied to the CPU from a CUDA device goes asynchronously into pinned memory.
"""
from __future__ import annotations

import torch


def wide_dtype(device: torch.device | str) -> torch.dtype:
    """float64 on the CPU, float32 elsewhere: the precision for norms, angles and decompositions."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``wide_dtype`` of its device."""
    return x.to(wide_dtype(x.device))


def step_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sampler's step math runs in for inputs of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def to_host(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached CPU copy of ``x`` in ``dtype``.  From a CUDA device the copy is asynchronous, into pinned memory:
    call ``host_ready()`` before reading it."""
    x = x.detach()
    dtype = dtype or x.dtype
    if x.device.type != "cuda":
        return x.to("cpu", dtype, copy=True)
    out = torch.empty(x.shape, dtype=dtype, pin_memory=True)
    return out.copy_(x.to(dtype), non_blocking=True)


def host_ready(tensors) -> None:
    """Wait once for the asynchronous copies of ``to_host`` (a no-op without CUDA or without pinned tensors)."""
    if any(torch.is_tensor(t) and t.device.type == "cpu" and t.is_pinned() for t in tensors):
        torch.cuda.synchronize()


class FiniteWatch:
    """The first step whose tensor held NaN or inf, kept on the device: ``see`` queues no host read, ``first``
    reads once (twice when something diverged)."""

    def __init__(self):
        self._finite = self._first = None

    def see(self, x: torch.Tensor, step: int) -> None:
        finite = torch.isfinite(x).all()
        if self._finite is None:
            self._finite, self._first = finite, torch.where(finite, -1, step)
        else:
            self._first = torch.where(self._finite & ~finite, step, self._first)
            self._finite = self._finite & finite

    def first(self) -> int | None:
        """The step passed to the first ``see`` of a non-finite tensor, or None."""
        if self._finite is None or bool(self._finite):
            return None
        return int(self._first)
