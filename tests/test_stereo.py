"""Stereocentres: which atoms, their handedness, the chirality loss and the evaluation's stereo measure."""

import json

import mdtraj as md
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tcbm import losses, rollout
from tcbm.analysis.observables import l_chiral_fraction, stereo_fraction
from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.geometry import rotate_about_axis
from tcbm.latent import LatentSampler
from tcbm.model import BackmapCVAE
from tcbm.stereo import StereoKeeper, signed_volumes, stereocentres
from tcbm.voxels import VoxelGrid


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


def test_stereo_fraction_can_also_fail_flattened_centres(cln):
    """Squashing chignolin along z shrinks every signed volume by the factor: the sign (handedness) stays, so
    only the volume threshold sees the flattened centres."""
    reference = md.Trajectory(cln.reference_xyz[None], cln.topology)
    squashed = md.Trajectory(cln.reference_xyz[None] * np.array([1.0, 1.0, 0.3], dtype=np.float32), cln.topology)
    assert stereo_fraction(squashed, reference) == 1.0
    assert stereo_fraction(squashed, reference, min_volume=0.5) == 0.0
    assert stereo_fraction(squashed, reference, min_volume=0.25) == 1.0
    assert stereo_fraction(reference, reference, min_volume=0.5) == 1.0


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


def thr6_index(system) -> int:
    return next(r.index for r in system.topology.residues if r.name == "THR" and r.resSeq == 6)


def _reflect_side_chain(xyz: np.ndarray, topology: md.Topology, residue: int) -> np.ndarray:
    """``xyz`` with residue ``residue``'s side chain and Hα reflected through its N–Cα–C plane (a D-residue)."""
    atoms = {a.name: a.index for a in topology.residue(residue).atoms}
    ca, n, c = xyz[atoms["CA"]], xyz[atoms["N"]], xyz[atoms["C"]]
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    moved = [i for name, i in atoms.items() if name not in ("N", "H", "CA", "C", "O")]
    out = xyz.copy()
    out[moved] -= 2 * ((xyz[moved] - ca) @ normal)[:, None] * normal
    return out


def test_keeper_turns_a_mirrored_residue_back_exactly_and_its_nested_centre_with_it(cln):
    keeper = StereoKeeper(cln.topology, cln.mapping.weights.any(0)).double()
    assert keeper.kept_as_decoded == [] and len(keeper.rows) == 9  # even proline's ring can be reflected
    xyz = torch.as_tensor(cln.reference_xyz, dtype=torch.float64)
    thr6 = thr6_index(cln)
    mirrored = torch.as_tensor(_reflect_side_chain(cln.reference_xyz, cln.topology, thr6))
    centres = torch.as_tensor(stereocentres(cln.topology))
    assert (torch.sign(signed_volumes(mirrored, centres)) != torch.sign(signed_volumes(xyz, centres))).sum() == 2
    restored, corrected = keeper(mirrored[None], xyz[None])
    torch.testing.assert_close(restored[0], xyz, atol=1e-12, rtol=0)  # Thr Cα and Cβ both back, nothing else moved
    assert corrected.sum() == 1  # the Cα's reflection carried its Cβ back with it
    unchanged, none = keeper(xyz[None], xyz[None])
    assert torch.equal(unchanged[0], xyz) and not none.any()


def test_a_mirrored_side_chain_comes_back_as_in_the_previous_frame_moved_with_its_backbone(cln):
    # the previous frame turned and shifted (the molecule tumbles between frames); the network then turned
    # Thr6's side chain by 120 degrees about CA-CB and mirrored it: the keeper puts back the previous frame's side
    # chain (its chi1 too), carried along with N, CA, C, rather than the mirror image of what the network made
    keeper = StereoKeeper(cln.topology, cln.mapping.weights.any(0)).double()
    previous = torch.as_tensor(cln.reference_xyz, dtype=torch.float64)
    turn = torch.as_tensor(Rotation.from_euler("xyz", [0.3, -0.5, 1.1]).as_matrix())
    moved = previous @ turn.T + torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)
    thr6 = cln.topology.residue(thr6_index(cln))
    atoms = {a.name: a.index for a in thr6.atoms}
    side = torch.as_tensor([i for name, i in atoms.items() if name not in ("N", "H", "CA", "C", "O", "HA", "CB")])
    decoded = moved.clone()
    decoded[side] = rotate_about_axis(moved[side], moved[atoms["CB"]], moved[atoms["CB"]] - moved[atoms["CA"]],
                                      torch.tensor(2 * np.pi / 3, dtype=torch.float64))
    decoded = torch.as_tensor(_reflect_side_chain(decoded.numpy(), cln.topology, thr6.index))
    restored, corrected = keeper(decoded[None], previous[None])
    torch.testing.assert_close(restored[0], moved, atol=1e-9, rtol=0)
    assert corrected.sum() == 1


