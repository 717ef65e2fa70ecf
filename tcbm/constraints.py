"""Bonds to hydrogen held at their force-field lengths, as in reference simulations run with
``constraints=HBonds`` (every ``tcbm simulate`` run): the hydrogen moves along its bond, the heavy atom stays.

Used by the model's coordinate read-out (``network.constrain_hbonds``) and by the physics refinement, so a
backmapped frame obeys the same holonomic constraints as the trajectory it was trained on.  Whether the
training data have them is read from the data (:func:`hbonds_constrained_in`)."""

from __future__ import annotations

import numpy as np
import openmm
import torch
from torch import nn

from tcbm.energy import KB
from tcbm.systems import MolecularSystem

#: a bond to hydrogen whose length varies less than this (standard deviation over frames, nm) is constrained;
#: a flexible C–H bond at 300 K varies by sqrt(kT/k) ≈ 0.003 nm, an xtc-stored constrained one by < 0.0005 nm
CONSTRAINED_SD_NM = 0.0015


def hydrogen_bonds(system: MolecularSystem, omm_system: openmm.System | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The bonds between a heavy atom and a hydrogen in the force field of ``system``: index pairs (m, 2) as
    (heavy atom, hydrogen) and their equilibrium lengths (m,) nm.  ``omm_system``: the system's OpenMM
    ``System`` where the caller has built it already (else built here)."""
    hydrogen = [atom.element.symbol == "H" for atom in system.topology.atoms]
    pairs, lengths = [], []
    if omm_system is None:
        omm_system = system.openmm_system()  # kept alive: its forces are views into it
    for force in omm_system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for n in range(force.getNumBonds()):
                i, j, length, _ = force.getBondParameters(n)
                if hydrogen[i] != hydrogen[j]:
                    pairs.append((j, i) if hydrogen[i] else (i, j))
                    lengths.append(length.value_in_unit(openmm.unit.nanometer))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(lengths, dtype=np.float64)


def hbonds_constrained_in(xyz: np.ndarray, pairs: np.ndarray, lengths: np.ndarray,
                          frames: np.ndarray | None = None) -> bool:
    """Whether the frames ``xyz`` (T, N, 3) nm (only the indices ``frames`` of them, if given) hold every bond
    ``pairs`` at its length ``lengths``: each bond's length varies by less than :data:`CONSTRAINED_SD_NM` and
    its mean is that length within it."""
    observed = np.linalg.norm(xyz[:, pairs[:, 1]] - xyz[:, pairs[:, 0]], axis=-1)  # (T, m): no copy of all atoms
    if frames is not None:
        observed = observed[frames]
    if len(pairs) == 0 or len(observed) < 2:
        return False
    return bool((observed.std(0) < CONSTRAINED_SD_NM).all()
                and (np.abs(observed.mean(0) - lengths) < CONSTRAINED_SD_NM).all())


class BondConstraints(nn.Module):
    """Moves each hydrogen of ``pairs`` (m, 2; heavy atom, hydrogen) along its bond to ``lengths`` (m,) nm;
    differentiable, any batch shape (..., N, 3), in the coordinates' dtype."""

    def __init__(self, pairs: np.ndarray, lengths: np.ndarray) -> None:
        super().__init__()
        if len(np.unique(pairs[:, 1])) != len(pairs):
            raise ValueError("BondConstraints moves each hydrogen along its one bond: a hydrogen is bonded twice")
        self.register_buffer("pairs", torch.as_tensor(pairs, dtype=torch.long).view(-1, 2), persistent=False)
        self.register_buffer("lengths", torch.as_tensor(lengths, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.pairs):
            return x
        heavy, hydrogen = self.pairs[:, 0], self.pairs[:, 1]
        bond = x[..., hydrogen, :] - x[..., heavy, :]
        length = self.lengths.to(x.dtype)[:, None]
        placed = x[..., heavy, :] + bond * (length / bond.norm(dim=-1, keepdim=True).clamp_min(1e-9))
        return x.index_copy(-2, hydrogen, placed)


def hydrogen_angles(system: MolecularSystem, max_energy_kJmol: float, omm_system: openmm.System | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The force field's angles X–C–H between two heavy atoms and a hydrogen: index rows (m, 3) as (X, C, H),
    and bounds (m, 2) rad on each such angle within which its harmonic energy stays at most
    ``max_energy_kJmol`` (θ0 ± sqrt(2 E / k)).  ``omm_system`` as in :func:`hydrogen_bonds`."""
    hydrogen = [atom.element.symbol == "H" for atom in system.topology.atoms]
    rows, bounds = [], []
    if omm_system is None:
        omm_system = system.openmm_system()
    for force in omm_system.getForces():
        if isinstance(force, openmm.HarmonicAngleForce):
            for n in range(force.getNumAngles()):
                i, j, k, theta0, stiffness = force.getAngleParameters(n)
                if hydrogen[j] or hydrogen[i] == hydrogen[k]:
                    continue
                theta0 = theta0.value_in_unit(openmm.unit.radian)
                half_width = np.sqrt(2 * max_energy_kJmol / stiffness.value_in_unit(
                    openmm.unit.kilojoule_per_mole / openmm.unit.radian ** 2))
                rows.append((k, j, i) if hydrogen[i] else (i, j, k))
                bounds.append((max(theta0 - half_width, 0.0), min(theta0 + half_width, np.pi)))
    return np.array(rows, dtype=np.int64).reshape(-1, 3), np.array(bounds, dtype=np.float64).reshape(-1, 2)


class AngleBounds(nn.Module):
    """Turns each hydrogen H of ``rows`` (m, 3; X, C, H) about its heavy atom C, in the X–C–H plane, until the
    angle X–C–H lies within ``bounds`` (m, 2) rad; the C–H length and the H's side of the plane are kept, and
    an angle already within bounds is left as it is.  A hydrogen with several such angles (on a CH or CH2) is
    handled one angle per pass.  Differentiable, any batch shape (..., N, 3)."""

    def __init__(self, rows: np.ndarray, bounds: np.ndarray) -> None:
        super().__init__()
        order = np.argsort(rows[:, 2], kind="stable")
        rows, bounds = rows[order].reshape(-1, 3), bounds[order].reshape(-1, 2)
        # pass p holds each hydrogen's p-th angle, so that no hydrogen is moved twice in one vectorised pass
        occurrence = np.zeros(len(rows), dtype=np.int64)
        for n in range(1, len(rows)):
            occurrence[n] = occurrence[n - 1] + 1 if rows[n, 2] == rows[n - 1, 2] else 0
        self.passes = int(occurrence.max()) + 1 if len(rows) else 0
        for p in range(self.passes):
            self.register_buffer(f"rows_{p}", torch.as_tensor(rows[occurrence == p]), persistent=False)
            self.register_buffer(f"bounds_{p}", torch.as_tensor(bounds[occurrence == p]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for p in range(self.passes):
            rows, bounds = getattr(self, f"rows_{p}"), getattr(self, f"bounds_{p}").to(x.dtype)
            centre = x[..., rows[:, 1], :]
            axis = x[..., rows[:, 0], :] - centre
            axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            bond = x[..., rows[:, 2], :] - centre
            along = (bond * axis).sum(-1, keepdim=True)
            across = bond - along * axis
            across_norm = across.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            angle = torch.atan2(across_norm, along)
            bounded = torch.minimum(torch.maximum(angle, bounds[:, :1]), bounds[:, 1:])
            length = bond.norm(dim=-1, keepdim=True)
            placed = centre + length * (bounded.cos() * axis + bounded.sin() * across / across_norm)
            x = x.index_copy(-2, rows[:, 2], torch.where(angle == bounded, x[..., rows[:, 2], :], placed))
        return x


def resolve_network(network: dict, system: MolecularSystem, temperature_K: float, xyz: np.ndarray | None = None,
                    frames: np.ndarray | None = None) -> dict:
    """The network config (``model.network``) as keyword arguments of :class:`~tcbm.model.BackmapCVAE`:
    ``constrain_hbonds`` resolved on the training frames (:func:`resolve_hbond_constraints`) and
    ``hydrogen_angle_max_kT`` turned into kJ/mol at the data's ``temperature_K`` (:func:`resolve_angle_bounds`)."""
    return resolve_angle_bounds(resolve_hbond_constraints(network, system, xyz, frames), temperature_K)


def resolve_hbond_constraints(network: dict, system: MolecularSystem, xyz: np.ndarray | None,
                              frames: np.ndarray | None = None) -> dict:
    """``network`` (keyword arguments of :class:`~tcbm.model.BackmapCVAE`) with ``constrain_hbonds: 'auto'``
    replaced by whether the training frames (``xyz`` (T, N, 3) nm, or its indices ``frames``) hold the
    system's bonds to hydrogen at their lengths (:func:`hbonds_constrained_in`); without frames (None) by
    true, as ``tcbm simulate`` makes them; ``true`` / ``false`` pass unchanged."""
    setting = network.get("constrain_hbonds", False)
    if setting == "auto":
        setting = True if xyz is None else hbonds_constrained_in(xyz, *hydrogen_bonds(system), frames)
    elif not isinstance(setting, bool):
        raise ValueError(f"model.network.constrain_hbonds must be true, false or auto, got {setting!r}")
    return {**network, "constrain_hbonds": setting}


def resolve_angle_bounds(network: dict, temperature_K: float) -> dict:
    """``network`` with ``hydrogen_angle_max_kT`` (the config's form: thermal energies at ``temperature_K``,
    the data's temperature in K) replaced by the model's ``hydrogen_angle_max_kJmol``; None stays off."""
    network = dict(network)
    max_kt = network.pop("hydrogen_angle_max_kT", None)
    if max_kt is not None:
        if max_kt <= 0:
            raise ValueError(f"model.network.hydrogen_angle_max_kT must be positive (or null: off), got {max_kt}")
        network["hydrogen_angle_max_kJmol"] = float(max_kt) * KB * temperature_K
    return network
