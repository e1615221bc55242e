"""H-Space Slerp Content Inject (DiffStyle / InjectFusion), H-Space Style Calibrate, H-Space Quality Boost, Interpolate."""
from __future__ import annotations

from comfy_api.latest import io

import dataclasses

import torch

from ..hspace_core import EditSchedule, BoostSettings, StyleCalibration, gamma_ramp
from ..hspace_core.processes import injection_edit, interpolation_frames, interpolation_storage
from ..hspace_core.progress import offset
from .comfy.memory import rows_run
from .comfy.model import is_pixel_unet, latent_out, run_in_comfy
from .comfy.progress import progress_bar
from .comfy.samplers import capture_h, run_h_edit
from .layer import (BOOST_SEED_RULE, CATEGORY, GAMMAS, Boost, Calibration, HSpaceNode, Trajectory, advanced,
                    boost_window_inputs, conditioning_inputs, edit_schedule, gamma_end_of, latent_x, mixing_inputs,
                    model_input, node_name, sampling_inputs, seed_input, seed_of, steps_input, sweep, sweep_text,
                    t_edit_input, values_input, values_of, window_inputs, x_T_input)

def check_content_batch(content, style_x_T: dict) -> None:
    """One content image for all style images, or one per style image (said in the widgets' words)."""
    styles, contents = style_x_T["samples"].shape[0], content.batch_size
    if contents not in (1, styles):
        raise ValueError(f"content holds {contents} images for {styles} style image(s) in style_x_T: connect one "
                         f"content image, or {styles} (one per style image).")


class SlerpContentInject(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceSlerpContentInject", display_name="H-Space Slerp Content Inject", category=f"{CATEGORY}/mix",
            description="DiffStyle / InjectFusion: generate from the style image's x_T while injecting the content "
                        "image's h with h̃ = Slerp(h, h_c·‖h‖/‖h_c‖, γ) for t ≥ t_edit. A mask limits the mix to a "
                        "region; H-Space Style Calibrate and H-Space Quality Boost plug in.",
            inputs=[
                model_input(),
                x_T_input("style_x_T", "x_T of the style image (DDIM Inversion)."),
                Trajectory.Input("content", tooltip="h trajectory of the content image (DDIM Inversion or Capture)."),
                io.Float.Input("gamma", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Content strength γ at t = T: 0 keeps the style image, 1 takes the content's h."),
                advanced(io.Float.Input("gamma_end", default=-1.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="γ at t = t_edit (a percent window: its lowest edited step), in [0, 1]; γ varies linearly in between. −1 keeps γ constant (other negative values are refused). A "
                                       "rising γ (e.g. 0 → 0.8) moves more of the content's layout and less of "
                                       "its colours than a constant one.")),
                values_input("gamma_sweep", GAMMAS,
                             "Comma-separated γ values (e.g. 0.2, 0.4, 0.6): returns a batch, one mix per value; "
                             "decode it and connect 'sweep' to H-Space Label Sweep Grid for a labelled grid. Overrides 'gamma' "
                             "when not empty (gamma_end still ends each ramp)"),
                advanced(io.Int.Input("stride", default=1, min=1, max=50,
                             tooltip="Inject at every k-th step of [T, t_edit] only.")),
                steps_input(), t_edit_input(),
                *mixing_inputs(),
                seed_input("Seed for the stochastic (quality boost) steps. " + BOOST_SEED_RULE),
                *conditioning_inputs(),
                *window_inputs(),
            ],
            outputs=[io.Latent.Output("latent", tooltip="The mixed latent(s): batch × γ values, γ-major."),
                     io.String.Output("sweep", tooltip="The γ values run, in batch order: connect to Label Sweep "
                                                       "Grid's values.")],
        )

    @classmethod
    def execute(cls, model, style_x_T, content, gamma, gamma_end, stride, steps, t_edit, mode, per_channel, seed,
                cfg, edit_branches, gamma_sweep="", mask=None, calibration=None, boost=None, positive=None,
                negative=None, window="t_edit", start_percent=0.0, end_percent=0.6) -> io.NodeOutput:
        check_content_batch(content, style_x_T)
        gammas = values_of(gamma_sweep, "gamma_sweep", GAMMAS) or [gamma]
        schedule = edit_schedule(steps, t_edit, boost, model, window, start_percent, end_percent,
                                 node_name(cls.define_schema()))
        omega = calibration.omega if calibration is not None else None
        seed = seed_of(seed, boost)
        negative, negative_at = sampling_inputs(style_x_T, cfg, positive, negative)

        def mix(m, x, g, progress):  # the ramp ends at the schedule's t_edit: a percent window's lowest edited t
            gamma_t = gamma_ramp(g, gamma_end_of(g, gamma_end), schedule.t_edit, m.schedule.num_train_timesteps - 1)
            hook = injection_edit(m, content, gamma_t, schedule, stride=stride, mask=mask, per_channel=per_channel,
                                  mode=mode)
            return run_h_edit(m, x, hook, schedule, seed=seed, progress=progress, edit_every=stride, omega=omega)

        out = run_in_comfy(
            model, style_x_T["samples"], lambda m, x: sweep(gammas, steps, lambda g, p: mix(m, x, g, p), model),
            positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches, seed=seed,
            negative_at=negative_at, site=content.site, steps=steps, rows=rows_run(model, style_x_T["samples"].shape[0], edited=True))
        return io.NodeOutput(latent_out(model, out), sweep_text(gammas))


class StyleCalibrate(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceStyleCalibrate", display_name="H-Space Style Calibrate", category=f"{CATEGORY}/mix",
            description="InjectFusion's style calibration: instead of stepping with the injected ε, move x_t by "
                        "dx = √ᾱ·dP + ω·√(1−ᾱ)·dε and step with the original network. ω = 0 turns calibration "
                        "off (the plain injection, as the official code); larger ω pulls the result back toward the "
                        "style image, and ω = 1 still keeps about a third of the injection's change (it cancels "
                        "only up to the renormalisation of P_t's std).",
            inputs=[io.Float.Input("omega", default=0.3, min=0.0, max=1.0, step=0.01,
                                   tooltip="ω in [0, 1]: 0 = off; on the bundled model the distance to the style "
                                           "reconstruction is 0.49 / 0.41 / 0.25 / 0.18 (RMS) at ω = 0 / 0.3 / 0.7 / 1.")],
            outputs=[Calibration.Output("calibration", tooltip="Connect to H-Space Slerp Content Inject.")],
        )

    @classmethod
    def execute(cls, omega) -> io.NodeOutput:
        return io.NodeOutput(StyleCalibration(omega))


class QualityBoost(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceQualityBoost", display_name="H-Space Quality Boost", category=f"{CATEGORY}/mix",
            description="Asyrp's quality boosting: stochastic DDIM steps (η) below t_boost (or after a start percent "
                        "of the schedule) add fine detail. Seeded.",
            inputs=[io.Int.Input("t_boost", default=200, min=0, max=999,
                                 tooltip="window = t_boost: steps with t < t_boost are stochastic. Must not exceed "
                                         "t_edit."),
                    io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="η: 1 is DDPM noise."),
                    seed_input("Seed for the stochastic steps. It replaces the seed of the H-Space Asyrp Edit or Slerp "
                               "Content Inject node this boost is connected to."),
                    *boost_window_inputs()],
            outputs=[Boost.Output("boost", tooltip="Connect to H-Space Asyrp Edit or H-Space Slerp Content Inject.")],
        )

    @classmethod
    def execute(cls, t_boost, eta, seed, window="t_boost", boost_start_percent=0.8) -> io.NodeOutput:
        return io.NodeOutput(BoostSettings(t_boost, eta, seed, boost_start_percent if window == "percent" else None))


