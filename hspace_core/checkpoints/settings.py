"""The settings a checkpoint file cannot carry (β schedule, head split, class label), read from the JSON file beside
it."""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("hspace")
DDPM_LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2,
               "prediction_type": "epsilon", "clip_sample": False}
BETA_SCHEDULES = {"linear": DDPM_LINEAR, "cosine": {**DDPM_LINEAR, "beta_schedule": "squaredcos_cap_v2"}}
__all__ = ["BETA_SCHEDULES", "settings_beside"]


def settings_beside(path: str) -> dict:
    """The settings in ``<checkpoint name>.json`` next to the checkpoint, or {} when there is none."""
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar) as f:
            settings = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{os.path.basename(sidecar)} is not readable JSON ({error}); fix or remove it.") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{os.path.basename(sidecar)} must hold a JSON object of settings, e.g. "
                         '{"num_head_channels": 64}.')
    log.info("Checkpoint settings from %s: %s", os.path.basename(sidecar), settings)
    return settings
