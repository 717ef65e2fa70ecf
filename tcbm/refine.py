"""Optional physics refinement of backmapped frames with the torch force field, restrained to the CG:
a relaxation (FIRE minimisation) followed by a short Langevin molecular dynamics at temperature T.

Every move is followed by a projection back onto the CG input (the minimal correction ``W⁺(CG − W x)`` of
the linear map W, which for a slice map puts the bead atoms exactly on their beads) and, as in the
reference simulations, puts every X–H bond at its force-field length.

1. ``minimize_steps`` of FIRE (Bitzek et al., PRL 97, 170201, 2006; 0 by default), per frame: the
   decoder's strained bonds and angles and its atom overlaps relax, with each atom's move capped at
   ``max_move_nm``.  For decoders whose frames are far from thermal (overlapping atoms); it cools frames
   that are already thermal into a minimum, which the dynamics then have to warm up again.  FIRE works on
   any stiffness: an overdamped (Brownian) step small enough for chignolin's carboxylates and rings
   (D·dt ≤ ~1e-6 nm²) needs thousands of steps to relax a strained angle.
2. ``steps`` of Langevin dynamics (OpenMM's LangevinMiddle splitting, element masses, ``timestep_ps``,
   ``friction_per_ps``), velocities drawn from Maxwell–Boltzmann at ``temperature_K``: bonds and angles
   regain their thermal spread within a few vibrational periods (~0.05 ps), while slow torsions
   (rotamers) stay as the model made them.

Forces come from the force field with the reference simulations' ``implicit_solvent`` (OBC; None:
vacuum, whose unscreened charges pull polar groups together within 0.1 ps), Lennard-Jones and Coulomb
in their soft-core form (finite for overlapping atoms; exact to < 0.3 % at physical distances).  It is
off by default; outputs made with it must be labelled as refined, because the energies are then partly
the force field's work, not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tcbm.constraints import BondConstraints, hydrogen_bonds
from tcbm.energy import KB, MMEnergy
from tcbm.systems import MolecularSystem

#: implicit solvents the torch force field has (:class:`~tcbm.energy.MMEnergy`), None for vacuum.
SOLVENTS = ("obc", None)
#: FIRE's constants (Bitzek et al. 2006): dt growth/shrink factors, mixing α, its decay, steps before growth,
#: largest step as a multiple of the MD time step.
FIRE_GROW, FIRE_SHRINK, FIRE_ALPHA, FIRE_ALPHA_DECAY, FIRE_DELAY, FIRE_MAX_STEP = 1.1, 0.5, 0.1, 0.99, 5, 4.0


@dataclass(frozen=True)
class RefinementSettings:
    """``minimize_steps`` of FIRE then ``steps`` of Langevin dynamics per frame (``steps`` 0 = off) at
    ``temperature_K`` (K), step ``timestep_ps`` (ps), friction ``friction_per_ps`` (1/ps); every atom's move
    per minimisation step capped at ``max_move_nm`` (nm); forces with ``implicit_solvent`` ('obc' as in
    ``tcbm simulate``, or None: vacuum)."""

    steps: int = 0
    minimize_steps: int = 0
    temperature_K: float = 300.0
    timestep_ps: float = 0.001
    friction_per_ps: float = 10.0
    max_move_nm: float = 0.01
    constrain_hbonds: bool = True
    implicit_solvent: str | None = "obc"

    def __post_init__(self) -> None:
        if (self.steps < 0 or self.minimize_steps < 0 or self.temperature_K <= 0 or self.timestep_ps <= 0
                or self.friction_per_ps < 0 or self.max_move_nm <= 0):
            raise ValueError(f"invalid refinement settings {self}: need steps, minimize_steps >= 0, positive "
                             "temperature, timestep and max_move, friction >= 0")
        if self.implicit_solvent not in SOLVENTS:
            raise ValueError(f"refinement implicit_solvent must be one of {SOLVENTS} (null: vacuum), got "
                             f"{self.implicit_solvent!r}")


class Refiner(torch.nn.Module):
    """Refinement of frames (B, N, 3) nm restrained to their CG (B, n, 3) nm."""

    def __init__(self, system: MolecularSystem, settings: RefinementSettings) -> None:
        super().__init__()
        self.settings = settings
        omm_system = system.openmm_system(settings.implicit_solvent)
        self.energy = MMEnergy(omm_system)
        weights = torch.as_tensor(system.mapping.weights, dtype=torch.float64)
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("pseudo_inverse", torch.linalg.pinv(weights), persistent=False)
        self.register_buffer("masses", torch.as_tensor(system.masses, dtype=torch.float64)[:, None],
                             persistent=False)
        self.constraints = BondConstraints(*hydrogen_bonds(system, omm_system)) if settings.constrain_hbonds else None

    def noise_shape(self) -> tuple[int, int, int]:
        """Shape of the standard normal draws one frame needs: initial velocities, then one per MD step."""
        return self.settings.steps + 1, self.energy.n_atoms, 3

    def project(self, x: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """``x`` moved minimally so that f_cg(x) = ``cg``, then with its X–H bonds at their lengths."""
        x = x + self.pseudo_inverse @ (cg - self.weights @ x)
        return self.constraints(x) if self.constraints is not None else x

    def forces(self, x: torch.Tensor) -> torch.Tensor:
        """Soft-core force-field forces (kJ/mol/nm) on frames (B, N, 3) nm."""
        y = x.detach().requires_grad_(True)
        return -torch.autograd.grad(self.energy(y, soft=True).sum(), y)[0]

    def minimize(self, x: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """FIRE relaxation of each frame on its own (own time step and mixing), element masses, moves capped."""
        s = self.settings
        dt = torch.full((len(x), 1, 1), s.timestep_ps, dtype=x.dtype, device=x.device)
        alpha = torch.full_like(dt, FIRE_ALPHA)
        downhill = torch.zeros_like(dt)
        v = torch.zeros_like(x)
        for _ in range(s.minimize_steps):
            f = self.forces(x)
            power = (f * v).sum((1, 2), keepdim=True)
            f_norm = f.flatten(1).norm(dim=1)[:, None, None].clamp_min(1e-12)
            v = (1 - alpha) * v + alpha * v.flatten(1).norm(dim=1)[:, None, None] * f / f_norm
            uphill = power <= 0
            downhill = torch.where(uphill, 0.0, downhill + 1)
            grow = ~uphill & (downhill > FIRE_DELAY)
            dt = torch.where(uphill, dt * FIRE_SHRINK,
                             torch.where(grow, (dt * FIRE_GROW).clamp_max(FIRE_MAX_STEP * s.timestep_ps), dt))
            alpha = torch.where(uphill, FIRE_ALPHA, torch.where(grow, alpha * FIRE_ALPHA_DECAY, alpha))
            v = torch.where(uphill, 0.0, v) + dt * f / self.masses
            move = dt * v
            move = move * (s.max_move_nm / move.norm(dim=-1, keepdim=True).clamp_min(s.max_move_nm))
            moved = self.project(x + move, cg)
            v = (moved - x) / dt
            x = moved
        return x

    def thermalize(self, x: torch.Tensor, cg: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Langevin dynamics from Maxwell–Boltzmann velocities, ``noise`` (B, steps + 1, N, 3): per step a
        kick, half a drift, the friction and noise, half a drift, then the projection, whose correction
        also goes into the velocities (OpenMM's LangevinMiddleIntegrator)."""
        s = self.settings
        dt, kt = s.timestep_ps, KB * s.temperature_K
        thermal_speed = (kt / self.masses) ** 0.5  # nm/ps, (N, 1)
        keep = float(np.exp(-s.friction_per_ps * dt))
        v = thermal_speed * noise[:, 0]
        for k in range(s.steps):
            v = v + dt * self.forces(x) / self.masses
            y = x + 0.5 * dt * v
            v = keep * v + (1 - keep**2) ** 0.5 * thermal_speed * noise[:, k + 1]
            y = y + 0.5 * dt * v
            x = self.project(y, cg)
            v = v + (x - y) / dt
        return x

    def forward(self, x: torch.Tensor, cg: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Refined frames (B, N, 3) in ``x``'s dtype; ``noise`` (B, steps + 1, N, 3) standard normal draws."""
        dtype = x.dtype
        x, cg, noise = x.double(), cg.double(), noise.to(x.device, torch.float64)
        with torch.inference_mode(False), torch.enable_grad():
            x = self.minimize(self.project(x.clone(), cg), cg)
            x = self.thermalize(x, cg, noise)
        return x.detach().to(dtype)
