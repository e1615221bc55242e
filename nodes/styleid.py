"""H-Space StyleID Features (invert an image, record its decoder self-attention) and H-Space StyleID Inject (StyleID, alone or with
h-space content injection)."""
from __future__ import annotations

from comfy_api.latest import io

from ..hspace_core import ReconstructionReport
from ..hspace_core.attention_store import CONTENT_KINDS, LAYER_PRESETS, STYLE_KINDS, parse_layers
from ..hspace_core.flow_styleid import TRANSFORMER_PRESETS
from ..hspace_core.styleid import FEATURE_SOURCES, STARTS, StyleIDSettings, record_features, styleid_inject
from .comfy.attention import ComfyAttention, decoder_self_attention_layers
from .layer.origin import XTOrigin
from .comfy.fingerprint import model_fingerprint
from .comfy.checks import is_flow_transformer
from .comfy.run import latent_out, run_in_comfy
from .comfy.progress import progress_bar
from .layer import (CATEGORY, DEFAULT_H_STORAGE, GAMMAS, Calibration, HSpaceNode, Trajectory, advanced, check_work,
                    decode, edit_window, encoded_pixels, grid_window, h_storage_inputs, h_storage_of, latent_of,
                    latent_x, model_input, psnr, sweep, sweep_text, t_edit_input, values_input, values_of,
                    window_inputs, window_timesteps, with_origin, x_T_input)
from .layer.styleid_dit import features_on_transformer, inject_on_transformer

Features = io.Custom("HSPACE_ATTENTION_FEATURES")
STYLEID_RUNS = 32  # one full run per (γ, γ_h): the cells of one sweep grid
ROLES = {"style (K, V)": STYLE_KINDS, "content (Q)": CONTENT_KINDS}
CUSTOM = "custom"


def layer_inputs():
    return [io.Combo.Input("attention_layers", options=[*LAYER_PRESETS, *TRANSFORMER_PRESETS, CUSTOM],
                           default="StyleID SD1.x",
                           tooltip="Decoder self-attention layers (ComfyUI output_blocks.transformer): 'StyleID SD1.x' "
                                   "= output blocks 7–11 (the official code's decoder layers 7–11); 'SDXL' = output "
                                   "blocks 3–5, both transformers (64² tokens at 1024²); 'custom' reads custom_layers. "
                                   "On Flux / SD3 the image tokens' joint attention of whole blocks: 'Stable Flow "
                                   "vital (Flux.1)' = double 0, 1, 17, 18 and single 6, 9, 34, 35, 37 (also what "
                                   "'StyleID SD1.x' means on Flux.1; every block on other transformers)."),
            io.String.Input("custom_layers", default="7, 8, 9, 10, 11",
                            tooltip="With 'custom': output blocks ('7': all its transformers) or block.transformer "
                                    "pairs ('7.0'), comma-separated; 'all' is every decoder self-attention layer. "
                                    "On a transformer: blocks such as 'double.0, single.6' (Flux) or 'joint.12' (SD3)."),
            advanced(io.Int.Input("t_start", default=999, min=0, max=999,
                                  tooltip="K/V are injected for t_start ≥ t ≥ t_stop (999 … 0: the whole process, "
                                          "as the official code).")),
            advanced(io.Int.Input("t_stop", default=0, min=0, max=999,
                                  tooltip="The window's low end; a later stop (e.g. 300) leaves the last steps free.")),
            io.Int.Input("steps", default=20, min=2, max=1000,
                         tooltip="DDIM steps; the same on both StyleID nodes (the official code uses 50, its diffusers "
                                 "version 20).")]


def kv_window_inputs():
    """The K/V window as start/end percent (advanced, optional, last; default the paper's t_start / t_stop)."""
    return window_inputs(end_default=1.0, paper="t_start/t_stop")


def kv_window(model, steps: int, window: str, t_start: int, t_stop: int, start_percent: float,
              end_percent: float) -> tuple[int, int]:
    """(t_start, t_stop): the widgets', or a percent window's grid steps as a window in t (``grid_window``); both
    StyleID nodes resolve it the same way, so the Inject node asks for exactly the steps the Features node kept."""
    if window != "percent":
        return t_start, t_stop
    return grid_window(steps, model, start_percent, end_percent)


