from .base import (EDIT_BRANCHES, GuidedModel, HEdit, HSpaceModel, Prediction, denoise_at, edited_rows, fingerprint_of,
                   guided, levels_of)
from .denoiser import Denoiser
from .diffusers_unet import Conditioning, DiffusersUNet

__all__ = ["EDIT_BRANCHES", "GuidedModel", "HEdit", "HSpaceModel", "Prediction", "denoise_at", "levels_of", "edited_rows",
           "fingerprint_of", "guided", "Conditioning", "Denoiser", "DiffusersUNet"]
