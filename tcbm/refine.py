"""Optional physics refinement of backmapped frames: a few steps of Brownian (overdamped Langevin)
dynamics at temperature T with the torch force field, restrained to the CG.

Each step moves the atoms by ``(D·dt / kT)·F(x) + sqrt(2·D·dt)·ξ`` (nm; F in kJ/mol/nm from the vacuum
force field, soft-core so overlapping atoms stay finite, each atom's move capped at ``max_move_nm``), then
projects back onto the CG input (the minimal correction ``W⁺(CG − W x)`` of the linear map W, which for a
slice map puts the bead atoms exactly on their beads) and, as in the reference simulations, puts every
X–H bond at its force-field length.  Stiff bonds and angles thermalise within tens of steps, while slow
torsions (rotamers) stay as the model made them.  It is off by default; outputs made with it must be
labelled as refined, because the energies are then partly the force field's work, not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcbm.constraints import BondConstraints, hydrogen_bonds
from tcbm.energy import KB, MMEnergy
from tcbm.systems import MolecularSystem


@dataclass(frozen=True)
class RefinementSettings:
    """``steps`` of Brownian dynamics per frame (0 = off) at ``temperature_K``, step ``diffusion_nm2``
    (D·dt, nm²; stable below ~2kT/k_max ≈ 1e-5 nm² for C=O bonds), moves capped at ``max_move_nm``."""

    steps: int = 0
    temperature_K: float = 300.0
    diffusion_nm2: float = 5e-6
    max_move_nm: float = 0.02
    constrain_hbonds: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.temperature_K <= 0 or self.diffusion_nm2 <= 0 or self.max_move_nm <= 0:
            raise ValueError(f"invalid refinement settings {self}: need steps >= 0 and positive temperature, "
                             "diffusion and max_move")


class Refiner(torch.nn.Module):
    """Brownian-dynamics refinement of frames (B, N, 3) nm restrained to their CG (B, n, 3) nm."""

    def __init__(self, system: MolecularSystem, settings: RefinementSettings) -> None:
        super().__init__()
        self.settings = settings
        omm_system = system.openmm_system()
        self.energy = MMEnergy(omm_system)
        weights = torch.as_tensor(system.mapping.weights, dtype=torch.float64)
        self.register_buffer("weights", weights, persistent=False)
        self.register_buffer("pseudo_inverse", torch.linalg.pinv(weights), persistent=False)
        self.constraints = BondConstraints(*hydrogen_bonds(system, omm_system)) if settings.constrain_hbonds else None

    def project(self, x: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """``x`` moved minimally so that f_cg(x) = ``cg``, then with its X–H bonds at their lengths."""
        x = x + self.pseudo_inverse @ (cg - self.weights @ x)
        return self.constraints(x) if self.constraints is not None else x

    def forward(self, x: torch.Tensor, cg: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Refined frames (B, N, 3) float32; ``noise`` (B, steps, N, 3) are standard normal draws."""
        s = self.settings
        kt = KB * s.temperature_K
        dtype = x.dtype
        x, cg, noise = x.double(), cg.double(), noise.to(x.device, torch.float64)
        with torch.inference_mode(False), torch.enable_grad():
            x = self.project(x.clone(), cg)
            for k in range(s.steps):
                y = x.detach().requires_grad_(True)
                force = -torch.autograd.grad(self.energy(y, soft=True).sum(), y)[0]
                move = s.diffusion_nm2 / kt * force + (2 * s.diffusion_nm2) ** 0.5 * noise[:, k]
                norm = move.norm(dim=-1, keepdim=True)
                move = move * (s.max_move_nm / norm.clamp_min(s.max_move_nm))
                x = self.project(x.detach() + move, cg)
        return x.detach().to(dtype)
