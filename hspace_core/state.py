"""What flows between processes (and between ComfyUI nodes): frozen, validated, savable; CPU-resident float32
except h trajectories kept otherwise on purpose (``HStorage``)."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .implicit import ImplicitDirectionNet
from .sites import DEFAULT_SITE, check_site
from .schedules import timestep_grid

log = logging.getLogger("hspace")

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class EditSchedule:
    """The three phases of Asyrp's process: [T, t_edit] edit, (t_edit, t_boost] plain DDIM, (t_boost, 0] boost.

    ``eta`` is the DDIM η outside the boost phase (0 = deterministic); ``eta_boost`` is used for t < t_boost.
    ``clip_x0`` clips every predicted x0 to [−clip_x0, clip_x0] (pixel models sampled from pure noise; never for
    latents); None leaves P_t unclipped, which keeps reconstructions of inversions exact.
    """

    num_steps: int = 40
    t_edit: int = 400
    t_boost: int = 0
    eta: float = 0.0
    eta_boost: float = 1.0
    grid: str = "asyrp"
    num_train_timesteps: int = 1000
    clip_x0: float | None = None

    def __post_init__(self):
        if self.clip_x0 is not None and not self.clip_x0 > 0:
            raise ValueError(f"clip_x0 must be > 0 (e.g. 1 for images in [-1, 1]) or None, got {self.clip_x0}.")
        T = self.num_train_timesteps
        if not 1 <= self.num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], got {self.num_steps}.")
        for name in ("t_edit", "t_boost"):
            v = getattr(self, name)
            if not 0 <= v <= T - 1:
                raise ValueError(f"{name} must be a timestep in [0, {T - 1}], got {v}.")
        if self.t_edit < self.t_boost:
            raise ValueError(
                f"t_edit ({self.t_edit}) is below t_boost ({self.t_boost}): the edit interval [T, t_edit] must end "
                "before quality boosting starts. Raise t_edit or lower t_boost."
            )
        for name in ("eta", "eta_boost"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}.")

    @classmethod
    def reconstruction(cls, num_steps: int, grid: str = "asyrp", num_train_timesteps: int = 1000) -> "EditSchedule":
        """The deterministic reverse process with no edit and no boost (regenerating an inverted x_T)."""
        return cls(num_steps, t_edit=0, t_boost=0, grid=grid, num_train_timesteps=num_train_timesteps)

    def timesteps(self) -> tuple[int, ...]:
        return timestep_grid(self.num_steps, self.num_train_timesteps, self.grid)

    def eta_at(self, t: int) -> float:
        return self.eta_boost if t < self.t_boost else self.eta

    def edits_at(self, t: int) -> bool:
        return t >= self.t_edit


@dataclass(frozen=True)
class StyleCalibration:
    """InjectFusion's style calibration strength ω (see ``ddim.calibrated_x_t``), as in the official code:
    ω = 0 turns calibration off (the plain asymmetric injection step); for ω in (0, 1] x_t is moved by
    dx = √ᾱ·dP + ω·√(1−ᾱ)·dε and the step is taken with the unedited network.  ω = 1 cancels the move up to the
    std renormalisation of P'_t, so it stays close to (not equal to) the style image's reconstruction."""

    omega: float = 0.3

    def __post_init__(self):
        if not 0 <= self.omega <= 1:
            raise ValueError(f"ω must be in [0, 1], got {self.omega}.")


@dataclass(frozen=True)
class QualityBoost:
    """Asyrp's quality boosting: stochastic DDIM (η) for t < t_boost, noise from ``seed``."""

    t_boost: int = 200
    eta: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.eta <= 1:
            raise ValueError(f"η must be in [0, 1], got {self.eta}.")
        if self.t_boost < 0:
            raise ValueError(f"t_boost must be ≥ 0, got {self.t_boost}.")


H_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def precision_of(h: torch.Tensor) -> str:
    """The ``H_DTYPES`` name that keeps ``h`` exactly: float16 stays float16, anything else is float32."""
    return "float16" if h.dtype == torch.float16 else "float32"


