"""A direction in h-space (Asyrp's Δh): global, per timestep, or an implicit function f_t(h_t, t)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .file_format import checked_fields, load_tensors, save_tensors
from .implicit import ImplicitDirectionNet
from .sites import DEFAULT_SITE, check_site

log = logging.getLogger("hspace")


@dataclass(frozen=True)
class Direction:
    """A direction in h-space: Δh (global), Δh_t (per timestep) or an implicit function f_t(h_t, t).

    ``delta`` is (C, H, W) for ``global``; (steps, C, H, W) with ``timesteps`` for ``per_timestep``.
    ``fn`` is a callable f(h, t) → Δh for ``implicit`` (Asyrp's learnt f_t; an ``ImplicitDirectionNet`` can be
    saved).  ``scale`` multiplies every Δh.  A direction learnt with ``train_steps`` DDIM steps (in ``metadata``)
    is rescaled by train_steps / steps when applied with another number of steps, as the official Asyrp code does.
    ``site`` is the block whose h it moves (``hspace_core.sites``; files without one: "middle").  ``made_with``
    says which window / grid it was made with (a CLIP-trained direction: its training window; one from examples:
    its trajectories' record; "" when unknown, e.g. files of older versions).
    """

    form: str
    delta: torch.Tensor | None = None
    timesteps: tuple[int, ...] = ()
    fn: Callable[[torch.Tensor, int], torch.Tensor] | None = field(default=None, compare=False)
    h_shape: tuple[int, ...] = ()
    fingerprint: str = ""
    name: str = ""
    metadata: dict = field(default_factory=dict, compare=False)
    scale: float = 1.0
    site: str = DEFAULT_SITE
    made_with: str = field(default="", compare=False)
    file: str = field(default="", compare=False)  # the file it was loaded from (names its site record in a refusal)

    def __post_init__(self):
        check_site(self.site)
        if not math.isfinite(self.scale):
            raise ValueError(f"A direction's scale must be finite, got {self.scale}.")
        if self.form not in ("global", "per_timestep", "implicit"):
            raise ValueError(f"Direction form {self.form!r} is unknown; use global, per_timestep or implicit.")
        if self.form == "implicit":
            if self.fn is None:
                raise ValueError("An implicit direction needs fn(h, t) → Δh.")
            return
        d = torch.as_tensor(self.delta).detach().to("cpu", torch.float32).contiguous()
        want = 3 if self.form == "global" else 4
        if d.dim() != want:
            raise ValueError(f"A {self.form} direction's delta must have rank {want}, got shape {tuple(d.shape)}.")
        if self.form == "per_timestep" and d.shape[0] != len(self.timesteps):
            raise ValueError(f"{len(self.timesteps)} timesteps but {d.shape[0]} per-timestep deltas.")
        if not torch.isfinite(d).all():
            raise ValueError("The direction contains NaN or inf.")
        object.__setattr__(self, "delta", d)
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        object.__setattr__(self, "h_shape", tuple(d.shape[-3:]))

    def at(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """Δh for this h and timestep, shaped to broadcast against h (rows, C, H, W)."""
        if self.form == "implicit":
            return self.scale * self.fn(h, t)
        if self.h_shape != tuple(h.shape[1:]):
            if self.file:  # the h it moves is found by the site its file records: that record may be wrong
                raise ValueError(
                    f"{self.file} records the h site {self.site!r}, where this model's h is {tuple(h.shape[1:])}, but "
                    f"its Δh is {self.h_shape}: the file's site record does not match its Δh (if the record is "
                    "wrong, save the direction again from what made it), or it was made with another model or "
                    "image size: use a direction made with this model at this image size.")
            raise ValueError(
                f"This direction was made for h of shape {self.h_shape} but the model's h at site {self.site!r} is "
                f"{tuple(h.shape[1:])}: use a direction made with this model at this image size."
            )
        d = self.delta if self.form == "global" else self.delta_at(t)
        return (self.scale * d).to(h.device, h.dtype)[None]

    def delta_at(self, t: int) -> torch.Tensor:
        """Δh_t of a per-timestep direction.  At a timestep it was not made at, Δh is interpolated linearly in t
        between the two nearest timesteps it has (held at its first / last outside them), and a log line says so."""
        t = int(t)
        if t in self.timesteps:
            return self.delta[self.timesteps.index(t)]
        _note_interpolated(self.name or "per-timestep direction", len(self.timesteps))
        ts = torch.tensor(self.timesteps[::-1], dtype=torch.float64)  # increasing
        k = int(torch.searchsorted(ts, float(t)))
        if k == 0 or k == len(ts):
            return self.delta[len(ts) - 1 - min(k, len(ts) - 1)]
        lo, hi = float(ts[k - 1]), float(ts[k])
        w = (t - lo) / (hi - lo)
        i_lo, i_hi = len(ts) - k, len(ts) - 1 - k
        return torch.lerp(self.delta[i_lo], self.delta[i_hi], w)

    def scaled(self, factor: float) -> "Direction":
        return dataclasses.replace(self, scale=self.scale * float(factor))

    def step_scale(self, num_steps: int) -> float:
        """train_steps / num_steps for a direction learnt on another number of DDIM steps, else 1."""
        train_steps = self.metadata.get("train_steps")
        return float(train_steps) / num_steps if train_steps else 1.0

    def global_mean(self) -> "Direction":
        """The mean over timesteps of a per-timestep direction, as one global Δh."""
        if self.form != "per_timestep":
            raise ValueError("Only a per_timestep direction has a mean over timesteps.")
        return Direction("global", self.delta.mean(0), fingerprint=self.fingerprint, name=self.name,
                         metadata=self.metadata, scale=self.scale, site=self.site, made_with=self.made_with)

    def save(self, path: str) -> None:
        common = dict(form=self.form, timesteps=list(self.timesteps), fingerprint=self.fingerprint, name=self.name,
                      extra=self.metadata, scale=self.scale, h_shape=list(self.h_shape), site=self.site,
                      made_with=self.made_with)
        if self.form != "implicit":
            save_tensors(path, {"delta": self.delta}, "direction", **common)
            return
        if not isinstance(self.fn, ImplicitDirectionNet):
            raise ValueError("Only implicit directions made of an ImplicitDirectionNet (learnt or loaded f_t) can be saved.")
        tensors = {f"fn.{k}": v for k, v in self.fn.tensors().items()}
        save_tensors(path, tensors, "direction", fn_config=self.fn.config, **common)

    @classmethod
    def load(cls, path: str) -> "Direction":
        """Read a direction file; every metadata field is checked by name, type and range (``checked_fields``) and
        any refusal names the file."""
        tensors, meta = load_tensors(path, "direction")
        f = checked_fields(meta, "direction", path)
        common = dict(fingerprint=f["fingerprint"], name=f["name"], metadata=f["extra"], scale=float(f["scale"]),
                      site=meta.get("site", DEFAULT_SITE), made_with=f["made_with"], file=path)
        try:
            if f["form"] == "implicit":
                fn = ImplicitDirectionNet.from_tensors(f["fn_config"], {k[3:]: v for k, v in tensors.items()})
                return cls("implicit", fn=fn, h_shape=tuple(f["h_shape"]), **common)
            return cls(f["form"], tensors["delta"], tuple(f["timesteps"]), **common)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a valid h-space direction file ({error}); save it again with this "
                             "pack's Save node or pick another file.") from None


@functools.lru_cache(maxsize=64)
def _note_interpolated(name: str, steps: int) -> None:
    log.info("%s was made on a %d-step grid; Δh at other timesteps is interpolated linearly in t.", name, steps)

