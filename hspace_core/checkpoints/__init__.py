"""The checkpoint formats the papers' pixel models ship in, converted to a diffusers ``UNet2DModel`` and wrapped as an
``HSpaceModel`` (``load_checkpoint``).

- The DDIM-repo ``Model`` (ermongroup/ddim): Asyrp / InjectFusion's ``celeba_hq.ckpt`` and the ``ema_lsun_*``
  checkpoints (``ddim_repo``).
- The openai guided-diffusion / iDDPM ``UNetModel`` (AFHQ-dog, METFACES, ImageNet): ``guided_diffusion``.

The config is inferred from the state dict; what cannot be inferred or expressed raises a ValueError saying so.
The schedule the models were trained with comes back as a diffusers scheduler config: DDPM linear β (1e-4 … 0.02,
1000 steps) for the DDIM repo's; guided-diffusion files do not record theirs (``unet_from_state_dict``).  What a
file cannot carry comes from keyword arguments or a JSON file beside it (``settings``).

Nothing in the method core imports this package: it is the way in for other people's files.
"""
from .ddim_repo import ddim_config, ddim_to_diffusers
from .files import CHECKPOINT_EXTENSIONS, key_mismatch, read_state_dict, state_dict_of
from .head_split import HeadSplitRanking, candidate_splits, rank_head_splits
from .loader import (LoadedCheckpoint, hspace_model, layout_of, load_checkpoint, log_settings_check, read_checkpoint,
                     unet_from_state_dict)
from .preconditioning import PreconditionedUNet, consistency_scalings, edm_scalings, noise_input, sigma_table
from .probes import structured_probes
from .settings import BETA_SCHEDULES, PARAMETERIZATIONS, CheckpointSettings, checkpoint_settings, settings_beside
from .settings_check import SettingsCheck, check_sigma_settings

__all__ = ["CHECKPOINT_EXTENSIONS", "BETA_SCHEDULES", "read_state_dict", "state_dict_of", "key_mismatch", "layout_of",
           "ddim_config", "ddim_to_diffusers", "unet_from_state_dict", "load_checkpoint", "settings_beside",
           "LoadedCheckpoint", "read_checkpoint", "hspace_model", "PARAMETERIZATIONS", "CheckpointSettings",
           "checkpoint_settings", "PreconditionedUNet", "edm_scalings", "consistency_scalings", "noise_input",
           "sigma_table", "candidate_splits", "rank_head_splits", "HeadSplitRanking", "structured_probes",
           "SettingsCheck", "check_sigma_settings", "log_settings_check"]
