"""Statistics of h that merge: count, per-timestep mean and the pooled within-timestep scatter, so PCA over any
number of images can be computed in shards, on any number of machines, and combined (Chan, Golub & LeVeque 1979,
"Updating formulae and a pairwise algorithm for computing sample variances": the pairwise update of the mean and
of the sum of squared deviations, here for a matrix of them).  ``HMoments.directions`` gives the directions of
``hspace_core.pca.pca_directions(..., form="global")`` on the same h, to float tolerance."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..direction import Direction
from ..file_format import check_fingerprint, load_tensors, save_tensors
from ..pca import NORMALISATIONS, principal_axes
from ..sites import DEFAULT_SITE, check_same_site
from ..trajectory import HTrajectory, stack_trajectories

__all__ = ["HMoments", "MAX_FEATURES", "merge_all"]

# The scatter matrix is D×D float64: 2 GiB at D = 16384 (SD 1.5's middle h at 512 px is 1280×8×8 = 81920: 50 GiB).
MAX_FEATURES = 16384


@dataclass(frozen=True)
class HMoments:
    """``count`` images; ``mean`` (steps, D) float64, each timestep's mean h over them; ``scatter`` (D, D) float64,
    Σ_t Σ_i (h_t,i − mean_t)(h_t,i − mean_t)ᵀ: the scatter of the rows PCA's global form pools (every (image,
    timestep) row with its timestep's mean removed).  With the grid, model fingerprint, site and h shape they were
    read with, which a merge checks."""

    count: int
    mean: torch.Tensor = field(compare=False)
    scatter: torch.Tensor = field(compare=False)
    timesteps: tuple[int, ...]
    h_shape: tuple[int, ...]
    fingerprint: str = ""
    site: str = DEFAULT_SITE
    made_with: str = field(default="", compare=False)

    @classmethod
    def of(cls, trajectory: HTrajectory) -> "HMoments":
        """The moments of one trajectory's images (its conditional rows, as ``pca_directions`` reads them)."""
        h, first = stack_trajectories(trajectory)
        features = h.shape[-1]
        if features > MAX_FEATURES:
            raise ValueError(f"h has {features} features: its {features}×{features} scatter matrix is too large to "
                             f"merge (at most {MAX_FEATURES}); run PCA on fewer images with the PCA node instead.")
        h = h.to(torch.float64)
        mean = h.mean(1)
        centred = (h - mean[:, None]).reshape(-1, features)
        return cls(int(h.shape[1]), mean, centred.T @ centred, first.timesteps, first.h_shape, first.fingerprint,
                   first.site, first.made_with)

    def merge(self, other: "HMoments") -> "HMoments":
        """The moments of both sets of images (Chan et al.'s pairwise update, per timestep):
        n = n_a + n_b, δ_t = mean_b,t − mean_a,t, mean_t = mean_a,t + δ_t·n_b/n,
        scatter = scatter_a + scatter_b + (n_a·n_b/n)·Σ_t δ_t δ_tᵀ."""
        if other.timesteps != self.timesteps:
            raise ValueError(f"These h statistics were read on other timesteps ({len(other.timesteps)} steps, t = "
                             f"{other.timesteps[:3]} …) than the first ({len(self.timesteps)} steps): run every shard "
                             "with the same steps.")
        if other.h_shape != self.h_shape:
            raise ValueError(f"h shapes differ ({self.h_shape} vs {other.h_shape}): use one model and image size.")
        check_fingerprint(other.fingerprint, self.fingerprint, "h statistics shard",
                          hint="compute every shard with the same model")
        check_same_site(other.site, self.site, "h statistics shard")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = self.scatter + other.scatter + (self.count * other.count / n) * (delta.T @ delta)
        return dataclasses.replace(self, count=n, mean=mean, scatter=scatter)

    @property
    def rows(self) -> int:
        """The number of pooled rows (image, timestep)."""
        return self.count * len(self.timesteps)

    def scale(self, normalisation: str) -> torch.Tensor:
        """``pca._position_scale`` from the scatter: "position" is the RMS over rows of each position's centred
        channel vector, √(Σ_c S_cp,cp / N); "standardise" each feature's standard deviation √(S_ii / (N − 1))."""
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {normalisation!r} is unknown; use one of {NORMALISATIONS}.")
        diagonal = self.scatter.diagonal()
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
        deviation of h along it, with ``pca_directions``' metadata."""
        if self.count < 2:
            raise ValueError(f"PCA needs at least 2 images, got {self.count}: add images.")
        s = self.scale(normalisation)
        eigenvalues, vectors = torch.linalg.eigh(self.scatter / s[:, None] / s[None])
        axes = principal_axes(eigenvalues.flip(0).clamp_min(0).sqrt(), vectors.flip(1).T, s, k, self.rows)
        denominator = max(self.rows - 1, 1)
        variance = ((axes @ self.scatter) * axes).sum(1) / denominator
        explained = variance / (self.scatter.trace() / denominator)
        meta = lambda i: {"method": "pca", "component": i, "explained_variance": float(explained[i]),
                          "normalisation": normalisation, "images": self.count}
        return [Direction("global", (axes[i] * variance[i].sqrt()).float().reshape(self.h_shape),
                          fingerprint=self.fingerprint, name=f"{name} {i}", metadata=meta(i), site=self.site,
                          made_with=self.made_with)
                for i in range(k)]

    def save(self, path: str) -> None:
        save_tensors(path, {"mean": self.mean, "scatter": self.scatter}, "h_moments", count=self.count,
                     timesteps=list(self.timesteps), h_shape=list(self.h_shape), fingerprint=self.fingerprint,
                     site=self.site, made_with=self.made_with)

    @classmethod
    def load(cls, path: str) -> "HMoments":
        tensors, meta = load_tensors(path, "h_moments")
        try:
            return cls(int(meta["count"]), tensors["mean"], tensors["scatter"], tuple(meta["timesteps"]),
                       tuple(meta["h_shape"]), meta.get("fingerprint", ""), meta.get("site", DEFAULT_SITE),
                       str(meta.get("made_with", "")))
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