def layers_of(model, attention_layers: str, custom_layers: str) -> tuple[str, ...]:
    available = decoder_self_attention_layers(model)
    if attention_layers in TRANSFORMER_PRESETS:
        raise ValueError(f"attention_layers {attention_layers!r} names transformer blocks; this MODEL is a U-Net: "
                         f"choose one of {list(LAYER_PRESETS)} or 'custom'.")
    chosen = custom_layers if attention_layers == CUSTOM else ", ".join(LAYER_PRESETS[attention_layers])
    return parse_layers(chosen, available, "attention_layers" if attention_layers != CUSTOM else "custom_layers")


def text_input(tooltip: str):
    return io.Conditioning.Input("positive", optional=True,
                                 tooltip=tooltip + " The official code uses an empty prompt, without CFG.")


class StyleIDFeatures(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceStyleIDFeatures", display_name="H-Space StyleID Features", category=f"{CATEGORY}/mix",
            description="DDIM-inverts an image and records its decoder self-attention for StyleID: K and V of a "
                        "style image, or Q of a content image (query preservation), at the chosen layers and "
                        "steps only. Also returns x_T and h along the inversion (the content h of the combined mode). "
                        "On Flux / SD3: Euler inversion of the flow on the 'simple' σ grid, the image tokens' K/V "
                        "(or Q) of the chosen blocks' joint attention, h at the transformer's default site.",
            inputs=[
                model_input(),
                io.Image.Input("image", optional=True, tooltip="Image to invert (needs the VAE), or connect a latent."),
                io.Vae.Input("vae", optional=True, tooltip="VAE that encodes the image."),
                io.Latent.Input("latent", optional=True, tooltip="Latent to invert, instead of an image."),
                io.Combo.Input("role", options=list(ROLES), default="style (K, V)",
                               tooltip="style: keep K, V (what StyleID injects); content: keep Q (query preservation)."),
                *layer_inputs(),
                advanced(io.Combo.Input("features_source", options=list(FEATURE_SOURCES), default="inversion",
                                        tooltip="Where Q/K/V are read: along the inversion (the official code) or "
                                                "along the reconstruction from x_T.")),
                *h_storage_inputs(),
                text_input("Text conditioning for SD models (cfg 1)."),
                *kv_window_inputs(),
            ],
            outputs=[io.Latent.Output("x_T", display_name="x_T", tooltip="The inverted latent (carries its grid)."),
                     Features.Output("features", tooltip="The recorded self-attention features: connect to StyleID "
                                                         "Inject's style_features or content_features."),
                     Trajectory.Output("trajectory", tooltip="h along the inversion: content h for the combined mode."),
                     io.Float.Output("psnr", tooltip="PSNR (dB) of the reconstruction from x_T.")],
        )

    @classmethod
    def execute(cls, model, role, attention_layers, custom_layers, t_start, t_stop, steps,
                features_source="inversion", h_storage=DEFAULT_H_STORAGE, keep_h_from_t=0, image=None, vae=None,
                latent=None, positive=None, window="t_start/t_stop", start_percent=0.0,
                end_percent=1.0) -> io.NodeOutput:
        latent = latent_of(image, vae, latent)
        if is_flow_transformer(model):
            return io.NodeOutput(*features_on_transformer(
                model, latent, ROLES[role], steps, features_source, h_storage_of(h_storage, 0),
                h_storage_of(h_storage, keep_h_from_t), positive, image, vae,
                attention_layers=attention_layers, custom_layers=custom_layers, window=window, t_start=t_start,
                t_stop=t_stop, start_percent=start_percent, end_percent=end_percent))
        layers = layers_of(model, attention_layers, custom_layers)
        t_start, t_stop = kv_window(model, steps, window, t_start, t_stop, start_percent, end_percent)
        storage = h_storage_of(h_storage, 0)
        progress = progress_bar(2 * steps, model)
        inv, features = run_in_comfy(
            model, latent["samples"],
            lambda m, x: record_features(m, x, steps, layers, ROLES[role], source=features_source,
                                         window=(t_start, t_stop), storage=storage,
                                         h_storage=h_storage_of(h_storage, keep_h_from_t), access=ComfyAttention(m),
                                         progress=progress),
            positive=positive, steps=steps)
        reconstruction = latent_out(model, inv.reconstruction)
        quality = ReconstructionReport.compare(latent_x(model, latent), inv.reconstruction).psnr
        if image is not None:
            quality = psnr(decode(vae, reconstruction), encoded_pixels(vae, image), 1.0)
        x_T = with_origin(latent_out(model, inv.x_T), XTOrigin(inv.timesteps, model_fingerprint(model)))
        return io.NodeOutput(x_T, features, inv.trajectory, quality)


