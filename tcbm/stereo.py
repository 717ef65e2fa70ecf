"""Stereocentres and their handedness.

A stereocentre here is an atom with four bonded neighbours of which at most one is a hydrogen: the Cα of
every amino acid but glycine, the Cβ of Thr and Ile, ...  Its handedness is the sign of the signed volume
``(a − o)·((b − o) × (c − o))`` (nm³) of three of its heavy neighbours ``a, b, c`` about the centre ``o``.
Dynamics never change it; a backmapper that mirrors a centre (D- instead of L-amino acid) has made a
different molecule.
"""

from __future__ import annotations

import itertools

import mdtraj as md
import numpy as np
import torch
from torch import nn

from tcbm.geometry import superpose
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


class StereoKeeper(nn.Module):
    """Keeps every stereocentre's handedness from one frame to the next: where a frame's centre is mirrored
    with respect to the previous frame's, or flattened below ``min_volume_fraction`` of the previous frame's
    signed volume (a near-planar centre's sign is noise: the 0.001 nm precision of an xtc file flipped it in 2 %
    of chignolin frames), two of its substituents are put back as they were.

    For each centre the two neighbours that move are those whose branches — the atoms reached from them
    without passing the centre or its two other neighbours — are the smallest and hold no fixed atom (``fixed``:
    e.g. the CG-mapped atoms, which the CG pins): for a Cα the side chain and Hα (proline: its ring's CB, CG,
    CD, whose bond to N stays with the anchor N), for Thr Cβ the hydroxyl and Hβ.  A mirrored centre gets both
    branches from the previous frame, superposed rigidly on the centre and its two other neighbours (for a Cα:
    N, Cα, C): a proper rotation, so every bond, angle, dihedral (χ1 against the backbone) and nested centre
    inside them is the previous frame's, which had the right handedness.  Reflecting the branches through the
    plane of the anchors also turns the centre back, but mirrors the side chain's dihedrals: on chignolin the
    side-chain χ kinetics were then twice as far from the reference's (benchmarks/cln/README.md).  Centres are
    handled outermost last, so a side chain moved with its Cα is checked again at its own centres.  A centre
    without such a pair (every branch pinned) is left as it is: :attr:`kept_as_decoded`."""

    def __init__(self, topology: md.Topology, fixed: np.ndarray, min_volume_fraction: float = 0.2) -> None:
        super().__init__()
        self.min_volume_fraction = min_volume_fraction
        neighbours = bonded_neighbours(topology)
        plans, self.kept_as_decoded = [], []
        for row in stereocentres(topology):
            centre = int(row[0])
            bonded = [a.index for a in neighbours[centre]]
            best = None
            for pair in itertools.combinations(bonded, 2):
                others = [n for n in bonded if n not in pair]
                limit = len(best[2]) if best is not None else len(fixed)
                moved = _branches(neighbours, pair, {centre, *others}, fixed, limit)
                if moved is not None:
                    best = (row, [centre, *others], moved)
            if best is None:
                self.kept_as_decoded.append(centre)
            else:
                plans.append(best)
        plans.sort(key=lambda plan: -len(plan[2]))  # a centre whose branch holds another comes before it
        self.register_buffer("rows", torch.as_tensor(np.array([p[0] for p in plans], dtype=np.int64).reshape(-1, 4)),
                             persistent=False)
        # the centre and its two other neighbours, on which a put-back branch is superposed
        self.register_buffer("anchors", torch.as_tensor(np.array([p[1] for p in plans], dtype=np.int64).reshape(-1, 3)),
                             persistent=False)
        for k, plan in enumerate(plans):
            self.register_buffer(f"moved_{k}", torch.as_tensor(plan[2], dtype=torch.long), persistent=False)

    def forward(self, frame: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frame`` (B, N, 3) nm with each centre mirrored (or flattened) with respect to ``previous`` (B, N, 3)
        put back as in ``previous``, and which centres were (B, C) bool, in the order of :attr:`rows`."""
        corrected = []
        for k in range(len(self.rows)):
            row = self.rows[k:k + 1]
            before = signed_volumes(previous, row)[:, 0]
            now = signed_volumes(frame, row)[:, 0] * torch.sign(before)  # > 0: the previous frame's handedness
            flip = (now < self.min_volume_fraction * before.abs()) & (before != 0)
            corrected.append(flip)
            if frame.device.type == "cpu" and not flip.any():  # asking costs a GPU rollout a wait for the host
                continue
            anchors, moved = self.anchors[k], getattr(self, f"moved_{k}")
            as_before = superpose(previous[:, anchors], frame[:, anchors], carry=previous[:, moved])
            frame = frame.index_copy(1, moved, torch.where(flip[:, None, None], as_before, frame[:, moved]))
        if not corrected:
            return frame, torch.zeros(len(frame), 0, dtype=torch.bool, device=frame.device)
        return frame, torch.stack(corrected, dim=1)


def _branches(neighbours: dict, starts: tuple[int, ...], blocked: set[int], fixed: np.ndarray, limit: int
              ) -> np.ndarray | None:
    """Atom indices (sorted) reached from ``starts`` along bonds without entering ``blocked``; None as soon as
    they hold a ``fixed`` atom or ``limit`` atoms (a long chain's branch is never walked to its end)."""
    seen, stack = set(starts), list(starts)
    if fixed[list(starts)].any() or len(seen) >= limit:
        return None
    while stack:
        for atom in neighbours[stack.pop()]:
            if atom.index not in seen and atom.index not in blocked:
                if fixed[atom.index] or len(seen) + 1 >= limit:
                    return None
                seen.add(atom.index)
                stack.append(atom.index)
    return np.array(sorted(seen), dtype=np.int64)
