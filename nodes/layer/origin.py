"""x_T carries its origin (grid, model, guidance) between nodes; checked in this order: the model first (channels,
then fingerprint), then the grid, then the guidance, so a message names the real cause and its advice works."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ...hspace_core import timestep_grid
from ...hspace_core.settings import grid_label
from ..comfy.fingerprint import model_fingerprint
from ..comfy.checks import check_latent
from ..comfy.noise_levels import noise_levels

log = logging.getLogger("hspace")
ORIGIN_KEY = "hspace_origin"


@dataclass(frozen=True)
class XTOrigin:
    """Where an inverted x_T came from, carried with it between nodes: the grid it was inverted on, the model, and
    how it must be sampled under guidance ("plain"; "negative_prompt": the positive conditioning is also the
    negative; "null_text": the per-step negative embeddings ``negative_at``, found at ``guidance_scale``)."""

    timesteps: tuple[int, ...]
    fingerprint: str = ""
    guidance: str = "plain"
    guidance_scale: float = 1.0
    negative_at: dict = field(default_factory=dict, compare=False)
    made_with: str = field(default="", compare=False)  # the grid / sigmas of its inversion (settings.grid_label)

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if not self.made_with:
            object.__setattr__(self, "made_with", grid_label(self.timesteps))
        if self.guidance not in ("plain", "negative_prompt", "null_text"):
            raise ValueError(f"guidance {self.guidance!r} is unknown; use plain, negative_prompt or null_text.")
        if self.guidance == "null_text" and not self.negative_at:
            raise ValueError("A null-text x_T needs its per-step negative embeddings (negative_at).")

    def check_grid(self, timesteps) -> None:
        """Refuse sampling this x_T on another grid than it was inverted on, saying which steps to set."""
        timesteps = tuple(int(t) for t in timesteps)
        if timesteps != self.timesteps and len(timesteps) == len(self.timesteps):  # same count: another grid
            raise ValueError(
                f"This x_T was inverted on other timesteps than this node's {len(timesteps)}-step DDIM grid (t = "
                f"{timesteps[0]} … {timesteps[-1]}): it was made on {self.made_with}, the grid of the sigmas it was "
                "inverted on (a SAMPLER's scheduler, e.g. karras), which no steps value reproduces. Sample it on those "
                "sigmas (SamplerCustomAdvanced with the H-Space Asyrp Sampler), or invert with H-Space DDIM Inversion "
                f"at steps = {len(timesteps)} for this node.")
        if timesteps != self.timesteps:
            raise ValueError(
                f"This x_T was inverted at {len(self.timesteps)} steps (t = {self.timesteps[0]} … {self.timesteps[-1]}) "
                f"but this node runs {len(timesteps)} steps on another grid: set steps to {len(self.timesteps)} here, "
                f"or invert again with steps = {len(timesteps)}.")


def with_origin(latent: dict, origin: XTOrigin) -> dict:
    return {**latent, ORIGIN_KEY: origin}


def origin_of(x_T: dict) -> XTOrigin | None:
    """The x_T's origin (None for latents that did not come from DDIM Inversion)."""
    return x_T.get(ORIGIN_KEY) if isinstance(x_T, dict) else None


def check_x_T_model(name: str, x_T, model) -> None:
    """Refuse an x_T of another model (channels, size, or another architecture's fingerprint); log one made with
    other weights of the same architecture (a fine-tune edits it legitimately)."""
    if not isinstance(x_T, dict) or "samples" not in x_T:
        raise ValueError(f"{name} is not a LATENT; connect the x_T output of DDIM Inversion (or a latent).")
    try:
        check_latent(model, x_T["samples"])
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    origin = origin_of(x_T)
    if origin is None or not origin.fingerprint:
        return
    here = model_fingerprint(model)
    if origin.fingerprint == here:
        return
    if origin.fingerprint.split("/")[0] != here.split("/")[0]:
        raise ValueError(f"{name} was inverted with a model of another architecture (fingerprint {origin.fingerprint}) "
                         f"than this MODEL ({here}): it does not belong to this model. Invert the image again with "
                         f"this MODEL.")
    log.info("h-space: %s was inverted with other weights (fingerprint %s) than this MODEL (%s), e.g. a fine-tune "
             "or a LoRA; it is used as it is (invert with this MODEL to reconstruct the image exactly).",
             name, origin.fingerprint, here)


def check_x_T_grid(name: str, x_T, steps: int, model=None) -> None:
    """Refuse sampling an x_T on another grid than it was inverted on, naming the steps to set: the DDIM grid of
    ``steps`` on the MODEL's own σ table where it is given (Flux: 10000 entries), else on 1000."""
    origin = origin_of(x_T)
    if origin is not None:
        grid = noise_levels(model).grid(steps) if model is not None else timestep_grid(steps)
        try:
            origin.check_grid(grid)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None


def check_same_guidance(x_Ts: dict, cfg: float) -> None:
    """Under guidance, all x_T of one node must be sampled the same way (one negative for the whole run)."""
    if math.isclose(cfg, 1.0):
        return
    kinds = {name: origin.guidance for name, origin in ((n, origin_of(x)) for n, x in x_Ts.items()) if origin}
    if len(set(kinds.values())) > 1:
        said = ", ".join(f"{name} from a {kind} inversion" for name, kind in kinds.items())
        raise ValueError(f"Under cfg {cfg} these x_T need different negatives ({said}): invert them with the same "
                         "cfg_inversion, or set cfg to 1.")
    if len(kinds) > 1 and "null_text" in kinds.values():
        raise ValueError("Two null-text x_T carry two sets of per-step negative embeddings and one run has one "
                         "negative: invert them with cfg_inversion 'negative_prompt', or set cfg to 1.")


def sampling_inputs(x_T: dict, cfg: float, positive, negative):
    """(negative, negative_at) for sampling from ``x_T`` at ``cfg`` (its grid and model were checked by the base
    node): a negative-prompt inversion's positive becomes the negative; a null-text inversion's per-step negative
    embeddings are used.  Latents that did not come from DDIM Inversion pass unchanged."""
    origin = origin_of(x_T)
    if origin is None or math.isclose(cfg, 1.0) or origin.guidance == "plain":
        return negative, None
    if origin.guidance == "negative_prompt":
        log.info("h-space: x_T comes from a negative-prompt inversion; the positive conditioning is the negative.")
        return positive, None
    if not math.isclose(cfg, origin.guidance_scale):
        log.info("h-space: the null-text embeddings were optimised at cfg %s and are used at cfg %s.",
                 origin.guidance_scale, cfg)
    return negative, origin.negative_at
