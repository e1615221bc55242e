"""The h-space methods as ComfyUI SAMPLERs (SamplerCustomAdvanced, any guider, any scheduler) and as a MODEL patch."""
from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from ..hspace_core import HStorage, check_fingerprint, content_injection, gamma_ramp
from ..hspace_core.direction_algebra import strength_edit
from ..hspace_core.settings import grid_label
from ..hspace_core.sites import check_same_site
from .comfy.run import latent_out
from .layer.origin import XTOrigin
from .comfy.patches import patched_with_h_shift
from .comfy.samplers import InversionRecord, h_edit_sampler, inversion_sampler
from .layer import (BOOST_SEED_RULE, OTHER_MODEL_HINT, STRENGTH_RANGE, CATEGORY, Boost, DirectionType, HSpaceNode,
                    Trajectory, advanced, allow_other_model_input, convention_input, edit_window, gamma_end_of,
                    latent_nudging_input, latent_x, mixing_inputs, model_input, node_name, percent_inputs,
                    sampler_window_inputs, seed_input, seed_of, site_input, with_origin)

SAMPLERS = f"{CATEGORY}/samplers"
Record = io.Custom("HSPACE_INVERSION_RECORD")


def edit_branches_input():
    return advanced(io.Combo.Input("edit_branches", options=["cond", "uncond", "both"], default="cond",
                                   tooltip="Which guidance branch's h is edited: the positive conditioning's ('cond'), "
                                           "the negative's, or both (other guiders' extra conds count as uncond)."))


def _window_for(node, window, t_edit, start_percent, end_percent):
    return lambda patcher: edit_window(node, patcher, window, t_edit, start_percent, end_percent)


