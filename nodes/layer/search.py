"""The words a user types in the editor's node search, per node: the papers' names and the tasks' everyday names.

ComfyUI's V3 schema takes them as ``search_aliases`` (0.33.0 has the field; 0.3.75 does not, and there they are
left out without a word).  ``harness/node_docs.py`` lists them on each node's help page.
"""
from __future__ import annotations

_INVERSION = ("inversion", "invert", "DDIM inversion", "reconstruct", "image to noise")
_STYLE = ("style transfer", "style mixing", "DiffStyle", "InjectFusion", "content injection")
_DIRECTION = ("Asyrp", "h-space direction", "semantic direction", "latent direction")
_DISCOVER = ("unsupervised directions", "semantic directions", "h-space direction")

SEARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "HSpaceDDIMInversion": (*_INVERSION, "encode image", "Asyrp", "InjectFusion"),
    "HSpaceCapture": ("record h", "h trajectory", "capture h-space", "bottleneck features"),
    "HSpaceAsyrpEdit": ("Asyrp", "image editing", "semantic edit", "attribute edit", "h-space edit",
                        "asymmetric reverse process"),
    "HSpaceSlerpContentInject": (*_STYLE, "slerp", "mix two images"),
    "HSpaceStyleCalibrate": ("style calibration", "InjectFusion", "DiffStyle", "style strength"),
    "HSpaceQualityBoost": ("quality boosting", "Asyrp", "stochastic steps", "detail", "eta"),
    "HSpaceAutoSchedule": ("Asyrp", "t_edit", "t_boost", "LPIPS schedule", "edit interval"),
    "HSpaceInterpolate": ("interpolation", "morph", "Diffusion Autoencoders", "DiffAE", "slerp"),
    "HSpaceDirectionFromExamples": (*_DIRECTION, "mean difference", "examples"),
    "HSpaceCombineDirections": (*_DIRECTION, "add directions", "direction algebra"),
    "HSpaceSaveDirection": ("save direction", "Asyrp", "h-space direction"),
    "HSpaceLoadDirection": ("load direction", "Asyrp", "h-space direction"),
    "HSpaceSaveTrajectory": ("save h", "save inversion", "h trajectory"),
    "HSpaceLoadTrajectory": ("load h", "load inversion", "h trajectory"),
    "HSpacePreviewH": ("visualise h", "h-space preview", "PCA image", "bottleneck features"),
    "HSpaceLoadPixelUNet": ("DDPM", "pixel diffusion", "CelebA-HQ", "guided diffusion", "load unet", "diffusers"),
    "HSpaceTrainAsyrpDirection": ("Asyrp", "CLIP direction", "text direction", "train direction",
                                  "directional CLIP loss"),
    "HSpaceLoadAsyrpDirection": ("Asyrp", "official Asyrp checkpoint", "load direction", "implicit f_t"),
    "HSpaceXTToNative": ("native sampler", "KSampler", "SamplerCustomAdvanced", "inversion", "noise from x_T"),
    "HSpacePixelConditioning": ("empty conditioning", "unconditional", "pixel conditioning"),
    "HSpacePCADirections": (*_DISCOVER, "PCA", "principal components", "Haas"),
    "HSpaceJacobianDirections": (*_DISCOVER, "Jacobian", "SVD", "Riemannian", "pullback"),
    "HSpaceProbeDirection": ("linear probe", "classifier direction", "SVM", "BoundaryDiffusion", "h-space direction"),
    "HSpaceOrthogonaliseDirection": ("orthogonalize", "Gram-Schmidt", "decorrelate", "disentangle", "projection"),
    "HSpaceDirectionExplorer": ("explore directions", "direction grid", "Asyrp", "preview edits"),
    "HSpaceLabelSweepGrid": ("sweep grid", "xy plot", "contact sheet", "labelled grid"),
    "HSpaceAsyrpSampler": ("Asyrp", "h-space sampler", "image editing", "SamplerCustomAdvanced", "semantic edit"),
    "HSpaceContentInjectionSampler": (*_STYLE, "sampler", "SamplerCustomAdvanced"),
    "HSpaceInversionSampler": (*_INVERSION, "sampler", "FlipSigmas"),
    "HSpaceInvertedXT": ("inversion", "x_T", "inverted latent", "h trajectory"),
    "HSpaceHShiftPatch": ("FreeU", "model patch", "h-space shift", "Asyrp", "bottleneck shift", "direction"),
    "HSpaceStyleIDFeatures": ("StyleID", "style transfer", "attention injection", "K V injection", "inversion"),
    "HSpaceStyleIDInject": ("StyleID", "style transfer", "attention injection", "AdaIN", "query preservation"),
    "HSpaceFluxSpaceEdit": ("FluxSpace", "Flux", "SD3", "text edit", "attention output edit", "model patch"),
    "HSpaceBlockVitality": ("Stable Flow", "vital layers", "Flux", "SD3", "block ablation", "layer importance"),
}


def with_search_aliases(schema):
    """The schema with its node's aliases, where this ComfyUI's schema has the field (feature-detected)."""
    if hasattr(schema, "search_aliases") and not schema.search_aliases:
        schema.search_aliases = list(SEARCH_ALIASES.get(schema.node_id, ()))
    return schema
