import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm.mapping import CGMapping
from tcbm.systems import MolecularSystem, load_system, make_system


def test_adp_mapping_is_C_N_CA_CB_C_N(adp):
    atoms = list(adp.topology.atoms)
    selected = [atoms[i] for i in np.flatnonzero(adp.mapping.weights.max(axis=0))]
    assert [a.name for a in selected] == ["C", "N", "CA", "CB", "C", "N"]
    assert [a.residue.name for a in selected] == ["ACE", "ALA", "ALA", "ALA", "ALA", "NME"]
    assert adp.n_atoms == 22 and adp.n_beads == 6


def test_cln_mapping_is_the_ten_calpha(cln):
    assert cln.n_beads == 10
    assert all(name.endswith("-CA") for name in cln.mapping.bead_names)
    assert "".join(r.code for r in cln.topology.residues) == "GYDPETGTWG"


def test_com_mapping_matches_mdtraj(adp):
    groups = [[r_atom.index for r_atom in residue.atoms] for residue in adp.topology.residues]
    mapping = CGMapping.from_groups(adp.topology, groups, weighting="mass")
    rng = np.random.default_rng(1)
    xyz = adp.reference_xyz[None] + rng.normal(0, 0.02, (5, 22, 3))
    for k, group in enumerate(groups):
        expected = md.compute_center_of_mass(md.Trajectory(xyz[:, group], adp.topology.subset(group)))
        assert np.allclose(mapping(xyz)[:, k], expected, atol=1e-6)
    assert np.allclose(mapping(torch.tensor(xyz)).numpy(), mapping(xyz), atol=1e-10)


def test_custom_system_from_pdb_with_groups(tmp_path, adp):
    pdb = tmp_path / "mol.pdb"
    adp.reference_trajectory().save_pdb(str(pdb))
    system = load_system({"name": "mine", "pdb": str(pdb), "groups": [[0, 1, 2, 3], [8, 10]], "weighting": "uniform"})
    assert system.n_beads == 2
    assert np.allclose(system.mapping(adp.reference_xyz)[1], adp.reference_xyz[[8, 10]].mean(0))
    again = MolecularSystem.from_dict(system.to_dict())
    assert np.allclose(again.mapping.weights, system.mapping.weights)
    assert np.abs(again.reference_xyz - system.reference_xyz).max() < 1e-3


def test_selection_matching_nothing(adp):
    with pytest.raises(ValueError, match="matches no atom"):
        CGMapping.from_selection(adp.topology, "name XYZ")


def test_selection_wrong_bead_count(adp):
    with pytest.raises(ValueError, match="matches 3 atoms, expected 6 beads"):
        CGMapping.from_selection(adp.topology, "name CA CB or (resname ACE and name C)", n_beads=6)


def test_unknown_forcefield_residue(tmp_path, adp):
    pdb = tmp_path / "odd.pdb"
    adp.reference_trajectory().save_pdb(str(pdb))
    pdb.write_text(pdb.read_text().replace("ALA", "XYZ"))
    system = make_system("odd", pdb, selection="name CA")
    with pytest.raises(ValueError, match="cannot parametrise the topology"):
        system.openmm_system()


def test_missing_topology_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_system("x", tmp_path / "nope.pdb", selection="all")


def test_unknown_builtin():
    with pytest.raises(ValueError, match="unknown built-in system"):
        load_system("water")


def _bonds(topology: md.Topology) -> np.ndarray:
    return np.array([[a.index, b.index] for a, b in topology.bonds])


@pytest.mark.parametrize("weighting", ["slice", "mass"])
def test_cg_projection_is_exact_and_keeps_bonds_inside_a_bead_block(adp, weighting):
    if weighting == "slice":
        mapping = adp.mapping
    else:  # residue centres of mass: every atom belongs to a group
        mapping = CGMapping.from_groups(adp.topology, [[a.index for a in r.atoms] for r in adp.topology.residues])
    projection = mapping.projection(_bonds(adp.topology))
    rng = np.random.default_rng(0)
    xyz = adp.reference_xyz + rng.normal(0, 0.05, (22, 3))
    cg = mapping(adp.reference_xyz)
    projected = xyz + projection @ (cg - mapping(xyz))
    np.testing.assert_allclose(mapping(projected), cg, atol=1e-9)
    block = projection.argmax(axis=1)
    for a, b in _bonds(adp.topology):
        if block[a] == block[b]:  # moved together: the bond length is unchanged
            assert np.linalg.norm(projected[a] - projected[b]) == pytest.approx(np.linalg.norm(xyz[a] - xyz[b]))


def test_cg_projection_assigns_atoms_to_the_nearest_bead_in_the_bond_graph(adp):
    block = adp.mapping.projection(_bonds(adp.topology)).argmax(axis=1)
    names = [f"{a.residue.name}:{a.name}" for a in adp.topology.atoms]
    bead_of = {name: adp.mapping.bead_names[b] for name, b in zip(names, block)}
    assert bead_of["ALA:HA"] == adp.mapping.bead_names[2] and "CA" in bead_of["ALA:HA"]
    assert "CB" in bead_of["ALA:HB1"] and "C" in bead_of["ACE:O"] and "N" in bead_of["ALA:H"]
    assert bead_of["ACE:CH3"] == bead_of["ACE:C"]  # one bond from ACE C, further from every other bead


def test_cg_projection_needs_every_atom_bonded_to_a_bead(adp):
    bonds = _bonds(adp.topology)
    h1 = 0  # ACE H1: drop its bond, so it is connected to nothing
    with pytest.raises(ValueError, match=r"atoms \[0\] are bonded to no CG bead"):
        adp.mapping.projection(bonds[(bonds != h1).all(axis=1)])


def test_smooth_cg_projection_is_exact_translates_rigidly_and_strains_less_than_the_rigid_one(adp):
    bonds = _bonds(adp.topology)
    smooth, rigid = (adp.mapping.projection(bonds, kind) for kind in ("smooth", "rigid"))
    rng = np.random.default_rng(1)
    xyz = adp.reference_xyz + rng.normal(0, 0.02, (22, 3))
    residual = rng.normal(0, 0.05, (adp.n_beads, 3))
    np.testing.assert_allclose(adp.mapping(xyz + smooth @ residual), adp.mapping(xyz) + residual, atol=1e-9)
    shift = np.array([0.3, -0.1, 0.2])  # the same residual on every bead: a rigid translation, no strain
    np.testing.assert_allclose(smooth @ np.tile(shift, (adp.n_beads, 1)), np.tile(shift, (22, 1)), atol=1e-9)
    neighbours = [[] for _ in range(22)]
    for a, b in bonds:
        neighbours[a].append(b)
        neighbours[b].append(a)
    pairs = {tuple(sorted((i, j))) for i in range(22) for j in neighbours[i]}
    pairs |= {tuple(sorted((a, b))) for i in range(22) for a in neighbours[i] for b in neighbours[i] if a != b}
    i, j = np.array(sorted(pairs)).T

    def strain(projection):
        delta = projection @ residual
        return ((delta[i] - delta[j]) ** 2).sum()

    assert strain(smooth) < 0.9 * strain(rigid)  # the least-strain correction (0.77 of it here)
    with pytest.raises(ValueError, match="'rigid' or 'smooth'"):
        adp.mapping.projection(bonds, "elastic")
