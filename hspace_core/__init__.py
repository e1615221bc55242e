"""hspace_core — h-space editing and style mixing for diffusion U-Nets, framework-free.

Implements Asyrp (Kwon et al., ICLR 2023; including its CLIP-trained directions), DiffStyle / InjectFusion (Jeong, Kwon, Uh) and the
interpolation recipe of Diffusion Autoencoders (Preechakul et al., CVPR 2022) over any ``HSpaceModel``; directions found
without labels (``pca``, ``jacobian``), by linear probes (``probes``), their algebra (``direction_algebra``) and the
Direction Explorer (``explorer``).
"""
from .adapters import (Conditioning, Denoiser, DiffusersUNet, GuidedModel, HEdit, HSpaceModel, Prediction, denoise_at,
                       edited_rows, fingerprint_of, guided, levels_of)
from .auto_schedule import AutoScheduleResult, find_t_edit_t_boost, lpips_distance
from .cfg_inversion import CFG_INVERSIONS, GuidedInversion, invert_guided, null_text_embeddings
from .clip_directions import CLIPDirectional, DirectionTraining, TrainedDirection, load_open_clip, train_direction
from .direction import Direction
from .direction_algebra import (combine, combine_directions, normalise, orthogonalise, relative_strength, rescale_like,
                                scaled_strength, strength_edit, sum_weights)
from .explorer import explore, explorer_rows, row_edit
from .file_format import FORMAT_VERSION, check_fingerprint
from .jacobian import jacobian_directions, latent_at
from .pca import NORMALISATIONS, PCAResult, pca_directions, principal_components
from .noise_levels import NoiseLevels
from .probes import PROBE_METHODS, direction_from_examples, linear_probe, probe_direction
from .ddim import calibrated_x_t, ddim_inverse_step, ddim_sigma, ddim_step, eps_from_model_output, predicted_x0
from .implicit import ImplicitDirectionNet, TimeEmbedding
from .official import load_official_asyrp, train_steps_of
from .hmath import check_gamma, mask_to_h_grid, masked_blend, masked_normalized_slerp, normalized_slerp, slerp
from .progress import Cancelled, StepLoop, check_batch
from .processes import (H_SOURCES, INVERSION_CONVENTIONS, capture, content_injection, edit, generate, inject, interpolate,
                        invert, run_reverse)
from .schedules import (NoiseSchedule, betas_cosine, betas_linear, betas_scaled_linear, gamma_ramp, schedule_from_betas,
                        schedule_from_diffusers_config, schedule_from_sigmas, step_pairs, timestep_at_fraction,
                        timestep_at_sigma, timestep_grid)
from .sites import SITES
from .attention_store import LAYER_PRESETS, AttentionFeatures
from .styleid import StyleIDSettings, adain, preserve_query, record_features, styleid_inject, temperature_attention
from .settings import EditSchedule, BoostSettings, StyleCalibration
from .trajectory import HStorage, HTrajectory, Inversion, ReconstructionReport

__version__ = "0.1.0"

__all__ = [
    "AutoScheduleResult", "CLIPDirectional", "DirectionTraining", "ImplicitDirectionNet", "TimeEmbedding", "TrainedDirection",
    "load_official_asyrp", "load_open_clip", "train_direction", "denoise_at", "levels_of", "Cancelled", "Conditioning", "DiffusersUNet", "Direction", "EditSchedule", "HSpaceModel",
    "HStorage", "HTrajectory", "Inversion", "NoiseLevels", "NoiseSchedule", "Prediction", "BoostSettings", "ReconstructionReport", "StyleCalibration", "betas_cosine",
    "betas_linear", "betas_scaled_linear", "calibrated_x_t", "capture", "combine_directions", "content_injection",
    "ddim_inverse_step", "ddim_sigma", "ddim_step", "direction_from_examples", "edit", "eps_from_model_output",
    "find_t_edit_t_boost", "gamma_ramp", "generate", "inject", "interpolate", "invert", "lpips_distance", "mask_to_h_grid",
    "masked_blend", "masked_normalized_slerp", "check_gamma", "StepLoop", "check_batch", "H_SOURCES",
    "INVERSION_CONVENTIONS", "train_steps_of", "CFG_INVERSIONS", "GuidedInversion", "invert_guided",
    "null_text_embeddings", "GuidedModel", "normalized_slerp", "predicted_x0", "run_reverse", "schedule_from_betas",
    "schedule_from_diffusers_config", "schedule_from_sigmas", "slerp", "step_pairs", "timestep_grid",
    "Denoiser", "timestep_at_fraction", "timestep_at_sigma", "HEdit", "edited_rows", "fingerprint_of", "guided",
    "SITES", "jacobian_directions", "orthogonalise", "pca_directions", "probe_direction", "relative_strength",
    "combine", "normalise", "rescale_like", "sum_weights", "scaled_strength", "strength_edit",
    "explore", "explorer_rows", "row_edit", "FORMAT_VERSION", "check_fingerprint",
    "latent_at", "NORMALISATIONS", "PCAResult", "principal_components", "PROBE_METHODS", "linear_probe",
    "AttentionFeatures", "LAYER_PRESETS", "StyleIDSettings", "adain", "preserve_query", "record_features",
    "styleid_inject", "temperature_attention",
]
