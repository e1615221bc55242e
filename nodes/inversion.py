"""DDIM Inversion and H-Space Capture."""
from __future__ import annotations

from comfy_api.latest import io

from ..hspace_core import invert
from .comfy_model import latent_out, progress_bar, run_in_comfy
from .common import (CATEGORY, advanced, Trajectory, check_inputs, conditioning_inputs, decode, encoded_pixels, latent_of,
                     model_input, psnr, steps_input)


class DDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceDDIMInversion", display_name="DDIM Inversion (H-Space)", category=CATEGORY,
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
            ],
            outputs=[
                io.Latent.Output("x_T", display_name="x_T", tooltip="The inverted noise latent; feed it to edit/inject/capture."),
                Trajectory.Output("trajectory", tooltip="h at every step of the reconstruction from x_T."),
                io.Latent.Output("reconstruction", tooltip="regenerate(x_T): compare it with the input."),
                io.Float.Output("psnr", tooltip="PSNR (dB) of the reconstruction against the input (image space with a VAE)."),
            ],
        )

    @classmethod
    def execute(cls, model, steps, cfg, edit_branches, refine_iters, image=None, vae=None, latent=None,
                positive=None, negative=None) -> io.NodeOutput:
        check_inputs(cls, locals())
        latent = latent_of(image, vae, latent)
        progress = progress_bar(steps * (2 + refine_iters))
        inv = run_in_comfy(model, latent["samples"],
                           lambda m, x: invert(m, x, steps, refine_iters=refine_iters, progress=progress),
                           positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches)
        reconstruction = latent_out(model, inv.reconstruction)
        quality = inv.report.psnr
        if image is not None:  # in image space, against what the VAE encoded
            quality = psnr(decode(vae, reconstruction), encoded_pixels(vae, image), 1.0)
        return io.NodeOutput(latent_out(model, inv.x_T), inv.trajectory, reconstruction, quality)


class Capture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceCapture", display_name="H-Space Capture", category=CATEGORY,
            description="Run the deterministic reverse process from x_T and record h_t (the U-Net middle-block "
                        "output) at every step; also returns the generated latent.",
            inputs=[model_input(), io.Latent.Input("x_T", tooltip="Start latent: an inverted x_T or fresh noise."),
                    *conditioning_inputs(), steps_input()],
            outputs=[Trajectory.Output("trajectory", tooltip="h at every step."),
                     io.Latent.Output("latent", tooltip="The generated (reconstructed) latent.")],
        )

    @classmethod
    def execute(cls, model, x_T, steps, cfg, edit_branches, positive=None, negative=None) -> io.NodeOutput:
        from ..hspace_core import EditSchedule, run_reverse

        check_inputs(cls, locals())
        def body(m, x):
            sched = EditSchedule(steps, t_edit=0, t_boost=0)
            return run_reverse(m, x, sched, record_h=True, progress=progress_bar(steps))

        result = run_in_comfy(model, x_T["samples"], body, positive=positive, negative=negative, cfg=cfg,
                              edit_branches=edit_branches)
        return io.NodeOutput(result.trajectory, latent_out(model, result.x0))
