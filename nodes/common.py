"""The common layer of the H-Space nodes: custom types, shared inputs, input checks, model folders, LATENT/IMAGE
conversion.  Node modules import from here, ``comfy`` (the ComfyUI adapter package) and the core,
never from each other."""
from __future__ import annotations

import dataclasses
import logging
import math
import os

import torch

import folder_paths
from comfy_api.latest import io

from ..hspace_core import EditSchedule, HStorage, lpips_distance, timestep_grid
from ..hspace_core.sites import DEFAULT_SITE, SITES
from .comfy.origin import XTOrigin

CATEGORY = "h-space"
PREFIX = "HSpace"

Trajectory = io.Custom("HSPACE_TRAJECTORY")
DirectionType = io.Custom("HSPACE_DIRECTION")
Calibration = io.Custom("HSPACE_CALIBRATION")
Boost = io.Custom("HSPACE_BOOST")
DirectionSet = io.Custom("HSPACE_DIRECTIONS")  # a tuple of Direction (PCA / Jacobian directions)

BOOST_SEED_RULE = "When a Quality Boost is connected, its seed replaces this node's seed."


def advanced(widget):
    """Mark an expert setting: the editor hides it until the node menu's "Show Advanced".  Newer ComfyUI schemas have
    the flag (``Input(..., advanced=True)``); older ones (0.3.75) carry it in the input's extra_dict, and
    web/advanced_widgets.js lifts it onto the widget (docs/compatibility.md)."""
    if hasattr(widget, "advanced"):
        widget.advanced = True
    else:
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


def mixing_inputs():
    """A content injection's optional region, calibration and boost, and its expert knobs (mode, per_channel)."""
    return [
        io.Mask.Input("mask", optional=True,
                      tooltip="Local mixing: 1 = inject here, 0 = keep the style image. Any size; soft edges allowed."),
        Calibration.Input("calibration", optional=True, tooltip="Style Calibrate settings (ω)."),
        Boost.Input("boost", optional=True, tooltip="Quality Boost settings. " + BOOST_SEED_RULE),
        advanced(io.Combo.Input("mode", options=["slerp", "replace"], default="slerp",
                                tooltip="'replace' is the naive baseline h̃ = h_content.")),
        advanced(io.Boolean.Input("per_channel", default=False, tooltip="Normalise and slerp each channel separately.")),
    ]


def steps_input(default: int = 40):
    return io.Int.Input("steps", default=default, min=2, max=1000,
                        tooltip="DDIM steps on Asyrp's grid over [0, 999]. Use the same number for inversion and editing.")


def site_input():
    """Which U-Net block is h (advanced; the last input, so saved workflows keep their widget order)."""
    return advanced(io.Combo.Input(
        "site", options=list(SITES), default=DEFAULT_SITE, optional=True,
        tooltip="Which U-Net block is h: 'middle' (the bottleneck, Asyrp's h-space) or the output of the first / "
                "second decoder level ('up1', 'up2': finer, often more semantic on Stable Diffusion). What this node "
                "makes carries its site; nodes that use it read h there."))


def t_edit_input(default: int = 400):
    return io.Int.Input("t_edit", default=default, min=0, max=999,
                        tooltip="h is changed for t ≥ t_edit. Earlier (larger) t_edit gives stronger, coarser changes.")


H_STORAGES = {"model's precision on CPU": HStorage("model", "cpu"), "model's precision on the model's device":
              HStorage("model", "model"),
              "float32 on CPU": HStorage("float32", "cpu"), "float16 on CPU": HStorage("float16", "cpu"),
              "float16 on the model's device": HStorage("float16", "model"),
              "float32 on the model's device": HStorage("float32", "model")}
# Lossless (docs/benchmarks.md): float16 when the model runs in float16 (most GPUs), float32 on a float32 CPU run.
DEFAULT_H_STORAGE = "model's precision on CPU"


def h_storage_inputs():
    """How a node that records h keeps it (docs/benchmarks.md measures the choices)."""
    return [advanced(io.Combo.Input("h_storage", options=list(H_STORAGES), default=DEFAULT_H_STORAGE, optional=True,
                                    tooltip="Precision and place of the h trajectory. The model's precision loses "
                                            "nothing (float16 when the model runs in float16); float16 halves "
                                            "float32's memory; "
                                            "the model's device (a GPU) saves the copies to the CPU but keeps it "
                                            "in GPU memory.")),
            advanced(io.Int.Input("keep_h_from_t", default=0, min=0, max=999, optional=True,
                                  tooltip="Keep h only at t ≥ this: the t_edit of the injection or interpolation "
                                          "that will use it (they read no other step). 0 keeps every step."))]


def h_storage_of(h_storage: str, keep_h_from_t: int) -> HStorage:
    check_option("h_storage", h_storage, list(H_STORAGES))
    return dataclasses.replace(H_STORAGES[h_storage], t_min=keep_h_from_t)


