"""Collective variables and free-energy surfaces: (φ, ψ) for alanine dipeptide, TICA of Cα distances."""

from __future__ import annotations

import itertools

import mdtraj as md
import numpy as np
from deeptime.decomposition import TICA

from tcbm.energy import KB


def ramachandran(traj: md.Trajectory) -> np.ndarray:
    """Backbone (φ, ψ) in radians of the first residue that has both, shape (T, 2)."""
    phi_idx, phi = md.compute_phi(traj)
    psi_idx, psi = md.compute_psi(traj)
    psi_by_ca = {int(quad[1]): k for k, quad in enumerate(psi_idx)}
    for k, quad in enumerate(phi_idx):
        if int(quad[2]) in psi_by_ca:
            return np.stack([phi[:, k], psi[:, psi_by_ca[int(quad[2])]]], axis=1)
    raise ValueError("the topology has no residue with both backbone φ and ψ dihedrals")


def ca_distances(traj: md.Trajectory) -> np.ndarray:
    """All pairwise Cα distances (nm), shape (T, n_ca·(n_ca−1)/2): 45 for chignolin."""
    ca = traj.topology.select("name CA")
    return md.compute_distances(traj, np.array(list(itertools.combinations(ca, 2))))


class TICAProjection:
    """TICA (deeptime) fitted on reference features; the same basis then projects every data set."""

    def __init__(self, lagtime: int = 10, dim: int = 2) -> None:
        self.lagtime, self.dim = lagtime, dim
        self.model = None

    def fit(self, features: np.ndarray | list[np.ndarray]) -> TICAProjection:
        """Fit on the features (frames, n) of one trajectory or a list of them (lagged pairs within each)."""
        parts = [features] if isinstance(features, np.ndarray) else list(features)
        if max(len(f) for f in parts) <= self.lagtime:
            raise ValueError(f"TICA needs more than lagtime={self.lagtime} frames, got {max(len(f) for f in parts)}")
        self.model = TICA(lagtime=self.lagtime, dim=self.dim).fit([f.astype(np.float64) for f in parts]).fetch_model()
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        return self.model.transform(features.astype(np.float64))


def histogram2d(cvs: np.ndarray, edges: tuple[np.ndarray, np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    return np.histogram2d(cvs[:, 0], cvs[:, 1], bins=edges, weights=weights)[0]


def free_energy(cvs: np.ndarray, edges: tuple[np.ndarray, np.ndarray], temperature: float = 300.0,
                weights: np.ndarray | None = None) -> np.ndarray:
    """−kT ln p (kJ/mol, minimum 0, inf where empty) on the shared grid ``edges``."""
    counts = histogram2d(cvs, edges, weights)
    if counts.sum() == 0:  # nothing on this grid
        return np.full(counts.shape, np.inf)
    with np.errstate(divide="ignore"):
        fes = -KB * temperature * np.log(counts / counts.sum())
    return fes - fes[np.isfinite(fes)].min()


def reference_grid(reference: np.ndarray, bins: int, periodic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges per CV: [−π, π] for periodic angles, else spanning the reference's range (other samples'
    points outside it go to :func:`outside_mass`, not into a stretched grid)."""
    if periodic:
        edge = np.linspace(-np.pi, np.pi, bins + 1)
        return edge, edge
    return tuple(np.linspace(reference[:, k].min(), reference[:, k].max() + 1e-9, bins + 1) for k in range(2))


def outside_mass(cvs: np.ndarray, edges: tuple[np.ndarray, np.ndarray], weights: np.ndarray | None = None) -> float:
    """Total weight (count if unweighted) of the points outside the grid ``edges``."""
    inside = ((cvs[:, 0] >= edges[0][0]) & (cvs[:, 0] <= edges[0][-1])
              & (cvs[:, 1] >= edges[1][0]) & (cvs[:, 1] <= edges[1][-1]))
    return float((~inside).sum() if weights is None else np.asarray(weights)[~inside].sum())