@dataclass(frozen=True)
class HStorage:
    """How a capture or inversion keeps h: precision ``dtype`` (float32, float16, or "model": the precision the model
    computed h in — float16 stays float16, anything else float32 — which loses nothing), ``device`` "cpu" or "model"
    (where the model computed h: no copy back and forth on a GPU, but it stays in GPU memory) and only the
    timesteps t ≥ ``t_min`` (an injection or interpolation with t_edit = t_min reads no other)."""

    dtype: str = "float32"
    device: str = "cpu"
    t_min: int = 0

    def __post_init__(self):
        if self.dtype not in (*H_DTYPES, "model"):
            raise ValueError(f"h storage dtype {self.dtype!r} is unknown; use one of {(*H_DTYPES, 'model')}.")
        if self.device not in ("cpu", "model"):
            raise ValueError(f"h storage device {self.device!r} is unknown; use 'cpu' or 'model'.")
        if self.t_min < 0:
            raise ValueError(f"t_min must be ≥ 0 (0 keeps h at every step), got {self.t_min}.")

    def keeps(self, t: int) -> bool:
        return int(t) >= self.t_min

    def put(self, h: torch.Tensor) -> torch.Tensor:
        """One step's h as it is kept: a copy in ``dtype`` on the chosen device (detached)."""
        dtype = H_DTYPES[self.dtype_for(h)]
        kept = h.detach().to("cpu" if self.device == "cpu" else h.device, dtype, copy=True)
        narrowed = dtype == torch.float16 and h.dtype != torch.float16
        if narrowed and not torch.isfinite(kept).all() and torch.isfinite(h).all():
            raise ValueError(f"h reaches {float(h.abs().max()):.3g}, beyond float16's range (65504): keep h in "
                             "float32 (h_storage).")
        return kept

    def dtype_for(self, h: torch.Tensor) -> str:
        """The precision ``h`` is kept in (see ``dtype``)."""
        return precision_of(h) if self.dtype == "model" else self.dtype

    def trajectory(self, timesteps, hs: list, branches, fingerprint: str, source: str,
                   site: str = DEFAULT_SITE) -> "HTrajectory":
        """The trajectory of the kept steps (``hs`` already ``put``) of the grid ``timesteps``."""
        kept = [t for t in timesteps if self.keeps(t)]
        if not kept:
            raise ValueError(f"No step of the grid (t = {max(timesteps)} … {min(timesteps)}) is at t ≥ {self.t_min}: "
                             "lower keep_h_from_t (the t_edit you will use) so that some h is kept.")
        device = "cpu" if self.device == "cpu" else str(hs[0].device)
        return HTrajectory(tuple(kept), torch.stack(hs), branches, fingerprint, source, site, self.dtype_for(hs[0]),
                           device)