class StyleIDInject(HSpaceNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HSpaceStyleIDInject", display_name="H-Space StyleID Inject", category=f"{CATEGORY}/mix",
            description="StyleID (Chung et al., CVPR 2024): regenerate the content with the style image's K/V in the "
                        "decoder self-attention, the query blended with the content's (γ), the attention sharpened "
                        "(τ), from AdaIN(x_T content, x_T style). Connect the content's h trajectory for the "
                        "combined mode: h-space content injection (InjectFusion's Slerp, γ_h) in the same run. On Flux / "
                        "SD3: Euler on the flow's 'simple' σ grid, the style's K/V in the image tokens of the chosen "
                        "blocks' joint attention (Stable Flow's injection); the combined mode injects h at the "
                        "trajectory's site (StyleID Features' content trajectory: same model and steps).",
            inputs=[
                model_input(),
                x_T_input("content_x_T", "x_T of the content image (H-Space StyleID Features, role content)."),
                x_T_input("style_x_T", "x_T of the style image (H-Space StyleID Features, role style)."),
                Features.Input("style_features", tooltip="K/V of the style image (H-Space StyleID Features, role style)."),
                Features.Input("content_features", optional=True,
                               tooltip="Q of the content image (role content); needed when gamma > 0."),
                io.Float.Input("gamma", default=0.75, min=0.0, max=1.0, step=0.05,
                               tooltip="Query preservation γ: 1 keeps the content's query (layout), 0 the "
                                       "generation's; the paper uses 0.75, 0.3 for stronger style."),
                io.Float.Input("tau", default=1.5, min=0.1, max=5.0, step=0.05,
                               tooltip="Attention temperature τ (logits × τ): 1.5 in the paper; 1 is plain attention."),
                *layer_inputs(),
                io.Combo.Input("start", options=list(STARTS), default="adain",
                               tooltip="x_T the generation starts from: 'adain' = the content's x_T with the style "
                                       "x_T's channel mean/std (StyleID), 'content', or 'style' (InjectFusion's)."),
                values_input("gamma_sweep", GAMMAS, "Comma-separated γ values: one result per value (γ-major; "
                             f"columns of H-Space Label Sweep Grid). Overrides gamma when not empty. At most {STYLEID_RUNS} "
                             "runs in all (γ values × γ_h values)"),
                Trajectory.Input("content_h", optional=True,
                                 tooltip="Combined mode: the content's h trajectory (H-Space StyleID Features or DDIM "
                                         "Inversion), Slerped into h for t ≥ t_edit. On Flux / SD3: StyleID "
                                         "Features' (the same steps), injected at its site."),
                io.Float.Input("gamma_h", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Combined mode: h content strength γ_h (InjectFusion's γ)."),
                values_input("gamma_h_sweep", GAMMAS, "Combined mode: comma-separated γ_h values, inner to the γ "
                             "sweep (rows of H-Space Label Sweep Grid)"),
                t_edit_input(),
                io.Mask.Input("mask", optional=True, tooltip="Combined mode: local mixing of h (1 = inject h here)."),
                Calibration.Input("calibration", optional=True, tooltip="Combined mode: H-Space Style Calibrate settings (ω)."),
                text_input("Text conditioning for SD models (cfg 1)."),
                *kv_window_inputs(),
                advanced(io.Float.Input(
                    "h_end_percent", default=0.6, min=0.0, max=1.0, step=0.01, optional=True,
                    tooltip="window = percent, combined mode: h is injected from the first step to h_end_percent "
                            "(t_edit's percent form: the grid steps whose σ is at least σ(h_end_percent)).")),
            ],
            outputs=[io.Latent.Output("latent", tooltip="The stylised latent(s): γ-major, then γ_h."),
                     io.String.Output("sweep", tooltip="The γ values, in batch order (H-Space Label Sweep Grid's values)."),
                     io.String.Output("h_sweep", tooltip="The γ_h values (H-Space Label Sweep Grid's row_values).")],
        )

    @classmethod
    def execute(cls, model, content_x_T, style_x_T, style_features, gamma, tau, attention_layers, custom_layers,
                t_start, t_stop, steps, start, t_edit, gamma_sweep="", content_h=None, gamma_h=0.5, gamma_h_sweep="",
                content_features=None, mask=None, calibration=None, positive=None, window="t_start/t_stop",
                start_percent=0.0, end_percent=1.0, h_end_percent=0.6) -> io.NodeOutput:
        gammas = values_of(gamma_sweep, "gamma_sweep", GAMMAS) or [gamma]
        if content_h is None and (gamma_h_sweep.strip() or mask is not None or calibration is not None):
            raise ValueError("gamma_h_sweep, mask and calibration belong to the combined mode: connect content_h "
                             "(the content's h trajectory), or disconnect them.")
        gamma_hs = values_of(gamma_h_sweep, "gamma_h_sweep", GAMMAS) or [gamma_h]
        omega = calibration.omega if calibration is not None else None
        runs = [(g, gh) for g in gammas for gh in gamma_hs]
        check_work("γ values × γ_h values", len(runs), STYLEID_RUNS, "shorten gamma_sweep or gamma_h_sweep")
        if is_flow_transformer(model):
            h_window = None  # t ≥ t_edit, or the first step to h_end_percent, on the model's σ (combined mode)
            if content_h is not None:
                h_window = edit_window("H-Space StyleID Inject", model, "percent" if window == "percent" else "t_edit",
                                       t_edit, 0.0, h_end_percent)
            out = inject_on_transformer(model, content_x_T, style_x_T, style_features, content_features, runs, tau,
                                        start, steps, positive, content_h=content_h, h_window=h_window, mask=mask,
                                        omega=omega, attention_layers=attention_layers, custom_layers=custom_layers,
                                        window=window, t_start=t_start, t_stop=t_stop, start_percent=start_percent,
                                        end_percent=end_percent)
            return io.NodeOutput(latent_out(model, out), sweep_text(gammas), sweep_text(gamma_hs))
        layers = layers_of(model, attention_layers, custom_layers)
        t_start, t_stop = kv_window(model, steps, window, t_start, t_stop, start_percent, end_percent)
        edited = None  # t ≥ t_edit; a percent window's grid timesteps (combined mode)
        if window == "percent" and content_h is not None:
            edited = window_timesteps(steps, model, 0.0, h_end_percent)
        style_x = latent_x(model, style_x_T)

        def run(m, x, g, gh, progress):
            settings = StyleIDSettings(layers, g, tau, (t_start, t_stop), start)
            return styleid_inject(m, x, style_x.to(x), style_features, settings, steps, content_q=content_features,
                                  content_h=content_h, gamma_h=gh, t_edit=t_edit, mask=mask, omega=omega,
                                  access=ComfyAttention(m), progress=progress, edit_timesteps=edited)

        out = run_in_comfy(model, content_x_T["samples"],
                           lambda m, x: sweep(runs, steps, lambda r, p: run(m, x, *r, p), model), positive=positive,
                           steps=steps)
        return io.NodeOutput(latent_out(model, out), sweep_text(gammas), sweep_text(gamma_hs))
