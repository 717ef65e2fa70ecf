import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from tcbm.energy import MMEnergy, angles, dihedrals


def openmm_reference(system, xyz, implicit_solvent=None):
    omm = system.openmm_system(implicit_solvent)
    context = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for frame in xyz:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
    return np.array(energies), np.array(forces)


@pytest.mark.parametrize("name", ["adp", "cln"])
@pytest.mark.parametrize("implicit_solvent", [None, "obc"])
def test_energy_and_forces_match_openmm(name, implicit_solvent, request):
    system = request.getfixturevalue(name)
    rng = np.random.default_rng(0)
    xyz = system.reference_xyz[None] + rng.normal(0.0, 0.01, (50, system.n_atoms, 3))
    ref_energy, ref_forces = openmm_reference(system, xyz, implicit_solvent)
    x = torch.tensor(xyz, dtype=torch.float64, requires_grad=True)
    model = MMEnergy(system.openmm_system(implicit_solvent))
    assert model.implicit_solvent == (implicit_solvent is not None)
    energy = model(x)
    energy.sum().backward()
    assert np.abs(energy.detach().numpy() - ref_energy).max() < 1e-3
    assert np.abs(-x.grad.numpy() - ref_forces).max() < 1e-2
    assert np.ptp(ref_energy) > 10.0  # the frames really differ


def test_float32_close_to_float64(adp):
    energy = MMEnergy(adp.openmm_system())
    x = torch.tensor(adp.reference_xyz[None], dtype=torch.float64)
    assert abs(energy(x.float()).item() - energy(x).item()) < 0.05


def test_soft_energy_finite_for_overlapping_atoms(adp):
    energy = MMEnergy(adp.openmm_system())
    x = torch.zeros(2, adp.n_atoms, 3, dtype=torch.float64)
    x[1] = torch.randn(adp.n_atoms, 3) * 1e-4
    x.requires_grad_(True)
    value = energy(x, soft=True)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()
    # and agrees with the exact energy at physical geometries to a fraction of kT
    ref = torch.tensor(adp.reference_xyz[None])
    assert abs(energy(ref, soft=True).item() - energy(ref).item()) < 2.5


def test_angles_and_dihedrals_match_mdtraj(adp):
    import mdtraj as md

    traj = adp.reference_trajectory()
    phi_idx, phi = md.compute_phi(traj)
    x = torch.tensor(traj.xyz, dtype=torch.float64)
    i = torch.tensor(phi_idx[0])
    assert abs(dihedrals(x, *i).item() - phi[0, 0]) < 1e-5
    ang = md.compute_angles(traj, phi_idx[:, :3])
    assert abs(angles(x, *i[:3]).item() - ang[0, 0]) < 1e-5


def test_unsupported_force_is_reported(adp):
    with pytest.raises(ValueError, match="does not support OpenMM force CustomGBForce"):
        MMEnergy(adp.openmm_system(implicit_solvent="gbn2"))


def test_wrong_atom_count(adp):
    with pytest.raises(ValueError, match="expects 22 atoms"):
        MMEnergy(adp.openmm_system())(torch.zeros(1, 5, 3))