@dataclass(frozen=True)
class HTrajectory:
    """h_t (the U-Net middle-block output) at each visited timestep.

    ``h`` is (steps, rows, C, H, W); rows are branch-major: all images of ``branches[0]``, then of
    ``branches[1]`` (``("uncond", "cond")`` under classifier-free guidance, ``("single",)`` otherwise).
    ``timesteps`` is the grid it was captured on (decreasing); h is looked up only at those timesteps.
    ``source`` says where h was read: "inversion" (along DDIM inversion, InjectFusion's content h),
    "reconstruction" (along the reverse process from x_T) or "" (unknown, e.g. files of older versions).
    ``site`` is the block h was read at (``hspace_core.sites``; files without one were read at "middle").
    h is kept as ``dtype`` (float32 or float16) on ``device`` (see ``HStorage``); ``at`` returns it so, and every
    user converts to the dtype and device it computes in.
    """

    timesteps: tuple[int, ...]
    h: torch.Tensor
    branches: tuple[str, ...] = ("single",)
    fingerprint: str = ""
    source: str = ""
    site: str = DEFAULT_SITE
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        check_site(self.site)
        h = torch.as_tensor(self.h)
        if h.dim() != 5:
            raise ValueError(f"An h trajectory is (steps, rows, C, H, W); got shape {tuple(h.shape)}.")
        if h.shape[0] != len(self.timesteps):
            raise ValueError(f"{len(self.timesteps)} timesteps but {h.shape[0]} h tensors.")
        if h.shape[1] % len(self.branches):
            raise ValueError(f"{h.shape[1]} rows cannot be split into branches {self.branches}.")
        if not torch.isfinite(h).all():
            raise ValueError("The h trajectory contains NaN or inf; the model or its input diverged.")
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        object.__setattr__(self, "branches", tuple(self.branches))
        if self.dtype not in H_DTYPES:
            raise ValueError(f"h trajectory dtype {self.dtype!r} is unknown; use one of {tuple(H_DTYPES)}.")
        object.__setattr__(self, "device", str(torch.device(self.device)))
        object.__setattr__(self, "h", h.detach().to(self.device, H_DTYPES[self.dtype]).contiguous())

    @property
    def batch_size(self) -> int:
        return self.h.shape[1] // len(self.branches)

    @property
    def h_shape(self) -> tuple[int, int, int]:
        return tuple(self.h.shape[2:])

    @property
    def nbytes(self) -> int:
        return self.h.numel() * self.h.element_size()

    def index_of(self, t: int) -> int:
        """Index of timestep t in the captured grid; a timestep that was not captured is refused."""
        try:
            return self.timesteps.index(int(t))
        except ValueError:
            raise ValueError(
                f"This h trajectory was captured on a {len(self.timesteps)}-step grid and has no h at t={t}: "
                f"set steps to {len(self.timesteps)} where it is used, or capture it again at the steps you run."
            ) from None

    def at(self, t: int, branch: str | None = None) -> torch.Tensor:
        """h at captured timestep t, for one branch (rows of that branch) or all rows."""
        h = self.h[self.index_of(t)]
        if branch is None:
            return h
        return h.chunk(len(self.branches))[self.branches.index(branch)]

    def require_timesteps(self, needed, what: str = "this process") -> None:
        """Refuse, with the step count to set, when ``needed`` timesteps are not all on the captured grid."""
        missing = sorted(set(int(t) for t in needed) - set(self.timesteps), reverse=True)
        if missing:
            raise ValueError(
                f"The h trajectory was captured at {len(self.timesteps)} steps, but {what} needs h at t = "
                f"{missing[:4]}{' …' if len(missing) > 4 else ''}, which that grid does not have: set steps to "
                f"{len(self.timesteps)} there (or capture the trajectory again with the steps you run)."
            )

    def only_at(self, timesteps) -> "HTrajectory":
        """The trajectory at these captured timesteps only (what a process reads; the rest need not be kept
        or moved).  A timestep that was not captured is refused, as in ``index_of``."""
        wanted = set(int(t) for t in timesteps)
        self.require_timesteps(wanted)
        if wanted == set(self.timesteps):
            return self
        keep = [k for k, t in enumerate(self.timesteps) if t in wanted]
        contiguous = bool(keep) and keep == list(range(keep[0], keep[-1] + 1))  # e.g. t ≥ t_edit: a view
        h = self.h[keep[0]:keep[-1] + 1] if contiguous else self.h[keep]
        return dataclasses.replace(self, timesteps=tuple(self.timesteps[k] for k in keep), h=h)

    def select(self, indices) -> "HTrajectory":
        """The trajectory of some images of the batch (in every branch)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        rows = torch.cat([idx + k * self.batch_size for k in range(len(self.branches))])
        return dataclasses.replace(self, h=self.h[:, rows])

    def save(self, path: str) -> None:
        _save(path, {"h": self.h.cpu()}, "h_trajectory", timesteps=list(self.timesteps), branches=list(self.branches),
              fingerprint=self.fingerprint, source=self.source, site=self.site)

    @classmethod
    def load(cls, path: str, expect_fingerprint: str | None = None) -> "HTrajectory":
        tensors, meta = _load(path, "h_trajectory")
        h = tensors["h"]
        traj = cls(tuple(meta["timesteps"]), h, tuple(meta["branches"]), meta["fingerprint"], meta.get("source", ""),
                   meta.get("site", DEFAULT_SITE), precision_of(h))
        if expect_fingerprint is not None:
            check_fingerprint(traj.fingerprint, expect_fingerprint, "h trajectory")
        return traj


@dataclass(frozen=True)
class Direction:
    """A direction in h-space: Δh (global), Δh_t (per timestep) or an implicit function f_t(h_t, t).

    ``delta`` is (C, H, W) for ``global``; (steps, C, H, W) with ``timesteps`` for ``per_timestep``.
    ``fn`` is a callable f(h, t) → Δh for ``implicit`` (Asyrp's learnt f_t; an ``ImplicitDirectionNet`` can be
    saved).  ``scale`` multiplies every Δh.  A direction learnt with ``train_steps`` DDIM steps (in ``metadata``)
    is rescaled by train_steps / steps when applied with another number of steps, as the official Asyrp code does.
    ``site`` is the block whose h it moves (``hspace_core.sites``; files without one: "middle").
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
            raise ValueError(
                f"This direction was made for h of shape {self.h_shape} but the model's h is {tuple(h.shape[1:])}: "
                "use a direction made with this model at this image size."
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
                         metadata=self.metadata, scale=self.scale, site=self.site)

    def save(self, path: str) -> None:
        common = dict(form=self.form, timesteps=list(self.timesteps), fingerprint=self.fingerprint, name=self.name,
                      extra=self.metadata, scale=self.scale, h_shape=list(self.h_shape), site=self.site)
        if self.form != "implicit":
            _save(path, {"delta": self.delta}, "direction", **common)
            return
        if not isinstance(self.fn, ImplicitDirectionNet):
            raise ValueError("Only implicit directions made of an ImplicitDirectionNet (learnt or loaded f_t) can be saved.")
        tensors = {f"fn.{k}": v for k, v in self.fn.tensors().items()}
        _save(path, tensors, "direction", fn_config=self.fn.config, **common)

    @classmethod
    def load(cls, path: str) -> "Direction":
        tensors, meta = _load(path, "direction")
        common = dict(fingerprint=meta["fingerprint"], name=meta.get("name", ""), metadata=meta.get("extra", {}),
                      scale=float(meta.get("scale", 1.0)), site=meta.get("site", DEFAULT_SITE))
        if meta["form"] == "implicit":
            fn = ImplicitDirectionNet.from_tensors(meta["fn_config"], {k[3:]: v for k, v in tensors.items()})
            return cls("implicit", fn=fn, h_shape=tuple(meta.get("h_shape", ())), **common)
        return cls(meta["form"], tensors["delta"], tuple(meta["timesteps"]), **common)


