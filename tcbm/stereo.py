"""Stereocentres and their handedness.

A stereocentre here is an atom with four bonded neighbours of which at most one is a hydrogen: the Cα of
every amino acid but glycine, the Cβ of Thr and Ile, ...  Its handedness is the sign of the signed volume
``(a − o)·((b − o) × (c − o))`` (nm³) of three of its heavy neighbours ``a, b, c`` about the centre ``o``.
Dynamics never change it; a backmapper that mirrors a centre (D- instead of L-amino acid) has made a
different molecule.
"""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch

from tcbm.systems import bonded_neighbours


def stereocentres(topology: md.Topology) -> np.ndarray:
    """Index rows ``(centre, a, b, c)`` (C, 4) of the topology's stereocentres, ``a, b, c`` the centre's first
    three neighbours by index with heavy atoms before the hydrogen."""
    neighbours = bonded_neighbours(topology)
    rows = []
    for centre in (atom.index for atom in topology.atoms):
        bonded = neighbours[centre]
        hydrogens = sum(1 for a in bonded if a.element is md.element.hydrogen)
        if len(bonded) == 4 and hydrogens <= 1:
            ordered = sorted(bonded, key=lambda a: (a.element is md.element.hydrogen, a.index))
            rows.append([centre] + [a.index for a in ordered[:3]])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def signed_volumes(xyz: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor
                   ) -> np.ndarray | torch.Tensor:
    """Signed volumes (..., C) in nm³ of the stereocentres ``centres`` (C, 4) in frames ``xyz`` (..., N, 3)."""
    o, a, b, c = (xyz[..., centres[:, k], :] for k in range(4))
    if isinstance(xyz, torch.Tensor):
        return ((a - o) * torch.linalg.cross(b - o, c - o)).sum(-1)
    return ((a - o) * np.cross(b - o, c - o)).sum(-1)
