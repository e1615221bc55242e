"""H-Space Asyrp Edit and the direction nodes (from examples, combine, save, load)."""
from __future__ import annotations

from comfy_api.latest import io

from ..hspace_core import Direction, combine as combine_linear, direction_from_examples
from ..hspace_core.direction_algebra import strength_edit
from .comfy.checks import is_flow_transformer
from .comfy.model import ComfyHSpaceModel
from .comfy.run import sweep_process
from .comfy.samplers import h_edit_sampler
from .layer import (BOOST_SEED_RULE, STRENGTH_RANGE, STRENGTHS, CATEGORY, Boost, DirectionType, HSpaceNode, Trajectory,
                    advanced, allow_other_model_input, conditioning_inputs, edit_schedule, edit_window, model_input,
                    node_name, sampling_inputs, seed_input, seed_of, steps_input, sweep_text, t_edit_input, values_input,
                    values_of, window_inputs, x_T_input)


class AsyrpEdit(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceAsyrpEdit", display_name="H-Space Asyrp Edit", category=f"{CATEGORY}/edit",
            description="Asyrp: regenerate x_T with h̃_t = h_t + strength·Δh_t for t ≥ t_edit, using the asymmetric "
                        "reverse process (P_t from the edited h, D_t from the original ε). Negative strengths "
                        "push the other way; a sweep returns one image per strength.",
            inputs=[
                model_input(),
                x_T_input(),
                DirectionType.Input("direction", tooltip="An h-space direction (from examples, combined or loaded)."),
                io.Float.Input("strength", default=1.0, min=STRENGTH_RANGE[0], max=STRENGTH_RANGE[1], step=0.05,
                               tooltip="How far to move along the direction; negative reverses it, 0 reconstructs."),
                steps_input(), t_edit_input(),
                values_input("strength_sweep", STRENGTHS,
                             "Comma-separated strengths (e.g. -2,-1,0,1,2): returns a batch, one per value; decode it "
                             "and connect 'sweep' to H-Space Label Sweep Grid for a labelled grid. Overrides 'strength' when "
                             "not empty"),
                Boost.Input("boost", optional=True, tooltip="H-Space Quality Boost settings (stochastic steps below t_boost). "
                                                            + BOOST_SEED_RULE),
                seed_input("Seed for the stochastic (quality boost) steps. " + BOOST_SEED_RULE),
                allow_other_model_input(),
                *conditioning_inputs(),
                *window_inputs(),
            ],
            outputs=[io.Latent.Output("latent", tooltip="Edited latent(s): batch × strengths, strength-major."),
                     io.String.Output("sweep", tooltip="The strengths run, in batch order: connect to Label Sweep "
                                                       "Grid's values.")],
        )

    @classmethod
    def execute(cls, model, x_T, direction, strength, steps, t_edit, seed, cfg, edit_branches, strength_sweep="",
                boost=None, allow_other_model=False, positive=None, negative=None, window="t_edit",
                start_percent=0.0, end_percent=0.6) -> io.NodeOutput:
        strengths = values_of(strength_sweep, "strength_sweep", STRENGTHS) or [strength]
        node = node_name(cls.define_schema())
        if not is_flow_transformer(model):  # its refusals, first (a flow model's table is not the DDIM schedule's:
            edit_schedule(steps, t_edit, boost, model, window, start_percent, end_percent, node)  # the sampler checks)
        seed = seed_of(seed, boost)
        negative, negative_at = sampling_inputs(x_T, cfg, positive, negative)

        def sampler(s):
            return h_edit_sampler(node, lambda n, hs, window_ts: strength_edit(direction, s, n),
                                  lambda patcher: edit_window(node, patcher, window, t_edit, start_percent, end_percent),
                                  edit_branches=edit_branches, site=direction.site, boost=boost, seed=seed,
                                  hs_for=ComfyHSpaceModel.for_node(cfg, negative, negative_at), reserved=True)

        out = sweep_process(model, x_T, sampler, strengths, steps, site=direction.site, positive=positive,
                            negative=negative, cfg=cfg, seed=seed)
        return io.NodeOutput({"samples": out}, sweep_text(strengths))


class DirectionFromExamples(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceDirectionFromExamples", display_name="H-Space Direction from Examples",
            category=f"{CATEGORY}/direction",
            description="Δh_t = mean h_t of the positive examples − mean h_t of the negative examples (captured on the "
                        "same steps). 'global' averages it over t into one Δh.",
            inputs=[
                Trajectory.Input("positive", tooltip="Trajectory of images that have the attribute (a batch)."),
                Trajectory.Input("negative", tooltip="Trajectory of images that lack it."),
                io.Combo.Input("form", options=["per_timestep", "global"], default="per_timestep",
                               tooltip="One Δh per timestep, or their mean."),
                io.String.Input("name", default="direction", tooltip="A label stored with the direction."),
            ],
            outputs=[DirectionType.Output("direction", tooltip="The h-space direction.")],
        )

    @classmethod
    def execute(cls, positive, negative, form, name) -> io.NodeOutput:
        d = direction_from_examples(positive, negative, name=name)
        return io.NodeOutput(d.global_mean() if form == "global" else d)


class CombineDirections(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceCombineDirections", display_name="H-Space Combine Directions",
            category=f"{CATEGORY}/direction",
            description="w_a·Δh_a + w_b·Δh_b (Asyrp: edits add up linearly). Global and per-timestep directions mix.",
            inputs=[
                DirectionType.Input("direction_a", tooltip="First direction."),
                io.Float.Input("weight_a", default=1.0, min=-100.0, max=100.0, step=0.05, tooltip="Its weight."),
                DirectionType.Input("direction_b", tooltip="Second direction."),
                io.Float.Input("weight_b", default=1.0, min=-100.0, max=100.0, step=0.05, tooltip="Its weight."),
                advanced(io.Boolean.Input("normalize", default=False,
                                 tooltip="Divide the sum by √2 (Asyrp's scaling for several attributes).")),
            ],
            outputs=[DirectionType.Output("direction", tooltip="The combined direction.")],
        )

    @classmethod
    def execute(cls, direction_a, weight_a, direction_b, weight_b, normalize) -> io.NodeOutput:
        return io.NodeOutput(combine(direction_a, weight_a, direction_b, weight_b, normalize))


def combine(a: Direction, wa: float, b: Direction, wb: float, normalize: bool) -> Direction:
    return combine_linear([a, b], [wa, wb], normalize=normalize, name=f"{a.name}+{b.name}")
