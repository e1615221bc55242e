from .base import EDIT_BRANCHES, GuidedModel, HEdit, HSpaceModel, Prediction, edited_rows, fingerprint_of, guided
from .denoiser import Denoiser
from .diffusers_unet import Conditioning, DiffusersUNet

__all__ = ["EDIT_BRANCHES", "GuidedModel", "HEdit", "HSpaceModel", "Prediction", "edited_rows", "fingerprint_of", "guided",
           "Conditioning", "Denoiser", "DiffusersUNet"]
