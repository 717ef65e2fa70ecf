"""Rotor hydrogens (CH3, NH3+) relabelled by cyclic permutations or turned about their axis: which groups, what
the relabelling and the turn do, and that the training loss no longer sees a turn of a methyl."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcbm.lightning import CVAEModule
from tcbm.rotor_hops import rotor_axes
from tcbm.symmetry import relabel_rotor_hydrogens, resolve_symmetry, rotor_hydrogen_groups, turn_rotor_hydrogens


def names(system, groups):
    atoms = list(system.topology.atoms)
    return [[f"{atoms[i].residue.name}{atoms[i].residue.resSeq}-{atoms[i].name}" for i in row] for row in groups]


def test_rotor_groups_of_the_packaged_systems(adp, cln):
    assert names(adp, rotor_hydrogen_groups(adp.topology)) == [
        ["ACE1-H1", "ACE1-H2", "ACE1-H3"], ["ALA2-HB1", "ALA2-HB2", "ALA2-HB3"], ["NME3-H1", "NME3-H2", "NME3-H3"]]
    # chignolin: the N-terminal NH3+ and the two Thr methyls; no CH2 (prochiral, not a rotor of equivalent atoms)
    assert names(cln, rotor_hydrogen_groups(cln.topology)) == [
        ["GLY1-H", "GLY1-H2", "GLY1-H3"], ["THR6-HG21", "THR6-HG22", "THR6-HG23"], ["THR8-HG21", "THR8-HG22", "THR8-HG23"]]


def turned(x: torch.Tensor, centre: int, axis_atom: int, hydrogens, degrees: float) -> torch.Tensor:
    """``x`` (N, 3) with ``hydrogens`` rotated about the ``axis_atom``→``centre`` bond by ``degrees``."""
    axis = (x[centre] - x[axis_atom]) / (x[centre] - x[axis_atom]).norm()
    a = np.radians(degrees)
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=x.dtype)
    rotation = torch.eye(3, dtype=x.dtype) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    y = x.clone()
    y[hydrogens] = (x[hydrogens] - x[centre]) @ rotation.T + x[centre]
    return y


def test_relabelling_undoes_a_turn_but_not_a_reflection(adp):
    groups = torch.as_tensor(rotor_hydrogen_groups(adp.topology))
    atoms = {f"{a.residue.name}-{a.name}": a.index for a in adp.topology.atoms}
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)
    nme = groups[2]
    # an ideal methyl turned by 120° is the same geometry with its hydrogens relabelled ...
    rotated = turned(x, atoms["NME-C"], atoms["NME-N"], nme, 120.0)
    assert (rotated - x).norm(dim=-1).max() > 0.1
    back = relabel_rotor_hydrogens(rotated[None], x[None], groups)[0]
    assert (back - x).norm(dim=-1).max() < 0.02  # the packaged structure's methyl is staggered to ~0.01 nm
    # ... a turn by 60° (eclipsed) is not, and only the group's own hydrogens may move
    eclipsed = turned(x, atoms["NME-C"], atoms["NME-N"], nme, 60.0)
    relabelled = relabel_rotor_hydrogens(eclipsed[None], x[None], groups)[0]
    assert (relabelled - x).norm(dim=-1).max() > 0.08
    assert torch.equal(relabelled[np.setdiff1d(np.arange(adp.n_atoms), nme)],
                       eclipsed[np.setdiff1d(np.arange(adp.n_atoms), nme)])
    # swapping two hydrogens is a reflection: never undone
    swapped = x.clone()
    swapped[nme] = x[nme[[1, 0, 2]]]
    assert (relabel_rotor_hydrogens(swapped[None], x[None], groups)[0] - x).norm(dim=-1).max() > 0.1


class Exact(torch.nn.Module):
    """A stand-in network whose prediction is always the given density and coordinates."""

    def __init__(self, density: torch.Tensor, coords: torch.Tensor) -> None:
        super().__init__()
        self.density, self.coords = density, coords

    def forward(self, aa, cg, aa_prev, sample):
        from tcbm.model import Reconstruction

        zeros = torch.zeros(len(aa), 2)
        return Reconstruction(self.density, self.coords, zeros, zeros, zeros, zeros)


def test_training_loss_does_not_see_a_methyl_turn(adp):
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float32)[None]
    ala = torch.as_tensor(rotor_hydrogen_groups(adp.topology))[1]
    relabelled = x.clone()
    relabelled[:, ala] = x[:, ala[[1, 2, 0]]]  # the same structure, the Ala methyl's labels turned by one position
    for symmetric in (False, True, "continuous"):
        module = CVAEModule(adp.to_dict(), {"d": 8, "r_grid": 2.0, "sigma": 0.2}, {"latent_dim": 2, "width": 4},
                            symmetric_rotors=symmetric)
        module.forward_model = Exact(module.grid.normalized(x), x)
        terms = {name: module._terms({"aa": target, "cg": adp.mapping(target), "aa_prev": x[:, None]}, False)[0]
                 for name, target in (("labels", x), ("turned", relabelled))}
        for term in ("aa", "vox", "edm"):
            assert terms["labels"][term] < 1e-9
            if symmetric is True:  # the turned target is relabelled back onto the prediction
                assert terms["turned"][term] < 1e-9
            elif symmetric:  # ... or turned back: exact up to how far the packaged methyl is from a rigid 120° turn
                assert terms["turned"][term] < 1e-6
            else:  # the labelled loss penalises a prediction that is right up to the labels
                assert terms["turned"][term] > 1e-4


def test_a_turn_by_any_angle_is_undone_and_only_the_turn(adp):
    groups = torch.as_tensor(rotor_hydrogen_groups(adp.topology))
    pivots = torch.as_tensor(rotor_axes(adp.topology, groups.numpy())[:, :2])
    atoms = {f"{a.residue.name}-{a.name}": a.index for a in adp.topology.atoms}
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)
    others = np.setdiff1d(np.arange(adp.n_atoms), groups[2])
    for degrees in (37.0, 60.0, 120.0, -100.0):
        rotated = turned(x, atoms["NME-C"], atoms["NME-N"], groups[2], degrees)
        back = turn_rotor_hydrogens(rotated[None], x[None], groups, pivots)[0]
        assert (back - x).norm(dim=-1).max() < 1e-9
        assert torch.equal(back[others], rotated[others])
    # a methyl whose geometry differs (one hydrogen pulled toward the axis) keeps its own geometry: the turn
    # cannot make it match, and the distances within the group are those of the target
    bent = x.clone()
    bent[groups[2, 0]] = x[atoms["NME-C"]] + 0.5 * (x[groups[2, 0]] - x[atoms["NME-C"]])
    matched = turn_rotor_hydrogens(bent[None], x[None], groups, pivots)[0]
    assert (matched - x).norm(dim=-1).max() > 0.04
    inside = torch.cat([groups[2], torch.tensor([atoms["NME-C"], atoms["NME-N"]])])
    assert torch.allclose(torch.cdist(matched[inside], matched[inside]), torch.cdist(bent[inside], bent[inside]))


def test_symmetry_names():
    assert [resolve_symmetry(v) for v in (True, False, "cyclic", "continuous", "none")] == [
        "cyclic", "none", "cyclic", "continuous", "none"]
    with pytest.raises(ValueError, match="symmetric_rotors must be one of none, cyclic, continuous"):
        resolve_symmetry("rotational")