@dataclass(frozen=True)
class ReconstructionReport:
    """How well regenerate(invert(x)) returns x: pooled over the batch (``mse``, ``psnr``, ``max_abs_error``,
    ``rmse``) and per image (``psnr_per_image``, ``rmse_per_image``), so one bad image does not hide in the mean.

    PSNR = 10·log10(range² / MSE) with range = 2 for images in [−1, 1]; RMSE = √MSE.
    """

    mse: float
    psnr: float
    max_abs_error: float
    psnr_per_image: tuple[float, ...] = ()
    rmse_per_image: tuple[float, ...] = ()

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)

    @classmethod
    def compare(cls, reference: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 2.0) -> "ReconstructionReport":
        diff = (reconstruction.double() - reference.double())
        per_image = diff.pow(2).flatten(1).mean(1) if diff.dim() > 1 else diff.pow(2).mean()[None]
        return cls(float(diff.pow(2).mean()), _psnr(float(diff.pow(2).mean()), data_range), float(diff.abs().max()),
                   tuple(_psnr(float(m), data_range) for m in per_image), tuple(float(m) ** 0.5 for m in per_image))


def _psnr(mse: float, data_range: float) -> float:
    """10·log10(range² / MSE); inf for an exact match."""
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


@dataclass(frozen=True)
class Inversion:
    """DDIM inversion of a batch: x_T, the latent path x_t (clean input first), h along the way."""

    x_T: torch.Tensor
    latents: torch.Tensor  # (steps + 1, B, ...): the input, then x_t for t in the grid, ascending
    timesteps: tuple[int, ...]  # the grid, decreasing (sampling order)
    trajectory: HTrajectory  # h from ``trajectory.source``: the inversion pass or the reconstruction
    report: ReconstructionReport | None = None
    reconstruction: torch.Tensor | None = None
    convention: str = "seed"


@functools.lru_cache(maxsize=64)
def _note_interpolated(name: str, steps: int) -> None:
    log.info("%s was made on a %d-step grid; Δh at other timesteps is interpolated linearly in t.", name, steps)


def check_fingerprint(found: str, expected: str, what: str, hint: str = "use the model it was made with") -> None:
    """Raise if a saved object was made with another model; ``hint`` says what to change."""
    if found and expected and found != expected:
        f_arch, e_arch = found.split("/")[0], expected.split("/")[0]
        part = "architecture" if f_arch != e_arch else "weights"
        raise ValueError(
            f"This {what} was made with a model of different {part} (fingerprint {found}) than the one given "
            f"({expected}); {hint}."
        )


def _save(path: str, tensors: dict, kind: str, **meta) -> None:
    meta = {"kind": kind, "format_version": FORMAT_VERSION, **meta}
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"hspace": json.dumps(meta), "shapes": json.dumps(shapes),
                        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")})


def _load(path: str, kind: str) -> tuple[dict, dict]:
    """Read an h-space safetensors file of ``kind``; a file that is not one (empty, truncated, random bytes, a huge
    header, metadata that is not JSON or lacks a key) raises a ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    label = {"h_trajectory": "h trajectory", "direction": "direction"}.get(kind, kind)

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path} is not a valid h-space {label} file ({reason}); save it again with this pack's "
                          f"Save node or pick another file.")

    try:
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("hspace")
        tensors = load_file(path) if raw is not None else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise invalid(f"not a readable safetensors file: {error}") from None
    if raw is None:
        raise invalid("no 'hspace' metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise invalid("its metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise invalid("its metadata is not a JSON object")
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, not a {kind!r}: pick a {label} file.")
    implicit = meta.get("form") == "implicit"
    needs = {"h_trajectory": ("timesteps", "branches", "fingerprint", "h"),
             "direction": ("form", "fingerprint", *(("fn_config",) if implicit else ("timesteps", "delta")))}
    missing = [key for key in needs.get(kind, ()) if key not in meta and key not in tensors]
    if missing:
        raise invalid(f"missing {', '.join(missing)}")
    return tensors, meta
