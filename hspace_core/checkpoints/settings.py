"""The settings a checkpoint file cannot carry, checked by name and type: from keyword arguments or from the JSON file
beside the checkpoint (``<name>.json``), keyword arguments winning.

- ``parameterization``: what the network computes.  On the 1000-step β schedule: ``"eps"`` (ε-prediction, the
  default), ``"v"`` (v = √ᾱ·ε − √(1−ᾱ)·x0, Salimans & Ho 2022) or ``"x0"``.  σ-parameterised (x = x0 + σ·ε):
  ``"edm"`` (Karras et al. 2022, Table 1: D = c_skip·x + c_out·F(c_in·x, c_noise)) or ``"consistency"`` (Song et
  al. 2023, Appendix C: the same with the boundary-condition c_skip, c_out, so that D(x, σ_min) = x).
- For the σ-parameterised ones: ``sigma_data`` (0.5), ``sigma_min`` (0.002), ``sigma_max`` (80) and ``c_noise``,
  the network's time input: ``"edm"`` = ¼ ln σ (EDM) or ``"consistency"`` = 250 ln σ (openai/consistency_models,
  whose networks take 1000·¼ ln σ; the default for "consistency"), and ``clip_denoised`` (false): clamp D(x, σ)
  to [−1, 1], as openai/consistency_models' ``denoise`` does with ``clip_denoised=True`` (and graphs exported from
  it).
- ``beta_schedule`` ("linear" or "cosine", the β-schedule parameterizations only).
- guided-diffusion layout only: ``num_heads`` or ``num_head_channels`` and ``new_attention_order`` (the head split),
  ``class_label`` (fix a class table to one class) or ``condition`` (fix a continuous conditioning input: a list of
  numbers fed to a ``label_emb`` MLP).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass

from ..file_format import parse_json

log = logging.getLogger("hspace")
DDPM_LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2,
               "prediction_type": "epsilon", "clip_sample": False}
BETA_SCHEDULES = {"linear": DDPM_LINEAR, "cosine": {**DDPM_LINEAR, "beta_schedule": "squaredcos_cap_v2"}}
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}  # β-schedule parameterizations
SIGMA_PARAMETERIZATIONS = ("edm", "consistency")
PARAMETERIZATIONS = (*PREDICTION_TYPE, *SIGMA_PARAMETERIZATIONS)
C_NOISE = {"edm": "¼ ln σ (Karras et al. 2022)", "consistency": "250 ln σ (openai/consistency_models)"}
SIGMA_SETTINGS = ("sigma_data", "sigma_min", "sigma_max", "c_noise", "clip_denoised")
HEAD_SPLIT = ("num_heads", "num_head_channels")
__all__ = ["BETA_SCHEDULES", "PARAMETERIZATIONS", "C_NOISE", "CheckpointSettings", "checkpoint_settings",
           "settings_beside", "sidecar_of"]


@dataclass(frozen=True)
class CheckpointSettings:
    """What a checkpoint does not record (module docstring); build it with ``checkpoint_settings``, which checks
    every value and says where a bad one came from."""

    parameterization: str = "eps"
    beta_schedule: str | None = None
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    c_noise: str | None = None
    clip_denoised: bool = False
    num_heads: int | None = None
    num_head_channels: int | None = None
    new_attention_order: bool | None = None
    class_label: int | None = None
    condition: tuple[float, ...] | None = None
    given: tuple[str, ...] = ()  # the settings set by an argument or the JSON file, not defaulted

    @property
    def sigma_parameterised(self) -> bool:
        return self.parameterization in SIGMA_PARAMETERIZATIONS

    @property
    def noise_input(self) -> str:
        """The c_noise convention in use: as given, else the parameterization's own."""
        return self.c_noise or ("consistency" if self.parameterization == "consistency" else "edm")

    @property
    def guided(self) -> dict:
        """The settings only the guided-diffusion layout takes (those given)."""
        names = (*HEAD_SPLIT, "new_attention_order", "class_label", "condition")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


