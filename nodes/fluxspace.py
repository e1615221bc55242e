"""FluxSpace's text-pair edit for Flux and SD3.x as a MODEL patch (Dalva et al., CVPR 2025; hspace_core.fluxspace)."""
from __future__ import annotations

from comfy_api.latest import io

from .comfy.dit import TRANSFORMERS, dit_family
from .comfy.fluxspace import patched_with_fluxspace
from .layer import CATEGORY, HSpaceNode, advanced, edit_window, node_name, percent_inputs


class FluxSpaceEdit(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceFluxSpaceEdit", display_name="H-Space FluxSpace Edit (model patch)",
            category=f"{CATEGORY}/transformers",
            description="FluxSpace on a Flux or SD3.x MODEL: inside the window, the image tokens' attention output ℓ of "
                        "the joint blocks becomes ℓ(x, c) + λ·(ℓ(x, c_edit) − its projection on ℓ(x, ∅)), the part of "
                        "the edit prompt's attention output the empty prompt (or the base prompt, when connected) does "
                        "not share; λ_coarse moves the pooled text embedding the same way. In the window the edit and "
                        "empty prompts run as extra rows of each model call (memory for 3× the rows). For any "
                        "sampler (KSampler, SamplerCustomAdvanced); λ = λ_coarse = 0 is the plain MODEL.",
            inputs=[io.Model.Input("model", tooltip=f"A transformer MODEL: {TRANSFORMERS}."),
                    io.Conditioning.Input("edit", tooltip="The edit prompt (e.g. 'smiling', 'wearing glasses'), "
                                                          "encoded as for this model (Flux: with FluxGuidance)."),
                    io.Conditioning.Input("empty", optional=True,
                                          tooltip="The empty prompt '' encoded the same way: the null condition ∅ "
                                                  "whose share of the edit is projected out. Not used when base is "
                                                  "connected."),
                    io.Float.Input("lam", default=1.0, min=-20.0, max=20.0, step=0.05,
                                   tooltip="λ of the fine edit (attention outputs); 0 turns it off."),
                    io.Float.Input("lam_coarse", default=0.0, min=-20.0, max=20.0, step=0.05,
                                   tooltip="λ of the coarse edit (the pooled text embedding); 0 turns it off."),
                    *percent_inputs("edit"),
                    advanced(io.Combo.Input("blocks", options=["all", "middle"], default="all", optional=True,
                                            tooltip="Which joint blocks: all of them (FluxSpace's) or only the "
                                                    "middle one (the pack's default h site).")),
                    io.Conditioning.Input("base", optional=True,
                                          tooltip="Optional base prompt (e.g. the image's own prompt), encoded the "
                                                  "same way: projected out of the edit instead of the empty prompt, "
                                                  "in the fine and the coarse edit, so only what the edit adds to "
                                                  "this prompt is applied.")],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched MODEL (a clone; the input is unchanged).")],
        )

    @classmethod
    def execute(cls, model, edit, empty, lam, lam_coarse, start_percent, end_percent, blocks="all",
                base=None) -> io.NodeOutput:
        node = node_name(cls.define_schema())
        if dit_family(model.get_model_object("diffusion_model")) is None:
            raise ValueError(f"FluxSpace edits a transformer's joint attention outputs; this MODEL is not one of "
                             f"{TRANSFORMERS}: connect a Flux or SD3.x MODEL (on U-Nets use H-Space Shift).")
        if lam_coarse and dit_family(model.get_model_object("diffusion_model")) == "chroma":
            raise ValueError(f"{node}: lam_coarse moves the pooled text embedding, and Chroma has none (T5 text only; "
                             "its blocks are modulated from σ and guidance alone): set lam_coarse to 0 and edit with "
                             "lam (the attention outputs).")
        if blocks not in ("all", "middle"):
            raise ValueError(f"blocks is {blocks!r}; choose 'all' or 'middle'.")
        reference = base if base is not None else empty
        if reference is None:
            raise ValueError("Connect empty (the empty prompt '' encoded for this model) or base (a base prompt): the "
                             "edit is projected on one of them.")
        window = edit_window(node, model, "percent", 0, start_percent, end_percent)
        return io.NodeOutput(patched_with_fluxspace(model, edit[0], reference[0], lam, lam_coarse, window, blocks))
