"""Symmetry-equivalent hydrogens of rotors (CH3, NH3+): a 120° turn of such a group only relabels its three
hydrogens, so a training target is as right under any cyclic relabelling of them (``cyclic``), and the turn the
group makes between frames can be left to a Markov chain of its dihedral instead of the network (``continuous``).

A regression loss on labelled positions cannot tell a fast methyl's rotamers apart without knowing where its
labels went, and averages them: the read-out then puts the hydrogens between rotamers (collapsed H–C–H
angles, hundreds of kJ/mol).  Relabelling each target to the cyclic permutation closest to the prediction
before the loss is taken (as AlphaFold renames ambiguous side-chain atoms) removes that ambiguity.  Only cyclic
permutations are used: swapping two hydrogens is a reflection, not a turn.  Which rotamer the labels then sit
in along a rollout is drawn by :mod:`tcbm.rotor_hops`.

Relabelling still leaves the turn within a well to the network, and a fast rotor (ADP's ACE and NME methyls
hop about every other picosecond) turns by tens of degrees between 1-ps frames in a way the condition does not
fix: a deterministic decoder predicts the mean, a ring of density whose read-out pulls the hydrogens toward the
rotor axis (H–C–X angles up to 150°).  The ``continuous`` symmetry turns each target's group rigidly about its
own C–X axis to the angle closest to the prediction before the loss (any angle: a 120° turn is the cyclic
relabelling), so the network learns the group's geometry and not its dihedral, which the rotor chain draws."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import torch

from tcbm.geometry import best_turn_angle, rotate_about_axis
from tcbm.systems import bonded_neighbours

#: how a rotor group's hydrogens are matched to the prediction before the loss (``model.loss.symmetric_rotors``)
SYMMETRIES = ("none", "cyclic", "continuous")

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


def group_axes(xyz: torch.Tensor, pivots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rotor group's turning centre (its rotor atom C) and axis X -> C, both (B, g, 3) nm, from ``xyz``
    (B, N, 3) and ``pivots`` (g, 2): C, X."""
    centre = xyz[:, pivots[:, 0]]
    return centre, centre - xyz[:, pivots[:, 1]]


def turn_groups(xyz: torch.Tensor, groups: torch.Tensor, pivots: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``xyz`` (B, N, 3) with each group's hydrogens (``groups`` (g, 3)) turned rigidly by ``angle`` (B, g) rad
    about the group's own axis, right-handed along X -> C (``pivots`` (g, 2): rotor atom C, axis atom X)."""
    turned = rotate_about_axis(xyz[:, groups], *group_axes(xyz, pivots), angle)
    return xyz.index_copy(1, groups.flatten(), turned.flatten(1, 2))


def turn_rotor_hydrogens(target: torch.Tensor, reference: torch.Tensor, groups: torch.Tensor, pivots: torch.Tensor
                         ) -> torch.Tensor:
    """``target`` (B, N, 3) with each group's hydrogens (``groups`` (g, 3)) turned rigidly about the group's axis
    in ``target`` (:func:`turn_groups`) by the angle that puts them closest (squared distance) to
    ``reference``'s (B, N, 3), frame by frame.  Bond lengths and angles of the group do not change; only its
    dihedral does."""
    if not len(groups):
        return target
    angle = best_turn_angle(target[:, groups], reference[:, groups], *group_axes(target, pivots))
    return turn_groups(target, groups, pivots, angle)


def resolve_symmetry(symmetric_rotors: bool | str) -> str:
    """The rotor symmetry named by ``model.loss.symmetric_rotors``: one of :data:`SYMMETRIES` (``true`` means
    ``cyclic``, ``false`` ``none``, as in configs written before ``continuous`` existed)."""
    if isinstance(symmetric_rotors, bool):
        return "cyclic" if symmetric_rotors else "none"
    if symmetric_rotors not in SYMMETRIES:
        raise ValueError(f"model.loss.symmetric_rotors must be one of {', '.join(SYMMETRIES)} (or true/false), "
                         f"got {symmetric_rotors!r}")
    return symmetric_rotors
