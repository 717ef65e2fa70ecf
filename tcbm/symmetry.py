"""Symmetry-equivalent hydrogens of rotors (CH3, NH3+): a 120° turn of such a group only relabels its three
hydrogens, so a training target is as right under any cyclic relabelling of them.

A regression loss on labelled positions cannot tell a fast methyl's rotamers apart without knowing where its
labels went, and averages them: the read-out then puts the hydrogens between rotamers (collapsed H–C–H
angles, hundreds of kJ/mol).  Relabelling each target to the cyclic permutation closest to the prediction
before the loss is taken (as AlphaFold renames ambiguous side-chain atoms) removes that ambiguity.  Only cyclic
permutations are used: swapping two hydrogens is a reflection, not a turn.  Which rotamer the labels then sit
in along a rollout is drawn by :mod:`tcbm.rotor_hops`."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch

from tcbm.systems import bonded_neighbours

#: the cyclic relabellings of a three-hydrogen rotor (identity first)
CYCLIC_PERMUTATIONS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))


def rotor_hydrogen_groups(topology: md.Topology) -> np.ndarray:
    """Index triples (g, 3) of the hydrogens of every rotor group: a heavy atom bonded to exactly three
    hydrogens, each bonded to nothing else, and to one other atom (the rotor's axis)."""
    neighbours = bonded_neighbours(topology)
    groups = []
    for atom in topology.atoms:
        if atom.element.symbol == "H":
            continue
        bonded = neighbours.get(atom.index, [])
        hydrogens = [b.index for b in bonded if b.element.symbol == "H" and len(neighbours[b.index]) == 1]
        if len(hydrogens) == 3 and len(bonded) == 4:
            groups.append(sorted(hydrogens))
    return np.array(groups, dtype=np.int64).reshape(-1, 3)


def relabel_rotor_hydrogens(target: torch.Tensor, reference: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``target`` (B, N, 3) with each group's hydrogens (``groups`` (g, 3)) relabelled by the cyclic
    permutation that puts them closest (squared distance) to ``reference``'s (B, N, 3), frame by frame."""
    if not len(groups):
        return target
    permutations = torch.as_tensor(CYCLIC_PERMUTATIONS, device=groups.device)
    candidates = target[:, groups[:, permutations]]  # (B, g, 3 permutations, 3 hydrogens, 3)
    cost = (candidates - reference[:, groups][:, :, None]).pow(2).sum((-1, -2))  # (B, g, 3)
    best = cost.argmin(-1)
    chosen = candidates.gather(2, best[:, :, None, None, None].expand(-1, -1, 1, 3, 3)).squeeze(2)  # (B, g, 3, 3)
    return target.index_copy(1, groups.flatten(), chosen.flatten(1, 2))
