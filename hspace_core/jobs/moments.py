"""Statistics of h that merge: count, per-timestep mean and the pooled within-timestep scatter, so PCA over any
number of images can be computed in shards, on any number of machines, and combined (Chan, Golub & LeVeque 1979,
"Updating formulae and a pairwise algorithm for computing sample variances": the pairwise update of the mean and
of the sum of squared deviations, here for a matrix of them).  ``HMoments.directions`` gives the directions of
``hspace_core.pca.pca_directions(..., form="global")`` on the same h, to float tolerance.

h with more than ``MAX_FEATURES`` features (a 256² pixel U-Net's middle h is 512×8×8 = 32768, SD 1.5's at 512 px
1280×8×8 = 81920) keep a randomised sketch of the scatter instead, S·Ω for one seeded D×ℓ test matrix Ω shared by
every shard, with the scatter's diagonal: both merge by the same pairwise update (multiplied by Ω), so shards still
combine into exactly the one-pass sketch, and the directions are those of its Nyström approximation (Tropp et al.
2017), near the exact ones where the spectrum decays (docs/batch.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..direction import Direction
from ..file_format import check_fingerprint, load_tensors, save_tensors
from ..pca import NORMALISATIONS, principal_axes
from ..sites import DEFAULT_SITE, check_same_site
from ..trajectory import HTrajectory, stack_trajectories

__all__ = ["HMoments", "MAX_FEATURES", "SKETCH_COLUMNS", "merge_all", "nystrom_eigen", "sketch_test_matrix"]

# The scatter matrix is D×D float64: 2 GiB at D = 16384 (SD 1.5's middle h at 512 px is 1280×8×8 = 81920: 50 GiB).
# Above it the sketch S·Ω is D×SKETCH_COLUMNS (40 MiB at D = 81920), good for k ≤ SKETCH_COLUMNS/2 directions.
MAX_FEATURES = 16384
SKETCH_COLUMNS = 64
SKETCH_SEED = 1_000_003  # every shard's Ω; written in each file and checked, so sketches of another Ω never add up


def sketch_test_matrix(features: int, columns: int = SKETCH_COLUMNS, seed: int = SKETCH_SEED) -> torch.Tensor:
    """Ω: a seeded standard-normal (features × columns) float64 test matrix on the CPU (its own generator)."""
    return torch.randn(features, columns, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nystrom_eigen(sketch: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the Nyström approximation Â = Y·(ΩᵀY)⁺·Yᵀ of a PSD
    matrix A from its sketch Y = A·Ω (Tropp, Yurtsever, Udell & Cevher 2017, "Fixed-rank approximation of a
    positive-semidefinite matrix from streaming data", Alg. 3): Y_ν = Y + ν·Ω with a shift ν at round-off,
    ΩᵀY_ν = LLᵀ, E = Y_ν·L⁻ᵀ = U·Σ·Vᵀ, so Â + ν·I ≈ EEᵀ = UΣ²Uᵀ and Λ = max(Σ² − ν, 0)."""
    nu = torch.finfo(sketch.dtype).eps * sketch.shape[0] ** 0.5 * torch.linalg.matrix_norm(sketch, 2)
    shifted = sketch + nu * omega
    core = omega.T @ shifted
    chol, info = torch.linalg.cholesky_ex((core + core.T) / 2)
    if int(info) != 0:
        raise ValueError("The h sketch is degenerate (nothing varies between the images along the sketch): "
                         "invert or capture different images.")
    e = torch.linalg.solve_triangular(chol, shifted.T, upper=False).T
    u, singular, _ = torch.linalg.svd(e, full_matrices=False)
    return (singular.square() - nu).clamp_min(0), u


