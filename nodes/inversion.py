"""DDIM Inversion and H-Space Capture."""
from __future__ import annotations

from comfy_api.latest import io

import dataclasses
import itertools
import math

from ..hspace_core import CFG_INVERSIONS, H_SOURCES, EditSchedule, ReconstructionReport, null_text_embeddings
from .comfy.fingerprint import model_fingerprint
from .comfy.checks import is_flow_transformer, is_pixel_unet
from .comfy.progress import progress_bar
from .layer.origin import XTOrigin
from .comfy.model import ComfyHSpaceModel
from .comfy.noise_levels import noise_levels
from .comfy.run import check_process_inputs, latent_out, run_in_comfy, sample_process, sweep_process
from .comfy.samplers import InversionRecord, capture_sampler, inversion_passes, inversion_sampler, run_h_edit
from .layer import (CATEGORY, DEFAULT_H_STORAGE, HSpaceNode, Trajectory, advanced, conditioning_inputs, convention_input, decode,
                    encoded_pixels, h_storage_inputs, h_storage_of, latent_nudging_input, latent_of, latent_x,
                    model_input, node_name, psnr, sampling_inputs, site_input, steps_input, with_origin, x_T_input)


class DDIMInversion(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceDDIMInversion", display_name="H-Space DDIM Inversion", category=CATEGORY,
            description="Deterministic DDIM inversion of an image (through the VAE) or a latent to x_T, with the h "
                        "trajectory along its reconstruction and the reconstruction's PSNR.",
            inputs=[
                model_input(),
                io.Image.Input("image", optional=True, tooltip="Image to invert (needs the VAE). Or connect a latent "
                                                              "(not both). Any size the model takes; SD's VAE "
                                                              "crops the sides to multiples of 8."),
                io.Vae.Input("vae", optional=True, tooltip="VAE that encodes the image ('pixel_space' for pixel U-Nets)."),
                io.Latent.Input("latent", optional=True, tooltip="Latent to invert, instead of an image."),
                *conditioning_inputs(),
                steps_input(),
                advanced(io.Int.Input("refine_iters", default=0, min=0, max=10,
                             tooltip="Fixed-point iterations per step; 1–2 cut the reconstruction error at extra cost.")),
                advanced(io.Combo.Input("cfg_inversion", options=list(CFG_INVERSIONS), default="negative_prompt", optional=True,
                                        tooltip="With cfg ≠ 1: 'negative_prompt' inverts at cfg 1 and makes every "
                                                "node that samples this x_T use the positive prompt as the negative "
                                                "(exact at any cfg); 'null_text' optimises a negative embedding per "
                                                "step so the result reconstructs at this cfg (slow: ~10 extra "
                                                "passes a step; U-Nets only); 'plain' inverts with the guided ε "
                                                "(drifts; add refine_iters).")),
                convention_input(),
                advanced(io.Combo.Input("h_source", options=list(H_SOURCES), default="inversion", optional=True,
                                        tooltip="Where the output trajectory's h is read: along the inversion "
                                                "(InjectFusion's content h) or along the reconstruction from x_T "
                                                "(what an edit from x_T sees).")),
                *h_storage_inputs(),
                site_input(),
                latent_nudging_input(),
            ],
            outputs=[
                io.Latent.Output("x_T", display_name="x_T", tooltip="The inverted noise latent; feed it to edit/inject/capture. "
                                 "It carries its grid and how to sample it under guidance."),
                Trajectory.Output("trajectory", tooltip="h at every step (from h_source)."),
                io.Latent.Output("reconstruction", tooltip="regenerate(x_T): compare it with the input."),
                io.Float.Output("psnr", tooltip="PSNR (dB) of the reconstruction against the input (image space with a VAE)."),
            ],
        )

    @classmethod
    def execute(cls, model, steps, cfg, edit_branches, refine_iters, cfg_inversion="negative_prompt",
                convention="seed", h_source="inversion", h_storage=DEFAULT_H_STORAGE, keep_h_from_t=0, image=None,
                vae=None, latent=None, positive=None, negative=None, site="middle",
                latent_nudging=1.0) -> io.NodeOutput:
        latent = latent_of(image, vae, latent)
        method = "plain" if math.isclose(cfg, 1.0) else cfg_inversion
        if method == "null_text" and is_pixel_unet(model):
            raise ValueError("null_text needs a text-conditioned model; pixel U-Nets take cfg 1 (or 'plain').")
        if method == "null_text" and is_flow_transformer(model):
            raise ValueError("H-Space DDIM Inversion: cfg_inversion 'null_text' optimises a negative embedding per "
                             "step against the DDIM (ᾱ) step of U-Nets (Mokady et al.), which flow matching does not "
                             "take; on this transformer set cfg_inversion to 'negative_prompt' (exact at any cfg) or "
                             "'plain' (with refine_iters).")
        storage = h_storage_of(h_storage, keep_h_from_t, model, node_name(cls.define_schema()))
        grid = noise_levels(model).grid(steps)
        # plain: the reconstruction (PSNR, h_source='reconstruction') at this cfg; guided: only h_source='reconstruction'
        # reads one here, at the inversion's cfg 1, down to keep_h_from_t (the guided one follows)
        regenerate = len(grid)
        if method != "plain":
            regenerate = sum(storage.keeps(t) for t in grid) if h_source == "reconstruction" else 0
        passes = inversion_passes(steps, convention, refine_iters, noise_levels(model))
        progress = progress_bar(passes + regenerate, model)

        check_process_inputs(model, latent["samples"], site)
        node, total = node_name(cls.define_schema()), passes + regenerate
        record, kept = InversionRecord(), storage if h_source == "inversion" else None
        done = itertools.count(1 + refine_iters, 1 + refine_iters)  # passes after each step (the first may be skipped)
        hs_for = ComfyHSpaceModel.for_node(cfg if method == "plain" else 1.0, negative if method == "plain" else None)
        inverter = inversion_sampler(node, refine_iters=refine_iters, site=site, record=record, convention=convention,
                                     hs_for=hs_for, h_storage=kept, latents_on="cpu", nudge=latent_nudging,
                                     handed_on=False)
        sample_process(model, inverter, noise_levels(model).sigmas_at(grid).float().flip(0), latent=latent["samples"],
                       positive=positive, negative=negative if method == "plain" else None,
                       cfg=cfg if method == "plain" else 1.0,
                       callback=lambda i, x0, x, _: progress(next(done), total, x0))
        inv = record.run.inversion(grid, kept, latent["samples"].shape[0])
        if regenerate:  # the reconstruction, recording h along it for h_source='reconstruction'
            sampler, captured = capture_sampler(node, storage if h_source == "reconstruction" else None, site=site,
                                                edit_branches=edit_branches, hs_for=hs_for, h_only=method != "plain")
            out = sweep_process(model, inv.x_T, lambda _: sampler, [None], steps, site=site, positive=positive,
                                negative=negative if method == "plain" else None, cfg=cfg if method == "plain" else 1.0,
                                edited=False, callbacks=lambda k: lambda i, x0, x, _: progress(passes + i + 1, total, x0))
            inv = dataclasses.replace(
                inv, trajectory=captured.trajectory(grid) if h_source == "reconstruction" else inv.trajectory,
                reconstruction=latent_x(model, {"samples": out}) if method == "plain" else None)
        negative_at = {}
        if method != "plain":
            negative_at, recon = _reconstruct_guided(model, inv, method, positive, negative, cfg, edit_branches)
            inv = dataclasses.replace(inv, reconstruction=recon)
        origin = XTOrigin(inv.timesteps, model_fingerprint(model), method, cfg, negative_at)
        reconstruction = latent_out(model, inv.reconstruction)
        quality = ReconstructionReport.compare(latent_x(model, latent), inv.reconstruction).psnr
        if image is not None:  # in image space, against what the VAE encoded
            quality = psnr(decode(vae, reconstruction), encoded_pixels(vae, image), 1.0)
        x_T = with_origin(latent_out(model, inv.x_T), origin)
        return io.NodeOutput(x_T, inv.trajectory, reconstruction, quality)


