"""Stereocentres: which atoms, their handedness, the chirality loss and the evaluation's stereo measure."""

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm import losses
from tcbm.analysis.observables import l_chiral_fraction, stereo_fraction
from tcbm.stereo import signed_volumes, stereocentres


def _names(system, centres):
    atoms = list(system.topology.atoms)
    return [f"{atoms[c].residue.name}{atoms[c].residue.resSeq}-{atoms[c].name}" for c in centres[:, 0]]


def test_stereocentres_are_the_non_glycine_calpha_and_threonine_cbeta(adp, cln):
    assert _names(adp, stereocentres(adp.topology)) == ["ALA2-CA"]  # methyl carbons have three H: not chiral
    names = _names(cln, stereocentres(cln.topology))
    assert len(names) == 9 and sum(n.endswith("-CA") for n in names) == 7
    assert [n for n in names if n.endswith("-CB")] == ["THR6-CB", "THR8-CB"]
    assert not any(n.startswith("GLY") for n in names)


def test_mirror_image_flips_every_handedness_and_numpy_equals_torch(cln):
    centres = stereocentres(cln.topology)
    xyz = cln.reference_xyz
    volumes = signed_volumes(xyz, centres)
    assert (np.abs(volumes) > 1e-3).all()  # tetrahedral centres: clearly non-zero (nm³)
    np.testing.assert_allclose(signed_volumes(xyz * np.array([-1, 1, 1]), centres), -volumes, rtol=1e-6)
    np.testing.assert_allclose(signed_volumes(torch.as_tensor(xyz), torch.as_tensor(centres)).numpy(), volumes,
                               rtol=1e-5)


def test_chirality_loss_is_zero_for_the_target_one_for_its_mirror_and_pushes_back(cln):
    centres = torch.as_tensor(stereocentres(cln.topology))
    target = torch.as_tensor(cln.reference_xyz)[None].double()
    assert losses.chirality_loss(target, target, centres) == 0
    mirrored = (target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)).requires_grad_()
    loss = losses.chirality_loss(mirrored, target, centres)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    with torch.no_grad():  # one small step down the gradient reduces the loss
        assert losses.chirality_loss(mirrored - 1e-4 * mirrored.grad, target, centres) < loss


@pytest.mark.parametrize("margin, expected", [(0.0, [0.0, 0.0, 0.0, 1.0]), (0.5, [0.0, 0.25, 0.5, 1.5])])
def test_chirality_margin_also_charges_flattened_centres(cln, margin, expected):
    # squeezing every atom's z by s scales each signed volume by s: V/V_ref = s for every centre
    centres = torch.as_tensor(stereocentres(cln.topology))
    target = torch.as_tensor(cln.reference_xyz)[None].double()
    for s, cost in zip([1.0, 0.25, 0.0, -1.0], expected):
        squeezed = target * torch.tensor([1.0, 1.0, s], dtype=torch.float64)
        assert losses.chirality_loss(squeezed, target, centres, margin).item() == pytest.approx(cost, abs=1e-9)


def test_stereo_fraction_counts_frames_with_a_mirrored_centre(adp_traj):
    reference = md.load(str(adp_traj[0]), top=str(adp_traj[1]))[:20]
    assert stereo_fraction(reference, reference) == 1.0
    flipped = reference.xyz.copy()
    flipped[:5] *= np.array([-1, 1, 1])  # five D frames
    trajectory = md.Trajectory(flipped, reference.topology)
    assert stereo_fraction(trajectory, reference) == pytest.approx(0.75)
    assert l_chiral_fraction(trajectory) == pytest.approx(0.75)  # the same frames, by the Cα rule


def test_sidechain_rotors_of_chignolin_are_the_sp3_chi_dihedrals(cln, adp):
    from tcbm.analysis.observables import rotors, sidechain_rotors

    chis = sidechain_rotors(cln.topology)
    # Pro chi1 is a ring bond; Tyr/Asp/Trp chi2 end on an sp2 carbon; Gly has no CB
    assert sorted(chis) == ["ASP3:chi1", "GLU5:chi1", "GLU5:chi2", "THR6:chi1", "THR8:chi1", "TRP9:chi1",
                            "TYR2:chi1"]
    atoms = list(cln.topology.atoms)
    assert [atoms[i].name for i in chis["GLU5:chi2"]] == ["CA", "CB", "CG", "CD"]
    assert [atoms[i].name for i in chis["THR6:chi1"]] == ["N", "CA", "CB", "OG1"]
    assert sidechain_rotors(adp.topology) == {}  # Ala: CB's only heavy neighbour is CA
    assert {"THR6:CG2", "THR8:CG2"} <= set(rotors(cln.topology))


def test_peptide_omegas_and_a_cis_peptide_bond(adp, adp_traj):
    from tcbm.analysis.observables import cis_peptides_per_frame, peptide_omegas

    atoms = list(adp.topology.atoms)
    quads = peptide_omegas(adp.topology)
    assert [[atoms[i].name for i in q] for q in quads] == [["CH3", "C", "N", "CA"], ["CA", "C", "N", "C"]]
    traj = md.load(str(adp_traj[0]), top=str(adp_traj[1]))[:10]
    assert (cis_peptides_per_frame(traj) == 0).all()  # MD at 300 K: all trans
    # rotate the NME group (N and everything beyond it) by 180° about the C–N bond: that bond becomes cis
    x = traj.xyz.copy()
    c, n = quads[1][1], quads[1][2]
    moving = [a.index for a in atoms if a.residue.name == "NME"]
    axis = (x[:, n] - x[:, c]) / np.linalg.norm(x[:, n] - x[:, c], axis=-1, keepdims=True)
    rel = x[:, moving] - x[:, n][:, None]
    along = (rel * axis[:, None]).sum(-1, keepdims=True) * axis[:, None]
    x[:, moving] = x[:, n][:, None] + 2 * along - rel  # rotation by pi about the axis through N
    flipped = md.Trajectory(x, traj.topology)
    assert (cis_peptides_per_frame(flipped) == 1).all()