def seed_input(tooltip: str = "Seed for the stochastic (quality boost) steps."):
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)


# --- input checks: ComfyUI 0.3.75 checks neither V3 combo options nor NaN/inf against a widget's range ---

def check_inputs(node_cls, values: dict) -> None:
    """Check every widget value a node received against its own schema: combo options, and numbers finite and
    within the widget's [min, max].  Call it first thing in ``execute`` with ``locals()``."""
    for spec in node_cls.define_schema().inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, io.Combo.Input):
            check_option(spec.id, value, spec.options)
        elif isinstance(spec, (io.Float.Input, io.Int.Input)):
            check_number(spec.id, value, spec.min, spec.max)


def check_option(name: str, value, options) -> None:
    if value not in options:
        shown = ", ".join(map(repr, options[:20])) + (f" … ({len(options)} in all)" if len(options) > 20 else "")
        raise ValueError(f"{name} is {value!r}, which is not one of its options; choose one of: {shown}.")


def check_number(name: str, value, low=None, high=None) -> None:
    if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and value < low) \
            or (high is not None and value > high):
        raise ValueError(f"{name} is {value}; set it to a number in [{low}, {high}].")


def edit_schedule(steps: int, t_edit: int, boost) -> EditSchedule:
    """The node's schedule, with the Quality Boost's t_boost and η when one is connected."""
    if boost is None:
        return EditSchedule(steps, t_edit=t_edit, t_boost=0)
    if t_edit < boost.t_boost:
        raise ValueError(f"t_edit ({t_edit}) is below the Quality Boost's t_boost ({boost.t_boost}): raise t_edit on "
                         "this node or lower t_boost on the Quality Boost node.")
    return EditSchedule(steps, t_edit=t_edit, t_boost=boost.t_boost, eta_boost=boost.eta)


def gamma_end_of(gamma: float, gamma_end: float) -> float:
    """gamma_end as the ramp's end: exactly −1 means constant γ; other negatives are refused, not read as −1."""
    if gamma_end == -1.0:
        return gamma
    if not 0.0 <= gamma_end <= 1.0:
        raise ValueError(f"gamma_end is {gamma_end}: set it to −1 (γ stays constant) or to a value in [0, 1].")
    return gamma_end


def seed_of(seed: int, boost) -> int:
    """BOOST_SEED_RULE: a connected Quality Boost's seed replaces the node's own."""
    if boost is None:
        return seed
    if boost.seed != seed:
        logging.info("h-space: using the Quality Boost's seed %s instead of the node's seed %s.", boost.seed, seed)
    return boost.seed


# --- x_T carries its origin (grid, model, guidance) between nodes ---

ORIGIN_KEY = "hspace_origin"


def with_origin(latent: dict, origin: XTOrigin) -> dict:
    return {**latent, ORIGIN_KEY: origin}


def origin_of(x_T: dict, steps: int) -> XTOrigin | None:
    """The x_T's origin, refusing a grid other than the one it was inverted on (None for other latents)."""
    origin = x_T.get(ORIGIN_KEY)
    if origin is not None:
        origin.check_grid(timestep_grid(steps))
    return origin


def sampling_inputs(x_T: dict, steps: int, cfg: float, positive, negative):
    """(negative, negative_at) for sampling from ``x_T`` at ``steps`` and ``cfg``: an x_T inverted on another grid is
    refused; a negative-prompt inversion's positive becomes the negative; a null-text inversion's per-step negative
    embeddings are used.  Latents that did not come from DDIM Inversion pass unchanged."""
    origin = origin_of(x_T, steps)
    if origin is None:
        return negative, None
    if math.isclose(cfg, 1.0) or origin.guidance == "plain":
        return negative, None
    if origin.guidance == "negative_prompt":
        logging.info("h-space: x_T comes from a negative-prompt inversion; the positive conditioning is the negative.")
        return positive, None
    if not math.isclose(cfg, origin.guidance_scale):
        logging.info("h-space: the null-text embeddings were optimised at cfg %s and are used at cfg %s.",
                     origin.guidance_scale, cfg)
    return negative, origin.negative_at


# --- LATENT / IMAGE ---

def latent_x(model, latent: dict) -> torch.Tensor:
    """LATENT → model-space tensor (the h-space latents are stored after ``process_latent_in``)."""
    return model.model.process_latent_in(latent["samples"].float())


def encode(vae, image: torch.Tensor) -> dict:
    return {"samples": vae.encode(image[:, :, :, :3])}


def decode(vae, latent: dict) -> torch.Tensor:
    images = vae.decode(latent["samples"])
    return images.reshape(-1, *images.shape[-3:]) if images.dim() == 5 else images


def latent_of(image, vae, latent) -> dict:
    """The LATENT a node works on: the connected latent, or the image through its VAE; never both."""
    if latent is not None and image is not None:
        raise ValueError("Both a latent and an image are connected: disconnect one (the latent, or the image and its "
                         "VAE); the node inverts exactly one of them.")
    if latent is not None:
        return latent
    if image is None or vae is None:
        raise ValueError("Connect either a latent, or an image together with its VAE.")
    return encode(vae, image)


