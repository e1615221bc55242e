"""The newest core's allocation graph, and how the pack's patches stay out of it.

Newer ComfyUI records the GPU allocations of a model's forward pass and replays them on later steps (comfy-aimdo's
malloc graph, the "Comfy model compiler": ``comfy/model_prefetch.py``, ``malloc_graph_begin`` / ``malloc_graph_end``
around the forward, off with ``--disable-comfy-compiler``).  Two things the pack does inside a forward break that
contract: the h recorders keep h past the pass (a tensor of recorded memory, which a replay hands out again), and an
edit allocates only on the steps it edits (a pattern that changes from step to step).  Core's opt-out for such work
is ``comfy.model_prefetch.pause_malloc_graph()``: allocations inside it are ordinary ones, and it does nothing when no
graph records on this thread.  Feature-detected: 0.3.75 has no ``comfy.model_prefetch``, 0.33.0's has no
``pause_malloc_graph``; there both helpers change nothing (docs/compatibility.md, "Allocation graph").
"""
from __future__ import annotations

import contextlib

try:
    from comfy.model_prefetch import pause_malloc_graph as _pause
except ImportError:
    _pause = None


def outside_allocation_graph():
    """A context in which the pack's allocations are not recorded into core's allocation graph (if it has one)."""
    return _pause() if _pause is not None else contextlib.nullcontext()


def kept(tensor):
    """``tensor`` to keep past the U-Net pass that made it: under an allocation graph, a copy made outside the graph
    (the pass's own memory is handed out again on the next step); elsewhere the tensor itself, as before."""
    if _pause is None:
        return tensor
    with _pause():
        return tensor.clone()