def _reconstruct(m, inv, progress=None):
    """regenerate(x_T) on the inversion's grid through the SAMPLERs' loop body (``run_h_edit``), inside
    ``run_in_comfy`` (the guided reconstructions): (x, None)."""
    schedule = EditSchedule.reconstruction(len(inv.timesteps), num_train_timesteps=m.levels.num_timesteps)
    return run_h_edit(m, inv.x_T, None, schedule, progress=progress), None


def _reconstruct_guided(model, inv, method, positive, negative, cfg, edit_branches):
    """Negative-prompt / null-text inversion from the guidance-1 pivot ``inv``: ({t: negative embedding} — found
    first, for null-text, by ``hspace_core.null_text_embeddings`` —, the guided reconstruction)."""
    x_T = latent_out(model, inv.x_T)["samples"]
    if method == "null_text":
        def body(m, x):
            found = null_text_embeddings(m, inv, progress=progress_bar(len(inv.timesteps), model))
            return found, _reconstruct(m.with_negative(found), inv, progress=progress_bar(len(inv.timesteps), model))[0]

        return run_in_comfy(model, x_T, body, positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches,
                            steps=len(inv.timesteps))
    recon, _ = run_in_comfy(model, x_T, lambda m, x: _reconstruct(m, inv, progress=progress_bar(len(inv.timesteps), model)),
                            positive=positive, negative=positive, cfg=cfg, edit_branches=edit_branches,
                            steps=len(inv.timesteps))
    return {}, recon


class Capture(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceCapture", display_name="H-Space Capture", category=CATEGORY,
            description="Run the deterministic reverse process from x_T and record h_t (the U-Net middle-block "
                        "output, or a decoder level's: site) at every step; also returns the generated latent.",
            inputs=[model_input(), x_T_input(tooltip="Start latent: an inverted x_T or fresh noise."),
                    *conditioning_inputs(), steps_input(), *h_storage_inputs(), site_input()],
            outputs=[Trajectory.Output("trajectory", tooltip="h at every step."),
                     io.Latent.Output("latent", tooltip="The generated (reconstructed) latent.")],
        )

    @classmethod
    def execute(cls, model, x_T, steps, cfg, edit_branches, h_storage=DEFAULT_H_STORAGE, keep_h_from_t=0,
                positive=None, negative=None, site="middle") -> io.NodeOutput:
        negative, negative_at = sampling_inputs(x_T, cfg, positive, negative)
        node = node_name(cls.define_schema())
        sampler, record = capture_sampler(node, h_storage_of(h_storage, keep_h_from_t, model, node),
                                          site=site, edit_branches=edit_branches,
                                          hs_for=ComfyHSpaceModel.for_node(cfg, negative, negative_at))
        x0 = sweep_process(model, x_T, lambda _: sampler, [None], steps, site=site, positive=positive,
                           negative=negative, cfg=cfg, edited=False)
        return io.NodeOutput(record.trajectory(noise_levels(model).grid(steps)), {"samples": x0})