@dataclass(frozen=True)
class HMoments:
    """``count`` images; ``mean`` (steps, D) float64, each timestep's mean h over them; ``scatter`` (D, D) float64,
    S = Σ_t Σ_i (h_t,i − mean_t)(h_t,i − mean_t)ᵀ: the scatter of the rows PCA's global form pools (every (image,
    timestep) row with its timestep's mean removed), or, for D > ``MAX_FEATURES``, None and ``sketch`` = S·Ω
    (D, ``SKETCH_COLUMNS``); ``diagonal`` diag(S) either way.  With the grid, model fingerprint, site and h shape
    they were read with, which a merge checks."""

    count: int
    mean: torch.Tensor = field(compare=False)
    scatter: torch.Tensor | None = field(compare=False)
    timesteps: tuple[int, ...]
    h_shape: tuple[int, ...]
    fingerprint: str = ""
    site: str = DEFAULT_SITE
    made_with: str = field(default="", compare=False)
    sketch: torch.Tensor | None = field(default=None, compare=False)
    diagonal: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        if (self.scatter is None) == (self.sketch is None):
            raise ValueError("h statistics hold either the scatter or its sketch.")
        if self.diagonal is None:
            if self.scatter is None:
                raise ValueError("A sketch of the scatter needs the scatter's diagonal.")
            object.__setattr__(self, "diagonal", self.scatter.diagonal().clone())

    @property
    def sketched(self) -> bool:
        return self.sketch is not None

    @classmethod
    def of(cls, trajectory: HTrajectory, sketch: bool | None = None) -> "HMoments":
        """The moments of one trajectory's images (its conditional rows, as ``pca_directions`` reads them); the
        scatter's sketch instead of the scatter when ``sketch`` (default: when D > ``MAX_FEATURES``)."""
        h, first = stack_trajectories(trajectory)
        features = h.shape[-1]
        h = h.to(torch.float64)
        mean = h.mean(1)
        centred = (h - mean[:, None]).reshape(-1, features)
        common = (first.timesteps, first.h_shape, first.fingerprint, first.site, first.made_with)
        if not (features > MAX_FEATURES if sketch is None else sketch):
            return cls(int(h.shape[1]), mean, centred.T @ centred, *common)
        return cls(int(h.shape[1]), mean, None, *common, sketch=centred.T @ (centred @ sketch_test_matrix(features)),
                   diagonal=centred.square().sum(0))

    def merge(self, other: "HMoments") -> "HMoments":
        """The moments of both sets of images (Chan et al.'s pairwise update, per timestep):
        n = n_a + n_b, δ_t = mean_b,t − mean_a,t, mean_t = mean_a,t + δ_t·n_b/n,
        scatter = scatter_a + scatter_b + (n_a·n_b/n)·Σ_t δ_t δ_tᵀ (a sketch: the same times Ω; its diagonal alike)."""
        if other.timesteps != self.timesteps:
            raise ValueError(f"These h statistics were read on other timesteps ({len(other.timesteps)} steps, t = "
                             f"{other.timesteps[:3]} …) than the first ({len(self.timesteps)} steps): run every shard "
                             "with the same steps.")
        if other.h_shape != self.h_shape:
            raise ValueError(f"h shapes differ ({self.h_shape} vs {other.h_shape}): use one model and image size.")
        check_fingerprint(other.fingerprint, self.fingerprint, "h statistics shard",
                          hint="compute every shard with the same model")
        check_same_site(other.site, self.site, "h statistics shard")
        if other.sketched != self.sketched or (self.sketched and other.sketch.shape != self.sketch.shape):
            raise ValueError("One h statistics shard holds the exact scatter and another a sketch of it (or a sketch "
                             "of another size): compute every shard with the same version of the job.")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        cross = self.count * other.count / n
        diagonal = self.diagonal + other.diagonal + cross * delta.square().sum(0)
        if self.sketched:
            omega = sketch_test_matrix(delta.shape[-1], self.sketch.shape[1])
            sketch = self.sketch + other.sketch + cross * (delta.T @ (delta @ omega))
            return dataclasses.replace(self, count=n, mean=mean, sketch=sketch, diagonal=diagonal)
        scatter = self.scatter + other.scatter + cross * (delta.T @ delta)
        return dataclasses.replace(self, count=n, mean=mean, scatter=scatter, diagonal=diagonal)

    @property
    def rows(self) -> int:
        """The number of pooled rows (image, timestep)."""
        return self.count * len(self.timesteps)

    def scale(self, normalisation: str) -> torch.Tensor:
        """``pca._position_scale`` from the scatter: "position" is the RMS over rows of each position's centred
        channel vector, √(Σ_c S_cp,cp / N); "standardise" each feature's standard deviation √(S_ii / (N − 1))."""
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {normalisation!r} is unknown; use one of {NORMALISATIONS}.")
        diagonal = self.diagonal
        if normalisation == "none":
            return torch.ones_like(diagonal)
        if normalisation == "standardise":
            return (diagonal / max(self.rows - 1, 1)).sqrt().clamp_min(1e-12)
        c, hh, ww = self.h_shape
        per_position = (diagonal.reshape(c, hh * ww).sum(0) / self.rows).sqrt().clamp_min(1e-12)
        return per_position[None].expand(c, -1).reshape(-1)

    def directions(self, k: int, *, normalisation: str = "position", name: str = "pca") -> list[Direction]:
        """The top ``k`` principal directions (``pca.principal_components`` from the scatter: the eigenvectors of
        diag(s)⁻¹·S·diag(s)⁻¹ are the right singular vectors of the scaled rows), each as long as one standard
        deviation of h along it, with ``pca_directions``' metadata.  From a sketch: the eigenvectors of the Nyström
        approximation of the scaled scatter (``nystrom_eigen`` with Ω̃ = diag(s)·Ω, whose sketch is
        diag(s)⁻¹·S·Ω), and the variance along each axis a that approximation's, Σ_j λ_j·(u_jᵀ(s⊙a))²."""
        if self.count < 2:
            raise ValueError(f"PCA needs at least 2 images, got {self.count}: add images.")
        s = self.scale(normalisation)
        denominator = max(self.rows - 1, 1)
        if self.sketched:
            if not 1 <= k <= self.sketch.shape[1] // 2:
                raise ValueError(f"k = {k} directions were asked for from a sketch of {self.sketch.shape[1]} "
                                 f"columns: set k between 1 and {self.sketch.shape[1] // 2}.")
            omega = sketch_test_matrix(self.sketch.shape[0], self.sketch.shape[1]) * s[:, None]
            eigenvalues, vectors = nystrom_eigen(self.sketch / s[:, None], omega)
            axes = principal_axes(eigenvalues.sqrt(), vectors.T, s, k, self.rows)
            variance = (eigenvalues[:, None] * (vectors.T @ (axes * s).T).square()).sum(0) / denominator
        else:
            eigenvalues, vectors = torch.linalg.eigh(self.scatter / s[:, None] / s[None])
            axes = principal_axes(eigenvalues.flip(0).clamp_min(0).sqrt(), vectors.flip(1).T, s, k, self.rows)
            variance = ((axes @ self.scatter) * axes).sum(1) / denominator
        explained = variance / (self.diagonal.sum() / denominator)
        meta = lambda i: {"method": "pca", "component": i, "explained_variance": float(explained[i]),
                          "normalisation": normalisation, "images": self.count,
                          **({"sketch_columns": int(self.sketch.shape[1])} if self.sketched else {})}
        return [Direction("global", (axes[i] * variance[i].sqrt()).float().reshape(self.h_shape),
                          fingerprint=self.fingerprint, name=f"{name} {i}", metadata=meta(i), site=self.site,
                          made_with=self.made_with)
                for i in range(k)]

    def save(self, path: str) -> None:
        second = {"sketch": self.sketch, "diagonal": self.diagonal} if self.sketched else {"scatter": self.scatter}
        save_tensors(path, {"mean": self.mean, **second}, "h_moments", count=self.count,
                     timesteps=list(self.timesteps), h_shape=list(self.h_shape), fingerprint=self.fingerprint,
                     site=self.site, made_with=self.made_with, **({"sketch_seed": SKETCH_SEED} if self.sketched else {}))

    @classmethod
    def load(cls, path: str) -> "HMoments":
        tensors, meta = load_tensors(path, "h_moments")
        if "sketch" in tensors and meta.get("sketch_seed") != SKETCH_SEED:
            raise ValueError(f"{path} holds a sketch made with another test matrix (seed {meta.get('sketch_seed')!r}, "
                             f"this version uses {SKETCH_SEED}); compute it again.")
        try:
            return cls(int(meta["count"]), tensors["mean"], tensors.get("scatter"), tuple(meta["timesteps"]),
                       tuple(meta["h_shape"]), meta.get("fingerprint", ""), meta.get("site", DEFAULT_SITE),
                       str(meta.get("made_with", "")), sketch=tensors.get("sketch"), diagonal=tensors.get("diagonal"))
        except KeyError as missing:
            raise ValueError(f"{path} is not a valid h statistics file (missing {missing}); compute it again.") from None


def merge_all(parts) -> HMoments:
    """Moments merged in the order given (so the same shards always give the same bits)."""
    parts = iter(parts)
    try:
        total = next(parts)
    except StopIteration:
        raise ValueError("No h statistics to merge: every shard failed or the folder is empty.") from None
    for part in parts:
        total = total.merge(part)
    return total

