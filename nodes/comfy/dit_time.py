"""A diffusion transformer's own timestep embedding, for Asyrp's implicit f_t(h_t, t) at a transformer site.

Asyrp's f_t (``hspace_core.implicit``) joins h to the U-Net's time embedding temb(t).  Flux and SD3 / SD3.5 embed
time the same way (a [cos, sin] sinusoid of 256 frequencies, max period 10000, into a Linear → SiLU → Linear MLP;
``flux.layers.timestep_embedding`` / ``diffusionmodules.util.timestep_embedding``, both tested ComfyUI versions),
but of σ·1000 rather than of a DDPM step: Flux's ``time_in`` (the sinusoid multiplies
``model_sampling.timestep(σ)`` = σ by its ``time_factor`` 1000) and SD3's ``t_embedder``
(``model_sampling.timestep(σ)`` = σ·multiplier, 1000).  The copy taken here is that MLP plus the time input of every
entry of the MODEL's σ table, so f_t(h, t) is keyed by the table entry t as every other h edit is.  It is temb alone,
not Flux's modulation vector ``vec`` (= temb + the pooled-text and guidance embeddings): Asyrp's f_t depends on h
and t, not on the prompt.
"""
from __future__ import annotations

import math

from ...hspace_core.implicit import TimeEmbedding
from . import dit
from .noise_levels import levels_of_sampling

FLUX_TIME_FACTOR = 1000.0  # flux.layers.timestep_embedding's default time_factor, which Flux.forward_orig uses


def dit_time_embedding(diffusion_model, model_sampling) -> TimeEmbedding:
    """The frozen float32 copy of a Flux / SD3 transformer's timestep MLP, read at σ_t·1000 for table entry t."""
    family = dit.dit_family(diffusion_model)
    if family == "flux":
        mlp, dim, factor = diffusion_model.time_in, diffusion_model.time_in.in_layer.in_features, FLUX_TIME_FACTOR
        first, second = mlp.in_layer, mlp.out_layer
    elif family == "sd3":
        embedder = diffusion_model.t_embedder
        if getattr(embedder, "max_period", 10000) != 10000:
            raise ValueError(f"This MMDiT embeds time with max_period {embedder.max_period}; implicit f_t copies the "
                             "10000 of SD3 / SD3.5: use the global or per_timestep form.")
        first, second, dim, factor = embedder.mlp[0], embedder.mlp[2], embedder.frequency_embedding_size, 1.0
    elif family == "chroma":
        raise ValueError("Chroma has no timestep embedding of its own for implicit f_t: its approximator maps σ, "
                         "guidance and the block index to every block's modulation together. Use the global or "
                         "per_timestep form.")
    else:
        raise ValueError(f"{type(diffusion_model).__name__} is not a transformer the pack reads time from; implicit "
                         f"f_t on a transformer takes {dit.TRANSFORMERS}.")
    time_input = model_sampling.timestep(levels_of_sampling(model_sampling).table.float()).float() * factor
    if not math.isfinite(float(time_input.abs().max())):
        raise ValueError("This MODEL's σ table gives a non-finite time input; implicit f_t cannot be keyed on it.")
    return TimeEmbedding.copy_of(first, second, dim, True, 0.0).with_time_input(time_input)

