"""Coarse-graining maps as one linear operator: CG = W @ AA with W of shape (n_beads, n_atoms)."""

from __future__ import annotations

from collections.abc import Sequence

import mdtraj as md
import numpy as np
import torch


class CGMapping:
    """A linear CG map ``f_cg``: bead ``I`` sits at ``sum_i W[I, i] x_i`` (rows of ``W`` sum to 1).

    Works on numpy arrays and (batched) torch tensors of shape ``(..., n_atoms, 3)`` in nm.
    """

    def __init__(self, weights: np.ndarray, bead_names: Sequence[str] | None = None) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 2 or weights.shape[0] == 0:
            raise ValueError(f"CG weight matrix must be 2-D (n_beads, n_atoms) with >=1 bead, got {weights.shape}")
        if (weights < 0).any():
            raise ValueError("CG weights must be non-negative")
        sums = weights.sum(axis=1)
        empty = np.flatnonzero(sums == 0)
        if empty.size:
            raise ValueError(f"CG beads {empty.tolist()} contain no atom")
        self.weights = weights / sums[:, None]
        self.bead_names = list(bead_names) if bead_names is not None else [f"B{i}" for i in range(self.n_beads)]
        self._torch_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def n_beads(self) -> int:
        return self.weights.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.weights.shape[1]

    @classmethod
    def from_selection(cls, topology: md.Topology, selection: str, n_beads: int | None = None) -> CGMapping:
        """Slice map: one bead per atom matched by the mdtraj ``selection`` (in atom order)."""
        try:
            indices = topology.select(selection)
        except Exception as err:  # mdtraj raises several types for bad syntax
            raise ValueError(f"invalid CG selection {selection!r}: {err}") from err
        if indices.size == 0:
            raise ValueError(f"CG selection {selection!r} matches no atom of the topology ({topology})")
        if n_beads is not None and indices.size != n_beads:
            raise ValueError(f"CG selection {selection!r} matches {indices.size} atoms, expected {n_beads} beads")
        return cls.from_groups(topology, [[int(i)] for i in indices], weighting="uniform")

    @classmethod
    def from_groups(
        cls, topology: md.Topology, groups: Sequence[Sequence[int]], weighting: str = "mass"
    ) -> CGMapping:
        """Centre-of-mass (``weighting='mass'``) or centroid (``'uniform'``) map of atom index groups."""
        if weighting not in ("mass", "uniform"):
            raise ValueError(f"weighting must be 'mass' or 'uniform', got {weighting!r}")
        weights = np.zeros((len(groups), topology.n_atoms))
        atoms = list(topology.atoms)
        names = []
        for bead, group in enumerate(groups):
            if len(group) == 0:
                raise ValueError(f"CG bead {bead} has an empty atom group")
            for index in group:
                if not 0 <= int(index) < topology.n_atoms:
                    raise ValueError(f"CG bead {bead}: atom index {index} outside 0..{topology.n_atoms - 1}")
                atom = atoms[int(index)]
                weights[bead, int(index)] = atom.element.mass if weighting == "mass" else 1.0
            names.append(str(atoms[int(group[0])]) if len(group) == 1 else f"B{bead}")
        return cls(weights, names)

    def _torch_weights(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.as_tensor(self.weights, dtype=like.dtype, device=like.device)
        return self._torch_cache[key]

    def __call__(self, coords: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map ``(..., n_atoms, 3)`` atom coordinates to ``(..., n_beads, 3)`` bead coordinates."""
        if coords.shape[-2] != self.n_atoms:
            raise ValueError(f"CG mapping expects {self.n_atoms} atoms, got coordinates with {coords.shape[-2]}")
        if isinstance(coords, torch.Tensor):
            return torch.matmul(self._torch_weights(coords), coords)
        return np.matmul(self.weights.astype(np.result_type(coords, np.float32)), coords)

    def projection(self, bonds: np.ndarray, kind: str = "rigid") -> np.ndarray:
        """Matrix ``P`` (n_atoms, n_beads) such that ``x + P @ (cg − W @ x)`` maps to ``cg`` exactly.

        ``kind='rigid'``: every atom is assigned to the bead nearest to it in the bond graph ``bonds``
        (pairs of atom indices; an atom of a bead's group is at distance 0, ties go to the bead that weighs
        it most, then the lower index), and moves rigidly with that bead's residual: ``P = A (W A)⁻¹`` for
        the assignment matrix ``A``.  Bonds inside an assigned block keep their lengths; bonds and angles
        between blocks take the whole residual.

        ``kind='smooth'``: the correction Δ that changes bonded (1-2) and angle (1-3) neighbours least,
        minimising Σ |Δ_i − Δ_j|² over those pairs subject to W Δ = cg − W x (solved once, in closed form,
        from its KKT system): a bead's residual is spread along the bonds to the next bead."""
        if kind not in ("rigid", "smooth"):
            raise ValueError(f"CG projection kind must be 'rigid' or 'smooth', got {kind!r}")
        n_atoms, n_beads = self.n_atoms, self.n_beads
        neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
        for i, j in np.asarray(bonds, dtype=np.int64).reshape(-1, 2):
            neighbours[i].append(int(j))
            neighbours[j].append(int(i))
        hops = np.full((n_beads, n_atoms), np.inf)
        for bead in range(n_beads):
            frontier = list(np.flatnonzero(self.weights[bead] > 0))
            hops[bead, frontier] = 0
            while frontier:
                nxt = [j for i in frontier for j in neighbours[i] if hops[bead, j] == np.inf]
                nxt = list(dict.fromkeys(nxt))
                hops[bead, nxt] = hops[bead, frontier[0]] + 1
                frontier = nxt
        unreachable = np.flatnonzero(np.isinf(hops.min(axis=0)))
        if unreachable.size:
            raise ValueError(f"atoms {unreachable.tolist()[:10]} are bonded to no CG bead's atoms: a CG "
                             "projection needs every atom connected to a bead")
        if kind == "smooth":
            return self._smooth_projection(neighbours)
        # order by hops, then by -weight, then by bead index (lexsort keys: last is primary)
        order = np.lexsort((np.arange(n_beads)[:, None].repeat(n_atoms, 1), -self.weights, hops), axis=0)
        assignment = np.zeros((n_atoms, n_beads))
        assignment[np.arange(n_atoms), order[0]] = 1.0
        coupling = self.weights @ assignment
        if abs(np.linalg.det(coupling)) < 1e-8:
            raise ValueError("the CG map's beads cannot be moved independently (W·A is singular)")
        return assignment @ np.linalg.inv(coupling)

    def _smooth_projection(self, neighbours: list[list[int]]) -> np.ndarray:
        """``P`` of the least-strain correction over 1-2 and 1-3 pairs (see :meth:`projection`)."""
        n_atoms, n_beads = self.n_atoms, self.n_beads
        pairs = {tuple(sorted((i, j))) for i in range(n_atoms) for j in neighbours[i]}
        pairs |= {tuple(sorted((a, b))) for i in range(n_atoms) for a in neighbours[i] for b in neighbours[i] if a != b}
        laplacian = np.zeros((n_atoms, n_atoms))
        for i, j in pairs:
            laplacian[[i, j], [i, j]] += 1.0
            laplacian[i, j] -= 1.0
            laplacian[j, i] -= 1.0
        kkt = np.block([[laplacian, self.weights.T], [self.weights, np.zeros((n_beads, n_beads))]])
        rhs = np.vstack([np.zeros((n_atoms, n_beads)), np.eye(n_beads)])
        try:
            return np.linalg.solve(kkt, rhs)[:n_atoms]
        except np.linalg.LinAlgError as err:
            raise ValueError("the CG map's beads cannot be moved independently (singular projection)") from err

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bead_names": self.bead_names}

    @classmethod
    def from_dict(cls, state: dict) -> CGMapping:
        return cls(np.asarray(state["weights"]), state["bead_names"])