SETTINGS = tuple(field.name for field in dataclasses.fields(CheckpointSettings) if field.name != "given")


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _checked(name: str, value, where: str):
    """``value`` if it has the type and range of setting ``name``, else a ValueError naming both."""
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    bad = f"{name} {where} must be {{}}, got {shown} ({_kind(value)})"
    if name in ("num_heads", "num_head_channels", "class_label"):
        if type(value) is not int or value < (0 if name == "class_label" else 1):
            lowest = "a non-negative" if name == "class_label" else "a positive"
            raise ValueError(bad.format(f"{lowest} integer (a JSON number without quotes or decimals)") + ".")
        return value
    if name in ("new_attention_order", "clip_denoised"):
        if type(value) is not bool:
            raise ValueError(bad.format("true or false (a JSON boolean, without quotes)") + ".")
        return value
    if name in ("sigma_data", "sigma_min", "sigma_max"):
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            raise ValueError(bad.format("a positive number") + ".")
        return float(value)
    if name == "condition":
        if not isinstance(value, (list, tuple)) or not value or any(
                type(v) not in (int, float) or not math.isfinite(v) for v in value):
            raise ValueError(bad.format("a non-empty list of numbers (the conditioning input the label_emb MLP "
                                        "takes)") + ".")
        return tuple(float(v) for v in value)
    choices = {"parameterization": PARAMETERIZATIONS, "beta_schedule": tuple(BETA_SCHEDULES), "c_noise": tuple(C_NOISE)}
    if value not in choices[name]:
        raise ValueError(bad.format(f"one of {', '.join(map(json.dumps, choices[name]))}") + ".")
    return value


def checkpoint_settings(given: dict | None = None, beside: dict | None = None, sidecar: str = "the settings file"
                        ) -> CheckpointSettings:
    """The settings of a checkpoint: keyword arguments ``given`` over the JSON file's ``beside`` (named ``sidecar``
    in messages); None / null values count as not given.  A head split in the arguments replaces the file's (num_heads and
    num_head_channels exclude each other).  Unknown names, wrong types and settings that do not apply to the
    parameterization are refused, naming the setting and where it came from."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    beside = {k: v for k, v in (beside or {}).items() if v is not None}  # JSON null: not set
    for source, values in ((f"in {sidecar}", beside), ("(keyword argument)", given)):
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ValueError(f"Unknown checkpoint setting(s) {unknown} {source}; the settings are "
                             f"{', '.join(SETTINGS)}.")
    if any(name in given for name in HEAD_SPLIT):
        dropped = {name: beside.pop(name) for name in HEAD_SPLIT if name in beside}
        if dropped:
            log.info("Head split from the arguments %s instead of %s's %s.",
                     {k: given[k] for k in HEAD_SPLIT if k in given}, sidecar, dropped)
    values = {}
    for name in SETTINGS:
        if name in given:
            values[name] = _checked(name, given[name], "(keyword argument)")
        elif name in beside:
            values[name] = _checked(name, beside[name], f"in {sidecar}")
    settings = CheckpointSettings(**values, given=tuple(values))
    if settings.sigma_parameterised:
        if settings.beta_schedule is not None:
            raise ValueError(f"beta_schedule does not apply to parameterization {settings.parameterization!r} "
                             "(σ-parameterised: the noise levels are sigma_min … sigma_max); leave it unset.")
        if settings.sigma_min >= settings.sigma_max:
            raise ValueError(f"sigma_min ({settings.sigma_min:g}) must be below sigma_max ({settings.sigma_max:g}).")
    else:
        stray = [name for name in SIGMA_SETTINGS if name in values]
        if stray:
            raise ValueError(f"{', '.join(stray)} apply to the σ-parameterised models only (parameterization "
                             f"{' or '.join(map(json.dumps, SIGMA_PARAMETERIZATIONS))}); this one is "
                             f"{json.dumps(settings.parameterization)}: set parameterization or leave them unset.")
    if settings.class_label is not None and settings.condition is not None:
        raise ValueError("Give class_label (a class table) or condition (a continuous input), not both.")
    return settings


def sidecar_of(path: str) -> str:
    """The settings file of a checkpoint: ``afhqdog_p2.pt`` → ``afhqdog_p2.json``."""
    return os.path.splitext(path)[0] + ".json"


def settings_beside(path: str) -> dict:
    """The settings in ``<checkpoint name>.json`` next to the checkpoint, or {} when there is none (as read;
    ``checkpoint_settings`` checks them)."""
    sidecar = sidecar_of(path)
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar) as f:
            settings = parse_json(f.read(), os.path.basename(sidecar))
    except OSError as error:
        raise ValueError(f"{os.path.basename(sidecar)} is not readable ({error}); fix or remove it.") from None
    except ValueError as error:
        raise ValueError(f"{error.args[0].rstrip('.')}: fix or remove it.") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{os.path.basename(sidecar)} must hold a JSON object of settings, e.g. "
                         '{"num_head_channels": 64}.')
    log.info("Checkpoint settings from %s: %s", os.path.basename(sidecar), settings)
    return settings
