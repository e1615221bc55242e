"""H-Space Block Vitality: Stable Flow's vital-layer measurement on the user's own transformer (hspace_core.vitality)."""
from __future__ import annotations

import json
import logging

from comfy_api.latest import io

from ..hspace_core.vitality import block_vitality, vitality_plot
from .comfy.dit import TRANSFORMERS, dit_family
from .comfy.vitality import measure
from .layer import CATEGORY, HSpaceNode, advanced, decode, lpips_by_name, seed_input

LPIPS_BACKBONES = ["alex", "vgg", "alex (random weights, testing only)"]
log = logging.getLogger("hspace")


class BlockVitality(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceBlockVitality", display_name="H-Space Block Vitality", category=f"{CATEGORY}/transformers",
            description="Stable Flow's vital layers on your own Flux or SD3.x MODEL: generates once plainly and once "
                        "per block with that block bypassed (same noise, sigmas and guidance, ComfyUI's euler), and "
                        "measures how much each bypass changes the result: LPIPS on the decoded images when a VAE is "
                        "connected, else the relative latent distance. The blocks that change it most are vital. "
                        "Costs (blocks + 1) generations: use few steps and a small image.",
            inputs=[io.Model.Input("model", tooltip=f"A transformer MODEL: {TRANSFORMERS}."),
                    io.Conditioning.Input("positive", tooltip="The prompt (Flux: with FluxGuidance)."),
                    io.Latent.Input("latent", tooltip="The start latent, e.g. EmptySD3LatentImage (its size is the "
                                                      "image's)."),
                    io.Sigmas.Input("sigmas", tooltip="The sigmas every generation runs (e.g. BasicScheduler)."),
                    seed_input("RandomNoise's seed: the same noise for the plain and every bypassed generation."),
                    io.Conditioning.Input("negative", optional=True,
                                          tooltip="Negative prompt for real CFG (SD3.x); leave empty with cfg 1 "
                                                  "(Flux's distilled guidance)."),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, optional=True,
                                   tooltip="CFG scale; 1 runs the positive prompt alone (Flux)."),
                    io.Vae.Input("vae", optional=True,
                                 tooltip="Connect to measure LPIPS on decoded images (as Stable Flow measures a "
                                         "perceptual change); without it the change is the relative latent distance."),
                    io.Int.Input("vital_count", default=0, min=0, max=1000, optional=True,
                                 tooltip="Mark this many blocks vital, those with the largest changes; 0 uses "
                                         "vital_fraction instead."),
                    io.Float.Input("vital_fraction", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                                   tooltip="With vital_count 0: a block is vital when its change is at least this "
                                           "fraction of the largest change."),
                    advanced(io.Combo.Input("lpips_backbone", options=LPIPS_BACKBONES, default="alex", optional=True,
                                            tooltip="LPIPS network (with a VAE); pretrained weights download once. "
                                                    "The random option is for offline tests."))],
            outputs=[io.Image.Output(display_name="plot", tooltip="Bars of the change per block; vital blocks red."),
                     io.String.Output(display_name="report",
                                      tooltip="JSON: the metric, each block's change, the vital blocks, the ranking."),
                     io.String.Output(display_name="vital_sites",
                                      tooltip="The vital blocks as comma-separated site names (double.0, single.9, "
                                              "joint.3, …) for the nodes that take block sites.")],
        )

    @classmethod
    def execute(cls, model, positive, latent, sigmas, seed, negative=None, cfg=1.0, vae=None, vital_count=0,
                vital_fraction=0.5, lpips_backbone="alex") -> io.NodeOutput:
        if dit_family(model.get_model_object("diffusion_model")) is None:
            raise ValueError(f"Block vitality bypasses a transformer's blocks; this MODEL is not one of {TRANSFORMERS}: "
                             "connect a Flux or SD3.x MODEL.")
        if negative is None and cfg != 1.0:
            raise ValueError(f"cfg is {cfg:g} but no negative is connected: connect a negative prompt, or set cfg 1.")
        if len(sigmas) < 2:
            raise ValueError("sigmas holds no step: connect a scheduler's sigmas (at least one step).")
        if vae is None:
            distance, metric = None, "relative latent distance ‖x_bypassed − x‖ / ‖x‖"
            log.info("h-space: Block Vitality has no VAE connected, so it measures the %s (connect a VAE for LPIPS).",
                     metric)
        else:
            lpips = lpips_by_name(lpips_backbone)

            def pixels(samples):
                return decode(vae, {"samples": samples})[..., :3].movedim(-1, 1) * 2 - 1

            distance, metric = (lambda a, b: lpips(pixels(a), pixels(b)).mean()), f"LPIPS ({lpips_backbone})"
        changes = measure(model, positive, negative if negative is not None else positive, latent, sigmas, seed,
                          cfg, distance)
        report = block_vitality(changes, metric, vital_count, vital_fraction)
        return io.NodeOutput(vitality_plot(report), json.dumps(report.to_json(), indent=1), ", ".join(report.vital))
