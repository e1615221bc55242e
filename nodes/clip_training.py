"""H-Space Train Asyrp Direction (CLIP directional loss) and H-Space Load Asyrp Direction (official checkpoints)."""
from __future__ import annotations

import dataclasses
import functools
import os
import re

import torch

from comfy_api.latest import io

from ..hspace_core.adapters.base import autograd_ready
from ..hspace_core.clip_directions import DirectionTraining, load_open_clip, train_direction
from ..hspace_core import load_official_asyrp
from .comfy.memory import rows_run
from .comfy.model import time_embedding_of
from .comfy.noise_levels import noise_levels
from .comfy.run import run_in_comfy
from .comfy.progress import progress_bar
from .layer import (CATEGORY, DirectionType, HSpaceNode, node_name, advanced, conditioning_inputs, encode, list_files,
                    lpips_by_name, model_input, resolve, seed_input, site_input, steps_input, stored_file_state,
                    edit_schedule, window_inputs)


@functools.lru_cache(maxsize=1)
def clip_scorer(model_name: str, pretrained: str):
    """open_clip by name; ``pretrained`` is a tag (downloads once), a file in models/open_clip, or empty (random
    weights, for offline tests).  Configs (*.json) in models/open_clip register extra model names."""
    import folder_paths
    import open_clip

    list_files("open_clip")
    for folder in folder_paths.get_folder_paths("open_clip"):
        if os.path.isdir(folder):
            open_clip.add_model_config(folder)
    if pretrained and folder_paths.get_full_path("open_clip", pretrained):
        pretrained = folder_paths.get_full_path("open_clip", pretrained)
    try:
        return load_open_clip(model_name, pretrained or None)
    except RuntimeError as error:  # unknown name or tag, or the download failed
        raise ValueError(f"Could not load open_clip {model_name!r} with weights {pretrained!r}: {error}. Use a name from "
                         "open_clip.list_pretrained() (e.g. ViT-B-16 / openai; downloads once) or put the weights "
                         "file in models/open_clip.") from error


def differentiable_decode(vae, model):
    """Model space → images in [-1, 1] through the VAE's decoder, keeping gradients (VAE.decode does not)."""
    decoder = vae.first_stage_model

    def decode(x):
        z = model.model.process_latent_out(x).to(vae.device, vae.vae_dtype)
        return decoder.decode(z).float().to(x.device)

    return decode, decoder


def refuse_on_flow_training(window: str) -> None:
    """What Train Asyrp Direction cannot do on a flow-matching transformer (docs/transformers.md): t_edit counts a
    U-Net's 1000 DDPM steps and its LPIPS rule runs on the ᾱ schedule.  (The implicit f_t trains there over the
    transformer's own time embedding: ``comfy.dit_time``.)"""
    if window != "percent":
        raise ValueError("on a flow-matching transformer t_edit (a U-Net's 1000 DDPM steps, and its −1 LPIPS rule) has "
                         "no meaning: set window to 'percent' and choose start_percent / end_percent.")


