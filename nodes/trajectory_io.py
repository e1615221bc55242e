"""A preview of h for the UI."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy_api.latest import io

from .layer import CATEGORY, HSpaceNode, Trajectory


def pca_rgb(h: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, size, size, 3): the 3 leading principal components of h's channels, shared over the batch."""
    b, c, hh, ww = h.shape
    flat = h.permute(0, 2, 3, 1).reshape(-1, c).double()
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ v[: min(3, c)].T
    if comps.shape[1] < 3:
        comps = F.pad(comps, (0, 3 - comps.shape[1]))
    lo, hi = comps.min(0).values, comps.max(0).values
    rgb = ((comps - lo) / (hi - lo).clamp_min(1e-12)).reshape(b, hh, ww, 3).float()
    return F.interpolate(rgb.permute(0, 3, 1, 2), size=(size, size), mode="nearest").permute(0, 2, 3, 1)


class PreviewH(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpacePreviewH", display_name="H-Space Preview h", category=f"{CATEGORY}/io",
            description="h at one step as an image: its 3 leading principal components as RGB (one image per row of "
                        "the batch). Also reports ‖h_t‖ at every step.",
            inputs=[Trajectory.Input("trajectory", tooltip="Trajectory to look at."),
                    io.Int.Input("step", default=0, min=0, max=999, tooltip="Step index (0 = t near T)."),
                    io.Int.Input("size", default=256, min=16, max=2048, tooltip="Output image size.")],
            outputs=[io.Image.Output("image", tooltip="PCA of h as RGB."),
                     io.String.Output("norms", tooltip="‖h_t‖ per step (mean over rows).")],
        )

    @classmethod
    def execute(cls, trajectory, step, size) -> io.NodeOutput:
        if step >= len(trajectory.timesteps):
            raise ValueError(f"step {step} is past the trajectory's {len(trajectory.timesteps)} steps.")
        h = trajectory.h.float().cpu()
        norms = h.flatten(2).norm(dim=-1).mean(1)
        text = ", ".join(f"t={t}: {n:.1f}" for t, n in zip(trajectory.timesteps, norms.tolist()))
        return io.NodeOutput(pca_rgb(h[step], size), text, ui={"text": [text]})
