"""Bonds to hydrogen at their force-field lengths: the table against OpenMM's own constraints, the
projection, its detection in data, and the model read-out that applies it."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm.constraints import (
    AngleBounds,
    BondConstraints,
    hbonds_constrained_in,
    hydrogen_angles,
    hydrogen_bonds,
    resolve_angle_bounds,
    resolve_hbond_constraints,
    resolve_network,
)
from tcbm.energy import KB
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
    # the whole network config at once: without frames 'auto' means as `tcbm simulate` makes them
    resolved = resolve_network({**network, "hydrogen_angle_max_kT": 2.0}, adp, 300.0, noisy)
    assert resolved["constrain_hbonds"] is False and resolved["hydrogen_angle_max_kJmol"] == pytest.approx(2 * KB * 300)
    assert resolve_network(network, adp, 300.0)["constrain_hbonds"] is True


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


def _angles(x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    a, c, b = (x[..., rows[:, i], :] for i in range(3))
    u, v = a - c, b - c
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def test_hydrogen_angle_table_bounds_each_angles_energy(adp):
    import openmm

    rows, bounds = hydrogen_angles(adp, max_energy_kJmol=5.0)
    hydrogen = np.array([a.element.symbol == "H" for a in adp.topology.atoms])
    assert not hydrogen[rows[:, :2]].any() and hydrogen[rows[:, 2]].all()
    # ADP: every hydrogen sits on a carbon or nitrogen that has a heavy neighbour
    assert set(rows[:, 2]) == set(np.flatnonzero(hydrogen))
    force = next(f for f in adp.openmm_system().getForces() if isinstance(f, openmm.HarmonicAngleForce))
    params = {}
    for n in range(force.getNumAngles()):
        i, j, k, theta0, stiffness = force.getAngleParameters(n)
        params[(i, j, k)] = params[(k, j, i)] = (theta0.value_in_unit(openmm.unit.radian),
                                                 stiffness.value_in_unit(
                                                 openmm.unit.kilojoule_per_mole / openmm.unit.radian ** 2))
    for (x, c, h), (low, high) in zip(rows, bounds):
        theta0, k = params[(x, c, h)]
        assert 0.5 * k * (high - theta0) ** 2 == pytest.approx(5.0) and low < theta0 < high


def test_angle_bounds_turn_only_hydrogens_outside_them(adp):
    rows, bounds = hydrogen_angles(adp, max_energy_kJmol=5.0)
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)[None].repeat(2, 1, 1)
    inside = _angles(x, rows)
    assert ((inside >= torch.as_tensor(bounds[:, 0])) & (inside <= torch.as_tensor(bounds[:, 1]))).all()
    # frame 1: a methyl hydrogen (one heavy-atom angle) pulled toward its rotor axis
    methyl = next(n for n, h in enumerate(rows[:, 2]) if (rows[:, 2] == h).sum() == 1)
    xh, ch, hh = rows[methyl]
    axis = (x[1, ch] - x[1, xh]) / (x[1, ch] - x[1, xh]).norm()
    bond = x[1, hh] - x[1, ch]
    x[1, hh] = x[1, ch] + 0.5 * bond + 0.1 * axis  # angle X-C-H near 150 degrees, shorter bond
    before = x.clone()
    out = AngleBounds(rows, bounds)(x)
    assert torch.equal(out[0], before[0])  # every angle within bounds: nothing moves
    moved = (out[1] - before[1]).norm(dim=-1) > 0
    assert moved.nonzero().flatten().tolist() == [hh]
    assert _angles(out[1], rows[methyl:methyl + 1]).item() == pytest.approx(bounds[methyl, 1])
    assert (out[1, hh] - out[1, ch]).norm() == pytest.approx((before[1, hh] - before[1, ch]).norm().item())
    # still in the X-C-H plane it was in
    normal = torch.linalg.cross(x[1, xh] - x[1, ch], before[1, hh] - x[1, ch])
    assert torch.dot(normal, out[1, hh] - out[1, ch]).abs() < 1e-12


def test_model_read_out_bounds_hydrogen_angles_and_keeps_bonds_and_cg(adp):
    grid = VoxelGrid(d=8, r_grid=2.0, sigma=0.2)
    torch.manual_seed(0)
    config = dict(latent_dim=2, width=4, history=1, project_cg="smooth", constrain_hbonds=True)
    model = BackmapCVAE.for_system(adp, grid, hydrogen_angle_max_kJmol=11.2, **config).eval()
    free_model = BackmapCVAE.for_system(adp, grid, **config).eval()
    free_model.load_state_dict(model.state_dict())
    aa = torch.as_tensor(adp.reference_xyz, dtype=torch.float32)[None].repeat(2, 1, 1)
    cg = adp.mapping(aa)
    rows, bounds = hydrogen_angles(adp, 11.2)
    single = np.array([(rows[:, 2] == h).sum() == 1 for h in rows[:, 2]])  # methyl hydrogens: one angle each
    low, high = (torch.as_tensor(b[single]) for b in bounds.T)
    coords = model(aa, cg, aa[:, None]).coords.detach().double()
    angles = _angles(coords, rows[single])
    assert ((angles >= low - 1e-5) & (angles <= high + 1e-5)).all()
    free_angles = _angles(free_model(aa, cg, aa[:, None]).coords.detach().double(), rows[single])
    assert ((free_angles < low) | (free_angles > high)).any()  # an untrained read-out strains some
    pairs, lengths = hydrogen_bonds(adp)
    bonds = (coords[:, pairs[:, 1]] - coords[:, pairs[:, 0]]).norm(dim=-1)
    assert torch.allclose(bonds, torch.as_tensor(lengths).expand_as(bonds), atol=1e-6)
    assert torch.allclose(adp.mapping(coords.float()), cg, atol=1e-5)


def test_angle_bound_in_kt_resolves_to_kj_per_mol_at_the_data_temperature():
    network = {"history": 1, "hydrogen_angle_max_kT": 4.5}
    resolved = resolve_angle_bounds(network, 350.0)
    assert resolved == {"history": 1, "hydrogen_angle_max_kJmol": pytest.approx(4.5 * 0.0083144626 * 350.0)}
    assert "hydrogen_angle_max_kT" in network  # the caller's dict is left as it was
    assert resolve_angle_bounds({"hydrogen_angle_max_kT": None}, 300.0) == {}
    with pytest.raises(ValueError, match="must be positive"):
        resolve_angle_bounds({"hydrogen_angle_max_kT": -1.0}, 300.0)


def test_angle_bound_acts_on_the_output_only_not_in_training(adp):
    # the training loss must see where the read-out put a hydrogen, or training stops correcting strained ones
    grid = VoxelGrid(d=8, r_grid=2.0, sigma=0.2)
    config = dict(latent_dim=2, width=4, history=1, project_cg="smooth", constrain_hbonds=True)
    torch.manual_seed(0)
    bounded = BackmapCVAE.for_system(adp, grid, hydrogen_angle_max_kJmol=11.2, **config)
    free = BackmapCVAE.for_system(adp, grid, **config)
    free.load_state_dict(bounded.state_dict())
    aa = torch.as_tensor(adp.reference_xyz, dtype=torch.float32)[None].repeat(2, 1, 1)
    cg = adp.mapping(aa)
    with torch.no_grad():
        train_out = [m.train()(aa, cg, aa[:, None], sample=False).coords for m in (bounded, free)]
        eval_out = [m.eval()(aa, cg, aa[:, None], sample=False).coords for m in (bounded, free)]
    assert torch.equal(train_out[0], train_out[1])
    assert not torch.equal(eval_out[0], eval_out[1]) and torch.equal(eval_out[1], train_out[1])
