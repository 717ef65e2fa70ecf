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

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bead_names": self.bead_names}

    @classmethod
    def from_dict(cls, state: dict) -> CGMapping:
        return cls(np.asarray(state["weights"]), state["bead_names"])
