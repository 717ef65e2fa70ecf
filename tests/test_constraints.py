"""Bonds to hydrogen at their force-field lengths: the table against OpenMM's own constraints, the
projection, its detection in data, and the model read-out that applies it."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm.constraints import BondConstraints, hbonds_constrained_in, hydrogen_bonds, resolve_hbond_constraints
from tcbm.model import BackmapCVAE
from tcbm.voxels import VoxelGrid


def test_hydrogen_bond_table_matches_openmm_constraints(adp, cln):
    for system in (adp, cln):
        pairs, lengths = hydrogen_bonds(system)
        omm = system.openmm_system(constrain_hbonds=True)  # OpenMM's own HBonds constraints: the known answer
        expected = {}
        for n in range(omm.getNumConstraints()):
            i, j, length = omm.getConstraintParameters(n)
            expected[frozenset((i, j))] = length._value
        assert len(pairs) == len(expected)
        elements = [a.element.symbol for a in system.topology.atoms]
        for (heavy, hydrogen), length in zip(pairs, lengths):
            assert elements[hydrogen] == "H" and elements[heavy] != "H"
            assert length == pytest.approx(expected[frozenset((heavy, hydrogen))])


def test_projection_sets_lengths_keeps_heavy_atoms_and_bond_directions(adp):
    pairs, lengths = hydrogen_bonds(adp)
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)[None].repeat(3, 1, 1)
    x = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    y = BondConstraints(pairs, lengths)(x)
    heavy, hydrogen = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    before, after = x[:, hydrogen] - x[:, heavy], y[:, hydrogen] - y[:, heavy]
    assert torch.allclose(after.norm(dim=-1), torch.as_tensor(lengths).expand(3, -1))
    # the hydrogen moves along its bond: same direction, only the length changes
    assert torch.allclose(torch.nn.functional.cosine_similarity(before, after, dim=-1), torch.ones(3, len(pairs), dtype=torch.float64))
    others = np.setdiff1d(np.arange(adp.n_atoms), pairs[:, 1])
    assert torch.equal(y[:, others], x[:, others])
    y.sum().backward()  # differentiable: the model trains through it
    assert torch.isfinite(x.grad).all() and x.grad[:, hydrogen].abs().sum() > 0


def test_detection_in_data(adp_traj, adp):
    pairs, lengths = hydrogen_bonds(adp)
    simulated = md.load(str(adp_traj[0]), top=str(adp_traj[1])).xyz  # tcbm simulate constrains bonds to H
    assert hbonds_constrained_in(simulated, pairs, lengths)
    noisy = simulated + np.random.default_rng(0).normal(0, 0.003, simulated.shape).astype(np.float32)
    assert not hbonds_constrained_in(noisy, pairs, lengths)  # ~ a flexible C-H bond's spread at 300 K
    assert not hbonds_constrained_in(simulated, pairs, lengths + 0.005)  # fixed, but at other lengths
    mixed = np.concatenate([simulated, noisy])  # only the frames asked for count
    assert hbonds_constrained_in(mixed, pairs, lengths, frames=np.arange(len(simulated)))
    assert not hbonds_constrained_in(mixed, pairs, lengths)
    network = {"history": 1, "constrain_hbonds": "auto"}
    assert resolve_hbond_constraints(network, adp, simulated)["constrain_hbonds"] is True
    assert resolve_hbond_constraints(network, adp, noisy)["constrain_hbonds"] is False
    assert resolve_hbond_constraints({**network, "constrain_hbonds": False}, adp, simulated)["constrain_hbonds"] is False
    with pytest.raises(ValueError, match="true, false or auto"):
        resolve_hbond_constraints({**network, "constrain_hbonds": "yes"}, adp, simulated)


def test_model_read_out_obeys_constraints_and_cg(adp):
    grid = VoxelGrid(d=8, r_grid=2.0, sigma=0.2)
    torch.manual_seed(0)
    model = BackmapCVAE.for_system(adp, grid, latent_dim=2, width=4, history=1, project_cg="smooth",
                                   constrain_hbonds=True)
    aa = torch.as_tensor(adp.reference_xyz, dtype=torch.float32)[None].repeat(2, 1, 1)
    cg = adp.mapping(aa)
    coords = model(aa, cg, aa[:, None]).coords.detach().double()
    pairs, lengths = hydrogen_bonds(adp)
    bonds = (coords[:, pairs[:, 1]] - coords[:, pairs[:, 0]]).norm(dim=-1)
    assert torch.allclose(bonds, torch.as_tensor(lengths).expand_as(bonds), atol=1e-6)
    assert torch.allclose(adp.mapping(coords.float()), cg, atol=1e-5)  # hydrogens are not beads: CG kept
    unconstrained = BackmapCVAE.for_system(adp, grid, latent_dim=2, width=4, history=1, project_cg="smooth")
    unconstrained.load_state_dict(model.state_dict())
    free = unconstrained(aa, cg, aa[:, None]).coords.detach().double()
    assert (free[:, pairs[:, 1]] - free[:, pairs[:, 0]]).norm(dim=-1).sub(torch.as_tensor(lengths)).abs().max() > 0.01
    with pytest.raises(ValueError, match="resolve 'auto'"):
        BackmapCVAE.for_system(adp, grid, latent_dim=2, width=4, history=1, constrain_hbonds="auto")