def encoded_pixels(vae, image: torch.Tensor) -> torch.Tensor:
    """The part of ``image`` the VAE actually encodes: it crops each side to a multiple of its downscale factor."""
    cropped = vae.vae_encode_crop_pixels(image[:, :, :, :3])
    if cropped.shape != image[:, :, :, :3].shape:
        logging.info("h-space: the VAE encodes the central %s×%s of the %s×%s image; PSNR is measured on that part.",
                     cropped.shape[2], cropped.shape[1], image.shape[2], image.shape[1])
    return cropped


STRENGTH_RANGE = (-100.0, 100.0)


def parse_values(text: str, name: str, low: float, high: float, example: str = "-2, -1, 0, 1, 2") -> list[float]:
    """A list of numbers (the widget ``name``): comma-separated, each finite and within [low, high]."""
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a comma-separated list of numbers, e.g. {example}.") from None
    if not values:
        raise ValueError(f"{name} is empty; give numbers like {example}.")
    for value in values:
        check_number(f"a value in {name}", value, low, high)
    return values


def parse_t_edits(text: str, name: str = "t_edit_sweep") -> list[int]:
    """A t_edit list (the widget ``name``): comma-separated whole timesteps in [0, 999]; empty text is no list."""
    values = parse_values(text, name, 0, 999, "600, 400, 200") if text.strip() else []
    for value in values:
        if value != int(value):
            raise ValueError(f"{name} holds {value}; t_edit values are whole timesteps, e.g. 600, 400, 200.")
    return [int(v) for v in values]


def parse_strengths(text: str, name: str = "strength_sweep") -> list[float]:
    """A strength list: comma-separated numbers, each finite and within the strength range."""
    return parse_values(text, name, *STRENGTH_RANGE)


def sweep_text(values) -> str:
    """The values a sweep node ran, as the comma-separated text Label Sweep Grid reads."""
    return ", ".join(f"{v:g}" for v in values)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(data_range**2 / mse)).item()


# --- model folders of the pack via ComfyUI's folder_paths: models/hspace_directions, models/hspace_trajectories,
# models/asyrp (official Asyrp .pth checkpoints) and models/open_clip (open_clip weights and model configs) ---

FOLDERS = {"hspace_directions": {".safetensors"}, "hspace_trajectories": {".safetensors"},
           "asyrp": {".pth", ".pt"}, "open_clip": {".safetensors", ".bin", ".pt", ".pth", ".json"}}


def register_folders() -> None:
    for name, extensions in FOLDERS.items():
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))


def list_files(kind: str) -> list[str]:
    register_folders()
    return folder_paths.get_filename_list(kind)


def resolve(kind: str, name: str) -> str:
    register_folders()
    path = folder_paths.get_full_path(kind, name)
    if path is None:
        raise ValueError(f"{name!r} is not in models/{kind}; save one there first or pick another file.")
    return path


def save_path(kind: str, prefix: str) -> str:
    """A new numbered file under the first models/<kind> folder (never overwrites)."""
    register_folders()
    folder = folder_paths.get_folder_paths(kind)[0]
    os.makedirs(folder, exist_ok=True)
    safe = "".join(c for c in prefix if c.isalnum() or c in "-_") or kind
    n = 1
    while os.path.exists(os.path.join(folder, f"{safe}_{n:05d}.safetensors")):
        n += 1
    return os.path.join(folder, f"{safe}_{n:05d}.safetensors")


def stored_file_state(kind: str, name: str):
    """``file_state`` of a file in models/<kind> (for the loaders' ``fingerprint_inputs``)."""
    register_folders()
    return file_state(folder_paths.get_full_path(kind, name))


def file_state(path: str | None):
    """A change fingerprint of a file or a folder's files (path, mtime, size), for ``fingerprint_inputs``: ComfyUI
    re-runs a loader when it changes.  None when the path does not exist (execute then says what is wrong)."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        stat = os.stat(path)
        return ((path, stat.st_mtime_ns, stat.st_size),)
    return tuple(entry for root, _, names in sorted(os.walk(path)) for name in sorted(names)
                 for entry in file_state(os.path.join(root, name)))


def lpips_by_name(backbone: str):
    if backbone.startswith("alex (random"):
        import lpips

        torch_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)
            net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
        finally:
            torch.random.set_rng_state(torch_state)  # never leave the global RNG changed
        return lambda a, b: net(a.float(), b.float()).flatten()
    try:
        return lpips_distance(backbone)
    except Exception as error:  # offline, or a corrupt cache
        raise ValueError(f"Could not load LPIPS ({backbone}) weights: {error}. They download once from the internet; "
                         "connect once or copy them into torch's hub cache.") from error
