"""Gaussian voxel densities (paper eq. 1 and 2), batched and differentiable in both directions.

Each particle gets its own channel on a cubic ``d``×``d``×``d`` grid spanning ``[-r_grid/2, r_grid/2]``
(nm) per axis.  The Gaussian is separable, so densities are outer products of three 1-D profiles
and coordinates come back from the three 1-D marginals: work and memory per axis scale with ``d``,
never with a ``d³ × N`` distance tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: particles must stay this many σ inside the grid edge for their density not to be truncated.
EDGE_SIGMAS = 3.0
#: 1-D profiles are exactly 0 beyond this many σ (below exp(-24.5) = 2.3e-11 of the peak), so that a density,
#: a product of three profiles, never holds float32 subnormals (< 1.2e-38): on CPU they slow every convolution
#: that reads them about 15-fold (a chignolin training step: 4.4 s -> 0.9 s, benchmarks/cln/README.md).
PROFILE_CUTOFF_SIGMAS = 7.0


@dataclass(frozen=True)
class VoxelGrid:
    """Grid of ``d`` points per axis over a cube of width ``r_grid`` nm; Gaussian width ``sigma`` nm."""

    d: int = 10
    r_grid: float = 2.2
    sigma: float = 0.16

    def __post_init__(self) -> None:
        if self.d < 2 or self.r_grid <= 0 or self.sigma <= 0:
            raise ValueError(f"invalid voxel grid {self}: need d >= 2, r_grid > 0, sigma > 0")
        if self.max_radius <= 0:
            raise ValueError(f"invalid voxel grid {self}: r_grid/2 must exceed {EDGE_SIGMAS:g} sigma "
                             f"({EDGE_SIGMAS * self.sigma:.3f} nm) so that particles fit inside it")

    @property
    def spacing(self) -> float:
        return self.r_grid / (self.d - 1)

    @property
    def max_radius(self) -> float:
        """Largest |coordinate| (nm) a particle may have per axis without truncating its density."""
        return self.r_grid / 2 - EDGE_SIGMAS * self.sigma

    def axis(self, like: torch.Tensor) -> torch.Tensor:
        return torch.linspace(-self.r_grid / 2, self.r_grid / 2, self.d, dtype=like.dtype, device=like.device)

    def profiles(self, coords: torch.Tensor) -> torch.Tensor:
        """1-D Gaussian profiles ``(..., N, 3, d)`` of coordinates ``(..., N, 3)``, cut to 0 beyond
        :data:`PROFILE_CUTOFF_SIGMAS`."""
        u2 = ((coords.unsqueeze(-1) - self.axis(coords)) / self.sigma) ** 2
        return torch.exp(-0.5 * u2).masked_fill(u2 > PROFILE_CUTOFF_SIGMAS**2, 0.0)

    def voxelize(self, coords: torch.Tensor) -> torch.Tensor:
        """Densities ``(..., N, d, d, d)`` (peak 1, eq. 1) of coordinates ``(..., N, 3)`` in nm."""
        p = self.profiles(coords)
        gx, gy, gz = p[..., 0, :], p[..., 1, :], p[..., 2, :]
        return gx[..., :, None, None] * gy[..., None, :, None] * gz[..., None, None, :]

    def coordinates(self, density: torch.Tensor) -> torch.Tensor:
        """Density-weighted mean positions ``(..., N, 3)`` (eq. 2) of non-negative densities
        ``(..., N, d, d, d)``, from the three 1-D marginals."""
        axis = self.axis(density)
        marginals = torch.stack((density.sum((-1, -2)), density.sum((-1, -3)), density.sum((-2, -3))), dim=-2)
        return (marginals * axis).sum(-1) / marginals.sum(-1).clamp_min(torch.finfo(density.dtype).tiny)

    def normalized(self, coords: torch.Tensor) -> torch.Tensor:
        """Densities of ``coords`` normalised to sum 1 per channel (the decoder's output space)."""
        density = self.voxelize(coords)
        return density / density.sum((-1, -2, -3), keepdim=True)

    def overflow(self, coords: torch.Tensor) -> float:
        """How far (nm) the farthest coordinate lies beyond ``max_radius`` (<= 0 if all fit)."""
        return float(coords.abs().max()) - self.max_radius

    def check_fits(self, coords: torch.Tensor, what: str) -> None:
        """Raise a clear error if centred ``coords`` do not fit inside the grid."""
        excess = self.overflow(coords)
        if excess > 0:
            needed = 2 * (float(coords.abs().max()) + EDGE_SIGMAS * self.sigma)
            raise ValueError(
                f"{what} does not fit the voxel grid: a particle lies {excess:.3f} nm beyond the usable "
                f"half-width {self.max_radius:.3f} nm (r_grid={self.r_grid} nm, sigma={self.sigma} nm); "
                f"use r_grid >= {needed:.2f} nm"
            )

    def to_dict(self) -> dict:
        return asdict(self)
