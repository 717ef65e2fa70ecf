"""Frame-based baselines: the nearest-neighbour library backmapper (Stieffenhofer thesis §8.3.3), and the
reference shuffled in time (every per-frame distribution exact, no dynamics: the control row for the
temporal measures)."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch

from tcbm.backmap import nearest_library_frames
from tcbm.geometry import superpose


class NearestNeighbourBackmapper:
    """For each CG frame, take the library frame with the smallest CG RMSD (after superposition) and
    superpose its all-atom structure onto the CG frame.  ``library_cg`` (L, n, 3), ``library_aa`` (L, N, 3), nm."""

    def __init__(self, library_cg: np.ndarray, library_aa: np.ndarray) -> None:
        if len(library_cg) != len(library_aa):
            raise ValueError(f"library has {len(library_cg)} CG frames but {len(library_aa)} all-atom frames")
        self.library_cg = torch.as_tensor(library_cg, dtype=torch.float32)
        self.library_aa = torch.as_tensor(library_aa, dtype=torch.float32)

    @torch.inference_mode()
    def backmap(self, cg: np.ndarray, batch: int = 1024) -> np.ndarray:
        """All-atom frames (T, N, 3) for CG frames (T, n, 3)."""
        out = []
        for start in range(0, len(cg), batch):
            query = torch.as_tensor(cg[start:start + batch], dtype=torch.float32)
            index = nearest_library_frames(self.library_cg, query)
            out.append(superpose(self.library_cg[index], query, carry=self.library_aa[index]).numpy())
        return np.concatenate(out)


def time_shuffled(trajectory: md.Trajectory, seed: int = 0) -> md.Trajectory:
    """``trajectory`` with its frames in a seeded random order (its time stamps kept): the same frames, so
    every per-frame score is the reference's, and none of its frame-to-frame correlation."""
    order = np.random.default_rng(seed).permutation(trajectory.n_frames)
    return md.Trajectory(trajectory.xyz[order], trajectory.topology, time=trajectory.time,
                         unitcell_lengths=trajectory.unitcell_lengths, unitcell_angles=trajectory.unitcell_angles)