class AsyrpSampler(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceAsyrpSampler", display_name="H-Space Asyrp Sampler", category=SAMPLERS,
            description="Asyrp as a SAMPLER for SamplerCustomAdvanced: over the sigmas and the guider it is given, "
                        "h̃ = h + strength·Δh inside the edit window with the asymmetric step (x0 from the edited "
                        "prediction, the direction from the original; DDIM is Euler in σ space). From an inverted x_T: "
                        "H-Space x_T to Native Sampler's NOISE + SIGMAS, or the H-Space Inversion Sampler's latent with DisableNoise.",
            inputs=[
                DirectionType.Input("direction", tooltip="An h-space direction (from examples, combined or loaded)."),
                io.Float.Input("strength", default=1.0, min=STRENGTH_RANGE[0], max=STRENGTH_RANGE[1], step=0.05,
                               tooltip="How far to move along the direction; 0 is the plain Euler / DDIM sampler."),
                *sampler_window_inputs(),
                Boost.Input("boost", optional=True, tooltip="H-Space Quality Boost: stochastic steps below t_boost. "
                                                            + BOOST_SEED_RULE),
                seed_input("Seed for the quality boost's noise. " + BOOST_SEED_RULE),
                edit_branches_input(),
                allow_other_model_input(),
            ],
            outputs=[io.Sampler.Output("sampler", tooltip="Connect to SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    def execute(cls, direction, strength, window, t_edit, start_percent, end_percent, seed, edit_branches="cond",
                boost=None, allow_other_model=False) -> io.NodeOutput:

        def edit_for(num_steps, hs, window_timesteps):
            check_same_site(direction.site, hs.site, "direction")
            if not allow_other_model:
                check_fingerprint(direction.fingerprint, hs.fingerprint, "direction", hint=OTHER_MODEL_HINT)
            return strength_edit(direction, strength, num_steps)  # None at 0: exactly the plain sampler

        windowed = _window_for(node_name(cls.define_schema()), window, t_edit, start_percent, end_percent)
        return io.NodeOutput(h_edit_sampler("H-Space Asyrp Sampler", edit_for, windowed, edit_branches=edit_branches,
                                            site=direction.site, boost=boost, seed=seed_of(seed, boost)))


def content_check(content, node: str):
    """Refuse sigmas whose edited timesteps the content trajectory has no h at, naming what to change: Slerp
    Content Inject's rule (``HTrajectory.require_timesteps`` on the window's steps), so a trajectory kept only
    from keep_h_from_t serves both where the window stays above it."""

    def check(window_timesteps, hs):
        check_same_site(content.site, hs.site, "content h trajectory")
        check_fingerprint(content.fingerprint, hs.fingerprint, "content h trajectory")
        try:
            content.require_timesteps(window_timesteps, "this sampler's edit window", other_grid=(
                "give this sampler the sigmas the content was captured on (the same scheduler and steps), or capture "
                "the content on these sigmas"), widget=hs.levels.widget_at_most)
        except ValueError as refused:
            raise ValueError(f"{node}: {refused}") from None

    return check


class ContentInjectionSampler(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceContentInjectionSampler", display_name="H-Space Content Injection Sampler", category=SAMPLERS,
            description="DiffStyle / InjectFusion as a SAMPLER: from the style image's x_T, h̃ = Slerp(h, "
                        "h_c·‖h‖/‖h_c‖, γ) inside the edit window, with the asymmetric step, under any guider. The "
                        "content trajectory must be captured on these sigmas.",
            inputs=[
                Trajectory.Input("content", tooltip="h trajectory of the content image."),
                io.Float.Input("gamma", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Content strength γ at t = T: 0 keeps the style image, 1 takes the content's h."),
                advanced(io.Float.Input("gamma_end", default=-1.0, min=-1.0, max=1.0, step=0.01,
                                        tooltip="γ at the window's end (linear in t in between); −1 keeps γ constant.")),
                advanced(io.Int.Input("stride", default=1, min=1, max=50,
                                      tooltip="Inject at every k-th step of the window only.")),
                *sampler_window_inputs(),
                *mixing_inputs(),
                seed_input("Seed for the quality boost's noise. " + BOOST_SEED_RULE),
                edit_branches_input(),
            ],
            outputs=[io.Sampler.Output("sampler", tooltip="Connect to SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    def execute(cls, content, gamma, gamma_end, stride, window, t_edit, start_percent, end_percent, mode, per_channel,
                seed, edit_branches="cond", mask=None, calibration=None, boost=None) -> io.NodeOutput:
        end = gamma_end_of(gamma, gamma_end)
        windowed = _window_for(node_name(cls.define_schema()), window, t_edit, start_percent, end_percent)

        def edit_for(num_steps, hs, window_timesteps):
            if gamma == 0 and end == 0:  # γ 0 injects nothing: exactly the plain sampler, as strength 0 is
                return None
            # the ramp ends where the nodes' does (edit_schedule): at t_edit's table entry (the window's, logged
            # there), or a percent window's lowest edited step
            t_end = (hs.levels.widget_timestep(t_edit, "t_edit") if window == "t_edit"
                     else min(window_timesteps, default=t_edit))
            gamma_t = gamma_ramp(gamma, end, t_end, hs.schedule.num_train_timesteps - 1)
            return content_injection(content, gamma_t, mask=mask, per_channel=per_channel, mode=mode)

        omega = calibration.omega if calibration is not None else None
        return io.NodeOutput(h_edit_sampler("H-Space Content Injection Sampler", edit_for, windowed,
                                            edit_branches=edit_branches, site=content.site, boost=boost,
                                            seed=seed_of(seed, boost), omega=omega, edit_every=stride,
                                            check=content_check(content, "H-Space Content Injection Sampler")))


class InversionSampler(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceInversionSampler", display_name="H-Space Inversion Sampler", category=SAMPLERS,
            description="DDIM inversion as a SAMPLER: run it in SamplerCustomAdvanced on FLIPPED sigmas (FlipSigmas) "
                        "with DisableNoise and the image's latent; the output latent is x_T at σ_max, ready for a "
                        "second SamplerCustomAdvanced (DisableNoise, the unflipped sigmas). 'H-Space Inverted x_T' "
                        "turns it into the pack's x_T and the content h trajectory, both carrying these sigmas.",
            inputs=[
                advanced(io.Int.Input("refine_iters", default=0, min=0, max=20,
                                      tooltip="Fixed-point iterations per step: each makes the step the exact "
                                              "inverse of the reverse step (one more U-Net pass each).")),
                site_input(),
                convention_input(),
                latent_nudging_input(),
            ],
            outputs=[io.Sampler.Output("sampler", tooltip="Connect to SamplerCustomAdvanced's sampler."),
                     Record.Output("inversion", tooltip="Connect to 'H-Space Inverted x_T' with the sampler's output.")],
        )

    @classmethod
    def execute(cls, refine_iters, site="middle", convention="seed", latent_nudging=1.0) -> io.NodeOutput:
        record = InversionRecord()
        return io.NodeOutput(inversion_sampler("H-Space Inversion Sampler", refine_iters=refine_iters, site=site,
                                               record=record, convention=convention, nudge=latent_nudging), record)


class InvertedXT(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceInvertedXT", display_name="H-Space Inverted x_T", category=SAMPLERS,
            description="The H-Space Inversion Sampler's result as the pack's types: x_T (for H-Space Asyrp Edit, Slerp Content "
                        "Inject, …; it carries the timesteps of the sigmas it was inverted on) and the h trajectory "
                        "along the inversion (InjectFusion's content h).",
            inputs=[model_input(),
                    io.Latent.Input("latent", tooltip="SamplerCustomAdvanced's output with the H-Space Inversion Sampler."),
                    Record.Input("inversion", tooltip="The H-Space Inversion Sampler's second output.")],
            outputs=[io.Latent.Output("x_T", tooltip="x_T in the pack's convention (unit variance)."),
                     Trajectory.Output("trajectory", tooltip="h at each timestep of the inversion.")],
        )

    @classmethod
    def execute(cls, model, latent, inversion) -> io.NodeOutput:
        x, run = latent_x(model, latent), inversion.run
        if run is None:  # SamplerCustomAdvanced calls no sampler on empty sigmas: it returns the latent as it was
            raise ValueError("H-Space Inverted x_T: the connected H-Space Inversion Sampler never ran: the sigmas of "
                             "its SamplerCustomAdvanced are empty (SamplerCustomAdvanced then returns the image's "
                             "latent unchanged, without calling the sampler). Give it FlipSigmas of a scheduler's "
                             "sigmas with at least one step.")
        if run.x_T.shape != x.shape or not torch.allclose(run.latent_view().to(x), x, rtol=1e-4, atol=1e-4):
            raise ValueError("H-Space Inverted x_T: this latent is not the last output of the connected Inversion "
                             "Sampler: connect SamplerCustomAdvanced's 'output' from the run with that sampler (if "
                             "that run's sigmas are empty, SamplerCustomAdvanced returns its latent unchanged without "
                             "running the sampler: give it at least one step).")
        made_with = grid_label(tuple(reversed(run.timesteps)), sigmas=run.sigmas)
        trajectory = run.trajectory(HStorage(), x.shape[0], made_with)
        logging.info("h-space: x_T inverted on %d sigmas (σ_max %.3f, %s convention).", len(run.sigmas),
                     run.sigmas[-1], run.convention)
        origin = XTOrigin(trajectory.timesteps, run.fingerprint, made_with=made_with)
        return io.NodeOutput(with_origin(latent_out(model, run.x_T_vp().to(x)), origin), trajectory)


class HShiftPatch(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceHShiftPatch", display_name="H-Space Shift (model patch)", category=SAMPLERS,
            description="The simplest use, shaped like FreeU: a MODEL whose h is h + strength·Δh inside a σ window, "
                        "for a plain KSampler. This is the symmetric simplification (Haas et al.): the edited h drives "
                        "both parts of every step, not Asyrp's asymmetric process (use the H-Space Asyrp Sampler for that).",
            inputs=[model_input(),
                    DirectionType.Input("direction", tooltip="An h-space direction."),
                    io.Float.Input("strength", default=1.0, min=STRENGTH_RANGE[0], max=STRENGTH_RANGE[1], step=0.05,
                                   tooltip="How far to move along the direction at every step in the window."),
                    *percent_inputs("shift"),
                    edit_branches_input(), allow_other_model_input()],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched MODEL (a clone; the input is unchanged).")],
        )

    @classmethod
    def execute(cls, model, direction, strength, start_percent, end_percent, edit_branches="cond",
                allow_other_model=False) -> io.NodeOutput:
        window = edit_window(node_name(cls.define_schema()), model, "percent", 0, start_percent, end_percent)
        return io.NodeOutput(patched_with_h_shift(model, direction, strength, window, edit_branches))
