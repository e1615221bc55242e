"""Auto Schedule: Asyrp's LPIPS rule for t_edit and t_boost."""
from __future__ import annotations

from comfy_api.latest import io

from ..hspace_core import find_t_edit_t_boost
from .comfy.run import run_in_comfy
from .comfy.noise_levels import noise_levels
from .comfy.progress import progress_bar
from .layer import (CATEGORY, HSpaceNode, advanced, conditioning_inputs, latent_of, lpips_by_name, model_input,
                    seed_input)


class AutoSchedule(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceAutoSchedule", display_name="H-Space Auto Schedule", category=CATEGORY,
            description="Asyrp's rule: t_edit where LPIPS(x, P_t) reaches 0.33 (× the source/target text cosine when "
                        "given) and t_boost where LPIPS(x, x_t) reaches 1.2, measured on this model and image. "
                        "Connect t_edit / t_boost to the other nodes' t_edit / t_boost inputs (any model, Flux and SD3 "
                        "included), or (window = percent) edit_end_percent / boost_start_percent to their "
                        "end_percent / boost_start_percent.",
            inputs=[
                model_input(),
                io.Image.Input("image", optional=True, tooltip="The image (needs the VAE), or connect a latent."),
                io.Vae.Input("vae", optional=True, tooltip="VAE: encodes the image and decodes P_t and x_t for LPIPS."),
                io.Latent.Input("latent", optional=True, tooltip="Latent instead of an image (not both; still needs the "
                                                                 "VAE for LPIPS)."),
                advanced(io.Float.Input("edit_threshold", default=0.33, min=0.01, max=2.0, step=0.01,
                               tooltip="LPIPS(x, P_t) that defines t_edit.")),
                advanced(io.Float.Input("boost_threshold", default=1.2, min=0.01, max=2.0, step=0.01,
                               tooltip="LPIPS(x, x_t) that defines t_boost.")),
                advanced(io.Float.Input("text_cosine", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="CLIP cosine between source and target texts; scales the t_edit threshold.")),
                advanced(io.Int.Input("probes", default=25, min=2, max=1000,
                             tooltip="Number of timesteps probed (one U-Net pass each).")),
                advanced(io.Combo.Input("lpips_backbone", options=["alex", "vgg", "alex (random weights, testing only)"],
                               default="alex",
                               tooltip="LPIPS network; pretrained weights download once. The random option is for offline tests.")),
                seed_input(),
                *conditioning_inputs(),
            ],
            outputs=[io.Int.Output("t_edit", tooltip="Edit interval is [T, t_edit], as a t_edit widget value (0 … "
                                                     "999; on Flux's 10000-entry σ table, the widget value that "
                                                     "names the found entry)."),
                     io.Int.Output("t_boost", tooltip="Quality boosting below this t (a t_boost widget value, as "
                                                      "t_edit)."),
                     io.Float.Output("edit_end_percent", tooltip="t_edit as a percent window's end (start 0): the "
                                                                 "window holds the steps at t ≥ t_edit."),
                     io.Float.Output("boost_start_percent", tooltip="t_boost as the Quality Boost's "
                                                                    "boost_start_percent (window = percent).")],
        )

    @classmethod
    def execute(cls, model, edit_threshold, boost_threshold, text_cosine, probes, lpips_backbone, seed, cfg,
                edit_branches, image=None, vae=None, latent=None, positive=None, negative=None) -> io.NodeOutput:
        if vae is None:
            raise ValueError("Connect the VAE ('pixel_space' for pixel U-Nets): LPIPS is measured on decoded images.")
        latent = latent_of(image, vae, latent)
        distance = lpips_by_name(lpips_backbone)

        def decode(x):
            images = vae.decode(model.model.process_latent_out(x.float()))
            return images[..., :3].movedim(-1, 1) * 2 - 1

        result = run_in_comfy(
            model, latent["samples"],
            lambda m, x: find_t_edit_t_boost(m, x, distance=distance, decode=decode, text_cosine=text_cosine,
                                             edit_threshold=edit_threshold, boost_threshold=boost_threshold,
                                             num_probes=probes, seed=seed, progress=progress_bar(probes, model)),
            positive=positive, negative=negative, cfg=cfg, edit_branches=edit_branches)
        levels = noise_levels(model)  # the probes are entries a widget names, so t widgets read them back exactly
        return io.NodeOutput(levels.widget_t(result.t_edit), levels.widget_t(result.t_boost),
                             levels.percent_at_timestep(result.t_edit), levels.percent_at_timestep(result.t_boost))

