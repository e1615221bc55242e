"""Where an inverted x_T came from, carried in the LATENT dict between nodes (a ComfyUI concern: the library's
processes take the grid and conditioning explicitly)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...hspace_core.settings import grid_label


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
