"""h along a process: how it is kept (``HStorage``), the trajectory itself (``HTrajectory``), and an inversion's
result (``Inversion``, ``ReconstructionReport``).  CPU-resident float32 unless ``HStorage`` says otherwise."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .devices import host_ready, to_host, wide_dtype
from .file_format import check_fingerprint, checked_fields, load_tensors, save_tensors
from .settings import grid_label
from .sites import DEFAULT_SITE, check_site, common_site


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
        """One step's h as it is kept: a copy in ``dtype`` on the chosen device (detached).  From a CUDA device to the
        CPU the copy is asynchronous (pinned memory); off the CPU float16's range is checked once, in ``trajectory``."""
        dtype = H_DTYPES[self.dtype_for(h)]
        kept = to_host(h, dtype) if self.device == "cpu" else h.detach().to(h.device, dtype, copy=True)
        narrowed = dtype == torch.float16 and h.dtype != torch.float16
        if narrowed and h.device.type == "cpu" and not torch.isfinite(kept).all() and torch.isfinite(h).all():
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
        host_ready(hs)
        h = torch.stack(hs)
        if h.dtype == torch.float16 and h.device.type != "cpu" and not torch.isfinite(h).all():
            raise ValueError("h is beyond float16's range (65504) or not finite: keep h in float32 (h_storage).")
        return HTrajectory(tuple(kept), h, branches, fingerprint, source, site, self.dtype_for(hs[0]), device,
                           made_with=grid_label(timesteps, self.t_min))


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
    user converts to the dtype and device it computes in.  ``made_with`` records the grid (or a SAMPLER's sigmas) it
    was made on and from which t h was kept (``settings.grid_label``; by default its own timesteps').
    """

    timesteps: tuple[int, ...]
    h: torch.Tensor
    branches: tuple[str, ...] = ("single",)
    fingerprint: str = ""
    source: str = ""
    site: str = DEFAULT_SITE
    dtype: str = "float32"
    device: str = "cpu"
    made_with: str = field(default="", compare=False)
    file: str = field(default="", compare=False)  # the file it was loaded from (names its site record in a refusal)

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
        if not self.made_with:
            object.__setattr__(self, "made_with", grid_label(self.timesteps))

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

    def conditional(self) -> torch.Tensor:
        """The rows of the conditional branch (or the only branch), in float32: (steps, B, C, H, W)."""
        k = self.branches.index("cond") if "cond" in self.branches else 0
        return self.h.chunk(len(self.branches), dim=1)[k].float()

    def require_timesteps(self, needed, what: str = "this process", other_grid: str = "", widget=None) -> None:
        """Refuse, with the step count to set (``other_grid``: the fix to say instead, e.g. a SAMPLER's), when
        ``needed`` timesteps are not all on the captured grid.  ``widget`` (``NoiseLevels.widget_at_most``) gives
        the keep_h_from_t widget value of a table entry for the message (default: the entry, a 1000-entry table's)."""
        missing = sorted(set(int(t) for t in needed) - set(self.timesteps), reverse=True)
        if missing and max(missing) < min(self.timesteps):  # kept only from a timestep on (HStorage.t_min)
            widget = widget or int
            raise ValueError(
                f"The h trajectory holds h only for t ≥ {min(self.timesteps)} (it was captured with keep_h_from_t = "
                f"{widget(min(self.timesteps))} or so), but {what} needs h down to t = {missing[-1]}: capture it with "
                f"keep_h_from_t at most {widget(missing[-1])} (at most the t_edit it is used with; 0 keeps every "
                "step).")
        if missing:
            raise ValueError(
                f"The h trajectory was captured at {len(self.timesteps)} steps, but {what} needs h at t = "
                f"{missing[:4]}{' …' if len(missing) > 4 else ''}, which that grid does not have: "
                + (other_grid or f"set steps to {len(self.timesteps)} there (or capture the trajectory again with "
                                 "the steps you run)") + ".")

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
        save_tensors(path, {"h": self.h.cpu()}, "h_trajectory", timesteps=list(self.timesteps), branches=list(self.branches),
              fingerprint=self.fingerprint, source=self.source, site=self.site, made_with=self.made_with)

    @classmethod
    def load(cls, path: str, expect_fingerprint: str | None = None) -> "HTrajectory":
        tensors, meta = load_tensors(path, "h_trajectory")
        f, h = checked_fields(meta, "h_trajectory", path), tensors["h"]
        try:
            traj = cls(tuple(f["timesteps"]), h, tuple(f["branches"]), f["fingerprint"], f["source"],
                       meta.get("site", DEFAULT_SITE), precision_of(h), made_with=f["made_with"], file=path)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not a valid h-space h trajectory file ({error}); save it again with this "
                             "pack's Save node or pick another file.") from None
        if expect_fingerprint is not None:
            check_fingerprint(traj.fingerprint, expect_fingerprint, "h trajectory")
        return traj


def check_same_grid(a: HTrajectory, b: HTrajectory, name_a: str = "the first trajectory",
                    name_b: str = "the second") -> None:
    """Refuse two trajectories on different timesteps, naming the cause: keep_h_from_t (one holds only the top of
    the other's grid) or the steps."""
    if a.timesteps == b.timesteps:
        return
    short, long_ = sorted(((a, name_a), (b, name_b)), key=lambda item: len(item[0].timesteps))
    if long_[0].timesteps[:len(short[0].timesteps)] == short[0].timesteps:
        raise ValueError(f"{short[1]} holds h only for t ≥ {min(short[0].timesteps)} (captured with keep_h_from_t), "
                         f"{long_[1]} down to t = {min(long_[0].timesteps)}: capture both with the same keep_h_from_t "
                         "(0 keeps every step) and the same steps.")
    raise ValueError(f"{name_a} was captured at {len(a.timesteps)} steps and {name_b} at {len(b.timesteps)} (other "
                     "timesteps): capture both with the same steps.")


def stack_trajectories(trajectories: HTrajectory | Sequence[HTrajectory],
                       names: Sequence[str] | None = None) -> tuple[torch.Tensor, HTrajectory]:
    """Several trajectories (same grid, model, site and h shape) → their conditional rows (steps, N, C·H·W) and
    the first trajectory; ``names`` (e.g. "positive", "negative") say which one differs in a refusal."""
    if isinstance(trajectories, HTrajectory):
        trajectories = [trajectories]
    trajectories = list(trajectories)
    if not trajectories:
        raise ValueError("Give at least one h trajectory.")
    names = list(names or [f"trajectory {i + 1}" for i in range(len(trajectories))])
    first = trajectories[0]
    for other, name in zip(trajectories[1:], names[1:]):
        check_same_grid(first, other, names[0], name)
        if other.h_shape != first.h_shape:
            raise ValueError(f"h shapes differ ({first.h_shape} vs {other.h_shape}): use the same model and image size.")
        check_fingerprint(other.fingerprint, first.fingerprint, f"h trajectory ({name})",
                          hint=f"capture {names[0]} and {name} with the same MODEL")
    common_site(trajectories, "h trajectories")
    return torch.cat([t.conditional().flatten(2) for t in trajectories], dim=1), first


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
        wide = wide_dtype(reconstruction.device)  # float64 on the CPU only
        diff = reconstruction.to(wide) - reference.to(reconstruction.device, wide)
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

    def __repr__(self) -> str:
        """Says where h was read, since ``capture`` (the reconstruction from x_T) reads it elsewhere by default."""
        source = self.trajectory.source or "unknown"
        where = {"inversion": "along the inversion (h_source='inversion'); capture(model, x_T) reads h along the "
                              "reconstruction from x_T, which differs: compare with h_source='reconstruction'",
                 "reconstruction": "along the reconstruction from x_T (h_source='reconstruction'), as capture "
                                   "reads it"}.get(source, f"at {source!r}")
        report = f", PSNR {self.report.psnr:.2f} dB" if self.report is not None else ""
        return (f"Inversion(x_T {tuple(self.x_T.shape)}, {len(self.timesteps)} timesteps, convention="
                f"{self.convention!r}{report}; h {where})")