class Interpolate(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceInterpolate", display_name="H-Space Interpolate", category=f"{CATEGORY}/mix",
            description="Diffusion Autoencoders' interpolation: Slerp between two inverted x_T and Lerp between their "
                        "h trajectories; returns a batch of frames from A to B.",
            inputs=[model_input(),
                    x_T_input("x_T_a", "Inverted latent of image A."),
                    x_T_input("x_T_b", "Inverted latent of image B (same size)."),
                    io.Int.Input("frames", default=5, min=2, max=64, tooltip="Number of frames, A and B included."),
                    steps_input(), t_edit_input(default=200),
                    advanced(io.Boolean.Input("clip_x0", default=False,
                                              tooltip="Clip each predicted x0 to [-1, 1] (pixel U-Nets only, never SD "
                                                      "latents): middle frames start from an x_T that inverts no "
                                                      "image, and clipping keeps them from saturating.")),
                    *conditioning_inputs(),
                    *window_inputs()],
            outputs=[io.Latent.Output("latent", tooltip="Frames, frame-major.")],
        )

    @classmethod
    def execute(cls, model, x_T_a, x_T_b, frames, steps, t_edit, cfg, edit_branches, clip_x0=False, positive=None,
                negative=None, window="t_edit", start_percent=0.0, end_percent=0.6) -> io.NodeOutput:
        if x_T_a["samples"].shape != x_T_b["samples"].shape:
            raise ValueError(f"x_T_a {tuple(x_T_a['samples'].shape)} and x_T_b {tuple(x_T_b['samples'].shape)} differ: "
                             "invert images of the same size.")
        if clip_x0 and not is_pixel_unet(model):
            raise ValueError("clip_x0 is for pixel U-Nets (images in [-1, 1]); latents of SD models must not be clipped.")
        schedule = edit_schedule(steps, t_edit, None, model, window, start_percent, end_percent,
                                 node_name(cls.define_schema()))
        schedule = dataclasses.replace(schedule, clip_x0=1.0 if clip_x0 else None)
        negative, negative_at = sampling_inputs(x_T_a, cfg, positive, negative)  # x_T_b's is the same (base node)
        x_b = latent_x(model, x_T_b)
        runs = frames + 2  # two captures, then a run per frame
        progress = progress_bar(steps * runs, model)

        def body(m, x_a):  # interpolate's captures and frames, each run through the σ loop
            part = lambda k: offset(progress, k * steps, runs * steps)  # noqa: E731  (run k of the whole)
            storage, recon = interpolation_storage(schedule), EditSchedule.reconstruction(steps)
            ends = (x_a, x_b.to(x_a))
            captured = [capture_h(m, x, recon, storage, h_only=True, progress=part(k))[0] for k, x in enumerate(ends)]
            pairs = interpolation_frames(m, *ends, *captured, frames, schedule)
            return torch.cat([run_h_edit(m, x_T, mix, frame_schedule, progress=part(2 + k))
                              for k, (x_T, mix, frame_schedule) in enumerate(pairs)])

        out = run_in_comfy(model, x_T_a["samples"], body, positive=positive, negative=negative, cfg=cfg,
                           edit_branches=edit_branches, negative_at=negative_at, steps=steps,
                           rows=rows_run(model, x_T_a["samples"].shape[0], edited=True))
        return io.NodeOutput(latent_out(model, out))