@pytest.mark.parametrize("squeeze, put_back", [(0.1, True), (0.4, False)])
def test_a_flattened_centre_counts_as_lost_below_a_fifth_of_its_previous_volume(cln, squeeze, put_back):
    keeper = StereoKeeper(cln.topology, cln.mapping.weights.any(0)).double()
    previous = torch.as_tensor(cln.reference_xyz, dtype=torch.float64)
    # Thr6's side chain and HA pressed toward the N-CA-C plane: the CA's signed volume shrinks about that much
    halfway = torch.as_tensor(_reflect_side_chain(cln.reference_xyz, cln.topology, thr6_index(cln)))
    flattened = previous + (1 - squeeze) / 2 * (halfway - previous)
    restored, corrected = keeper(flattened[None], previous[None])
    assert bool(corrected.any()) == put_back
    torch.testing.assert_close(restored[0], previous if put_back else flattened, atol=1e-9, rtol=0)


def test_keeper_restores_every_centre_of_a_mirror_image_and_keeps_bond_lengths(cln):
    keeper = StereoKeeper(cln.topology, cln.mapping.weights.any(0)).double()
    xyz = torch.as_tensor(cln.reference_xyz, dtype=torch.float64)[None]
    mirror = xyz * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    frames = torch.cat([mirror, xyz])  # a batch: the mirror image is corrected, the original left alone
    restored, corrected = keeper(frames, torch.cat([xyz, xyz]))
    centres = torch.as_tensor(stereocentres(cln.topology))
    assert torch.equal(torch.sign(signed_volumes(restored, centres)), torch.sign(signed_volumes(xyz, centres)).expand(2, -1))
    assert corrected[0].sum() == 7 and not corrected[1].any()  # 7 Cα; the Thr Cβ come back with their Cα
    bonds = torch.as_tensor([[a.index, b.index] for a, b in cln.topology.bonds])
    length = (restored[:, bonds[:, 0]] - restored[:, bonds[:, 1]]).norm(dim=-1)
    torch.testing.assert_close(length, (xyz[:, bonds[:, 0]] - xyz[:, bonds[:, 1]]).norm(dim=-1).expand(2, -1))
    fixed = cln.mapping.weights.any(0)
    torch.testing.assert_close(restored[0, fixed], mirror[0, fixed], atol=0, rtol=0)  # CG atoms never move


def test_a_centre_whose_branches_are_all_pinned_is_left_as_decoded(adp):
    pinned = StereoKeeper(adp.topology, adp.mapping.weights.any(0))  # ADP's CG holds Ala N, CA, CB and C
    assert pinned.kept_as_decoded == [next(a.index for a in adp.topology.atoms if a.name == "CA")]
    assert len(pinned.rows) == 0
    free = StereoKeeper(adp.topology, np.zeros(adp.n_atoms, dtype=bool))
    assert free.kept_as_decoded == [] and len(free.rows) == 1


def test_rollouts_keep_the_seed_frames_handedness_and_count_what_they_turned_back(cln, tmp_path, monkeypatch):
    # a network that outputs the mirror image of its previous frame: every centre mirrored at every step
    monkeypatch.setattr(rollout, "step", lambda network, cg, previous, z: previous[:, 0] * torch.tensor([-1.0, 1, 1]))
    config = {"latent_dim": 2, "width": 4, "depth": 1, "history": 1}
    network = BackmapCVAE.for_system(cln, VoxelGrid(d=8, r_grid=5.0, sigma=0.3), **config)
    rng = np.random.default_rng(0)
    frames = (cln.reference_xyz + rng.normal(scale=0.01, size=(7, cln.n_atoms, 3))).astype(np.float32)
    library = SeedLibrary.from_frames(frames, np.arange(1, 7), cln.mapping, 1, 1)
    model = BackmapModel(network, config, cln, LatentSampler.fit(rng.normal(size=(50, 2)), n_components=1), library)
    reference = md.Trajectory(frames, cln.topology)
    path = tmp_path / "cg.h5"
    md.Trajectory(cln.mapping(frames[1:]), cln.cg_topology(), time=np.arange(6.0)).save_hdf5(str(path))
    for keep, fraction, corrections in ((True, 1.0, 6 * 7), (False, 0.5, 0)):  # 7 Calpha; Thr Cbeta come along
        out = backmap_paths(model, [path], tmp_path / str(keep), RolloutSettings(progress=False, keep_stereo=keep))[0]
        assert stereo_fraction(md.load(str(out), top=str(out.parent / "topology.pdb")), reference) == fraction
        assert json.loads(out.with_suffix(".json").read_text())["stereo_corrections"] == corrections
