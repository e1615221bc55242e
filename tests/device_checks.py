"""A stand-in for a GPU on a machine without one: the ``meta`` device, watched by a dispatch mode.

A meta tensor has a device and a dtype but no values, and PyTorch refuses to mix it with a CPU tensor (other than a
0-dim scalar), exactly as it refuses to mix a CUDA tensor with one.  ``Accelerator`` watches every op and records:

- ``syncs``: reads of a device value on the host (``.item()``, ``bool(t)``, ``float(t)``); on a GPU each one waits for
  the device.  The read returns a fixed plausible value (True, 1.0, ``int_value``), so the code goes on;
- ``host_copies``: copies from the device to the CPU (``.cpu()``, ``.to("cpu")``); they return zeros of the right
  shape;
- ``float64``: ops that produced a float64 tensor (not a wrapped Python number) off the CPU (Apple's MPS has none).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _is_meta(x) -> bool:
    return torch.is_tensor(x) and x.is_meta


class Accelerator(TorchDispatchMode):
    def __init__(self, int_value: int = 1):
        super().__init__()
        self.int_value = int_value  # what an integer read returns (a rank check wants a large one)
        self.syncs, self.host_copies, self.float64 = [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and _is_meta(args[0]):
            self.syncs.append(args[0].dtype)
            x = args[0]
            return True if x.dtype == torch.bool else (1.0 if x.is_floating_point() else self.int_value)
        if func is aten._to_copy.default and _is_meta(args[0]) and _device_type(kwargs.get("device")) == "cpu":
            self.host_copies.append(tuple(args[0].shape))
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device="cpu")
        if func is aten.copy_.default and _is_meta(args[1]) and args[0].device.type == "cpu":
            self.host_copies.append(tuple(args[1].shape))
            return args[0].zero_()
        out = func(*args, **kwargs)
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            # 0-dim: a Python number wrapped by an op (functorch moves them to the device); MPS takes those
            if torch.is_tensor(o) and o.dtype == torch.float64 and o.device.type != "cpu" and o.dim():
                self.float64.append(str(func))
        return out


def _device_type(device) -> str | None:
    return None if device is None else torch.device(device).type


def meta(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its parameters and buffers on the meta device (shapes and dtypes kept, values dropped)."""
    return module.to("meta")
