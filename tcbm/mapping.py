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

    def projection(self, bonds: np.ndarray) -> np.ndarray:
        """Matrix ``P`` (n_atoms, n_beads) such that ``x + P @ (cg − W @ x)`` maps to ``cg`` exactly.

        Every atom is assigned to the bead nearest to it in the bond graph ``bonds`` (pairs of atom
        indices; an atom of a bead's group is at distance 0, ties go to the bead that weighs it most, then
        the lower index), and moves rigidly with that bead's residual: ``P = A (W A)⁻¹`` for the assignment
        matrix ``A``.  Bonds inside an assigned block keep their lengths."""
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
        # order by hops, then by -weight, then by bead index (lexsort keys: last is primary)
        order = np.lexsort((np.arange(n_beads)[:, None].repeat(n_atoms, 1), -self.weights, hops), axis=0)
        assignment = np.zeros((n_atoms, n_beads))
        assignment[np.arange(n_atoms), order[0]] = 1.0
        coupling = self.weights @ assignment
        if abs(np.linalg.det(coupling)) < 1e-8:
            raise ValueError("the CG map's beads cannot be moved independently (W·A is singular)")
        return assignment @ np.linalg.inv(coupling)

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bead_names": self.bead_names}

    @classmethod
    def from_dict(cls, state: dict) -> CGMapping:
        return cls(np.asarray(state["weights"]), state["bead_names"])