class TrainAsyrpDirection(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceTrainAsyrpDirection", display_name="H-Space Train Asyrp Direction", category=f"{CATEGORY}/direction",
            description="Learn an h-space direction from a text pair with Asyrp's CLIP directional loss on a frozen "
                        "model: one SGD step per timestep ≥ t_edit along each training image's edited path. Global Δh, "
                        "per-timestep Δh_t or the implicit f_t(h_t, t). Plug the result into H-Space Asyrp Edit.",
            inputs=[
                model_input(),
                io.Image.Input("images", tooltip="Training images (a batch; the official recipe uses tens to ~100)."),
                io.Vae.Input("vae", tooltip="The model's VAE ('pixel_space' for pixel U-Nets): encodes the images and "
                                            "decodes P_t for CLIP."),
                io.String.Input("source_text", default="face", tooltip="What the images show now, e.g. 'face'."),
                io.String.Input("target_text", default="smiling face", tooltip="What they should become."),
                io.Combo.Input("form", options=["implicit", "global", "per_timestep"], default="implicit",
                               tooltip="implicit: f_t(h_t, t) (two 1×1 convs over the model's time embedding, Asyrp's "
                                       "default; on Flux / SD3 the transformer's own); "
                                       "global: one Δh; per_timestep: one Δh_t per step."),
                io.Int.Input("epochs", default=1, min=0, max=1000,
                             tooltip="Passes over the images; each does one step per edited timestep. 0 = identity."),
                io.Float.Input("lr", default=0.5, min=1e-6, max=100.0, step=0.01, tooltip="SGD learning rate (official 0.5)."),
                steps_input(),
                io.Int.Input("t_edit", default=-1, min=-1, max=999,
                             tooltip="Train timesteps ≥ t_edit. -1: Asyrp's LPIPS rule × the text cosine (LPIPS "
                                     "weights download once)."),
                advanced(io.Int.Input("inversion_steps", default=40, min=2, max=1000, tooltip="DDIM steps to invert the images.")),
                advanced(io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per optimiser step.")),
                advanced(io.Float.Input("clip_weight", default=1.0, min=0.0, max=100.0, step=0.1, tooltip="λ_CLIP.")),
                advanced(io.Float.Input("recon_weight", default=3.0, min=0.0, max=100.0, step=0.1,
                                        tooltip="λ_recon on |P_t^edit − P_t^source|, × the text cosine.")),
                advanced(io.Int.Input("lr_step_epochs", default=3, min=1, max=1000, tooltip="StepLR step size (epochs).")),
                advanced(io.Float.Input("lr_gamma", default=0.1, min=0.0, max=1.0, step=0.01, tooltip="StepLR decay.")),
                advanced(io.Combo.Input("clip_reference", options=["source_prediction", "input"], default="source_prediction",
                                        tooltip="CLIP's source image: P_t^source (the paper) or the input image (official code).")),
                advanced(io.Boolean.Input("log_clip_loss", default=True,
                                          tooltip="Use −log((2 − L)/2) as the official code (else L = 1 − cos).")),
                advanced(io.Float.Input("init_scale", default=0.2, min=0.0, max=10.0, step=0.01,
                                        tooltip="Scale of the random initial Δh (official 0.2).")),
                advanced(io.String.Input("clip_model", default="ViT-B-16", tooltip="open_clip model name.")),
                advanced(io.String.Input("clip_pretrained", default="openai",
                                         tooltip="open_clip weights: a tag (downloads once) or a file in models/open_clip.")),
                seed_input("Seed of the random initial direction (init_scale): the same seed and images train the "
                           "same direction."),
                *conditioning_inputs(),
                site_input(),
                *window_inputs(grid_note=" On the training grid (steps): the steps whose σ lies in [σ(end_percent), "
                                         "σ(start_percent)] are trained; those before it run plainly. A percent "
                                         "window replaces t_edit (and its −1 LPIPS rule)."),
            ],
            outputs=[DirectionType.Output("direction", tooltip="The learnt direction (with its texts, t_edit and steps)."),
                     io.Int.Output("trained_t_edit", tooltip="The t_edit it was trained for; connect it to H-Space Asyrp Edit's t_edit."),
                     io.Float.Output("final_clip_loss", tooltip="Mean CLIP directional loss over the last epoch.")],
        )

    @classmethod
    def execute(cls, model, images, vae, source_text, target_text, form, epochs, lr, steps, t_edit, inversion_steps,
                batch_size, clip_weight, recon_weight, lr_step_epochs, lr_gamma, clip_reference, log_clip_loss,
                init_scale, clip_model, clip_pretrained, seed, cfg, edit_branches, positive=None,
                negative=None, site="middle", window="t_edit", start_percent=0.0, end_percent=0.6) -> io.NodeOutput:
        node = node_name(cls.define_schema())
        levels = noise_levels(model)
        if levels.flow:
            refuse_on_flow_training(window)
        span = edit_schedule(steps, 0, None, model, "percent", start_percent, end_percent, node) \
            if window == "percent" else None
        inside = None if span is None else span.edit_timesteps
        config = DirectionTraining(form=form, num_steps=steps, inversion_steps=inversion_steps,
                                   t_edit=None if t_edit < 0 or inside else t_edit, edit_timesteps=inside,
                                   made_with="" if span is None else span.made_with,
                                   num_train_timesteps=levels.num_timesteps,
                                   epochs=epochs, batch_size=batch_size, lr=lr,
                                   lr_step_epochs=lr_step_epochs, lr_gamma=lr_gamma, clip_weight=clip_weight,
                                   recon_weight=recon_weight, clip_reference=clip_reference,
                                   log_clip_loss=log_clip_loss, init_scale=init_scale, seed=seed)
        scorer = clip_scorer(clip_model, clip_pretrained.strip())
        distance = lpips_by_name("alex") if config.t_edit is None and inside is None else None
        pixels = images[..., :3].movedim(-1, 1) * 2 - 1
        latent = encode(vae, images)
        decode, decoder = differentiable_decode(vae, model)
        total = -(-pixels.shape[0] // batch_size) * (1 + epochs * steps)
        with autograd_ready(decoder):
            result = run_in_comfy(
                model, latent["samples"],
                lambda m, x: train_direction(m, pixels, scorer, source_text, target_text, config, latents=x,
                                             decode=decode, distance=distance, progress=progress_bar(total, model)),
                positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches, seed=seed, site=site,
                steps=steps,
                rows=rows_run(model, min(batch_size, latent["samples"].shape[0]), edited=True))  # a batch's [x; x]
        per_epoch = len(result.clip_losses) // max(epochs, 1)
        last = result.clip_losses[-per_epoch:] if per_epoch else [float("nan")]
        return io.NodeOutput(result.direction, result.t_edit, float(sum(last) / len(last)))


class LoadAsyrpDirection(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceLoadAsyrpDirection", display_name="H-Space Load Asyrp Direction", category=f"{CATEGORY}/direction",
            description="Load an official Asyrp checkpoint (.pth from its checkpoint/ folder, e.g. "
                        "smiling_LC_CelebA_HQ_t999_ninv40_ngen40_0.pth) from models/asyrp: the implicit f_t (conv1, "
                        "temb_proj, norm2, conv2) or Δh tensors. Read with torch.load(weights_only=True).",
            inputs=[
                model_input(),
                io.Combo.Input("asyrp_file", options=list_files("asyrp"), tooltip="A .pth file in models/asyrp."),
                advanced(io.Int.Input("train_steps", default=0, min=0, max=1000,
                                      tooltip="DDIM steps it was trained with; the strength is rescaled by "
                                              "train_steps / steps. 0: read 'ngen<N>' from the file name, else none.")),
            ],
            outputs=[DirectionType.Output("direction", tooltip="The direction, ready for H-Space Asyrp Edit.")],
        )

    @classmethod
    def fingerprint_inputs(cls, asyrp_file, **_):
        """Re-run when the file changes on disk."""
        return stored_file_state("asyrp", asyrp_file)

    @classmethod
    def execute(cls, model, asyrp_file, train_steps) -> io.NodeOutput:
        path = resolve("asyrp", asyrp_file)
        with torch.inference_mode(False):
            direction = load_official_asyrp(path, time_embedding_of(model))
        found = re.search(r"ngen(\d+)", asyrp_file)
        train_steps = train_steps or (int(found.group(1)) if found else 0)
        if train_steps:
            direction = dataclasses.replace(direction, metadata={**direction.metadata, "train_steps": train_steps})
        return io.NodeOutput(direction)
