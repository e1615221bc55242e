"""Shared pieces of the H-Space nodes: custom types, common inputs, and LATENT/IMAGE conversion."""
from __future__ import annotations

import torch

from comfy_api.latest import io

CATEGORY = "h-space"
PREFIX = "HSpace"

Trajectory = io.Custom("HSPACE_TRAJECTORY")
DirectionType = io.Custom("HSPACE_DIRECTION")
Calibration = io.Custom("HSPACE_CALIBRATION")
Boost = io.Custom("HSPACE_BOOST")
DirectionSet = io.Custom("HSPACE_DIRECTIONS")  # a tuple of Direction (PCA / Jacobian directions)



def advanced(widget):
    """Mark an expert setting; 0.3.75's schema has no flag for it, so it travels in the input's extra_dict."""
    widget.extra_dict = {**widget.extra_dict, "advanced": True}
    return widget


def model_input():
    return io.Model.Input("model", tooltip="An SD1.x/SD2.x/SDXL MODEL, or a pixel U-Net from 'H-Space Load Pixel U-Net'.")


def conditioning_inputs():
    return [
        io.Conditioning.Input("positive", optional=True,
                              tooltip="Text conditioning (SD models). Leave empty for pixel U-Nets."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Negative conditioning, needed when cfg ≠ 1."),
        advanced(io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance scale; 1 runs only the positive branch (best for inversion).")),
        advanced(io.Combo.Input("edit_branches", options=["cond", "uncond", "both"], default="cond",
                       tooltip="Under CFG, which branch's h is edited or injected.")),
    ]


def steps_input(default: int = 40):
    return io.Int.Input("steps", default=default, min=2, max=1000,
                        tooltip="DDIM steps on Asyrp's grid over [0, 999]. Use the same number for inversion and editing.")


def t_edit_input(default: int = 400):
    return io.Int.Input("t_edit", default=default, min=0, max=999,
                        tooltip="h is changed for t ≥ t_edit. Earlier (larger) t_edit gives stronger, coarser changes.")


def seed_input():
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                        tooltip="Seed for the stochastic (quality boost) steps.")


def latent_x(model, latent: dict) -> torch.Tensor:
    """LATENT → model-space tensor (the h-space latents are stored after ``process_latent_in``)."""
    return model.model.process_latent_in(latent["samples"].float())


def encode(vae, image: torch.Tensor) -> dict:
    return {"samples": vae.encode(image[:, :, :, :3])}


def decode(vae, latent: dict) -> torch.Tensor:
    images = vae.decode(latent["samples"])
    return images.reshape(-1, *images.shape[-3:]) if images.dim() == 5 else images


def parse_strengths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"Strength sweep {text!r} is not a comma-separated list of numbers, e.g. -2, -1, 0, 1, 2.")
    if not values:
        raise ValueError("The strength sweep is empty; give numbers like -2, 0, 2 or leave it blank.")
    return values


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(data_range**2 / mse)).item()


def boost_conflict(t_edit, boost) -> bool | str:
    """validate_inputs for nodes with t_edit and an optional Quality Boost: an error string for the UI, or True."""
    if boost is not None and t_edit is not None and t_edit < boost.t_boost:
        return f"t_edit ({t_edit}) is below the Quality Boost's t_boost ({boost.t_boost}); raise t_edit or lower t_boost."
    return True
