"""The conditional VAE backmapper: voxelisation, encoder, decoder and coordinate read-out in one module."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tcbm.constraints import AngleBounds, BondConstraints, hydrogen_angles, hydrogen_bonds
from tcbm.geometry import superpose
from tcbm.networks import Decoder, Encoder
from tcbm.voxels import VoxelGrid


class Reconstruction(NamedTuple):
    """A training pass of :class:`BackmapCVAE`: densities (B, N, d, d, d), coordinates (B, N, 3) nm, the
    means and log-variances (B, latent) of the posterior q(z | AA^t, condition) and of the prior, and, for a
    model with the previous-frame prior, the decoder's own logits without it (else None; densities from
    :meth:`BackmapCVAE.densities`)."""

    density: torch.Tensor
    coords: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    prior_mean: torch.Tensor
    prior_log_var: torch.Tensor
    decoder_logits: torch.Tensor | None = None


class BackmapCVAE(nn.Module):
    """cVAE over voxel densities.  ``history`` previous all-atom frames condition the decoder
    (``history=0`` is the frame-based ablation conditioned on CG^t only).  Coordinates in nm,
    centred on the CG^t centroid.

    With ``project_cg`` (``'rigid'`` or ``True``: each atom moves with the bead nearest to it in the bond
    graph; ``'smooth'``: the residuals are spread along the bonds, see :meth:`CGMapping.projection`) the
    decoded coordinates are moved so that their CG map equals the input CG exactly; it needs the system's
    map, so build such a model with :meth:`for_system`.

    With ``conditional_prior`` the latent's prior is learned, p(z | condition) (a second encoder, of the
    condition alone), instead of N(0, I): the KL term is taken against it and rollouts draw ``z`` from it
    (:meth:`generate`), so that ``z`` can carry the choices the condition leaves open (e.g. a methyl rotor
    hopping) without being drawn from an aggregate that ignores the condition.

    With ``align_previous`` each previous frame is first superposed rigidly (Kabsch on its own CG) onto
    CG^t, for the condition and the previous-frame prior alike, so the network sees where every atom was
    relative to the current CG instead of the molecule's tumbling between frames (ADP at 1 ps frames:
    CG-free atoms 0.26 nm from their next positions after the centroid shift alone, 0.10 nm aligned).
    It needs the CG map too (:meth:`for_system`) and at least 3 beads.

    With ``constrain_hbonds`` every hydrogen outside the CG map is finally moved along its bond to the force
    field's length (:mod:`tcbm.constraints`), as in reference data simulated with those bonds constrained; it
    needs the table of those bonds, ``hbonds`` ((m, 2) heavy atom and hydrogen, (m,) nm; :meth:`for_system`).

    With ``hydrogen_angle_max_kJmol`` every hydrogen outside the CG map is then turned about its heavy atom
    until each force-field angle X–C–H it closes holds at most that much harmonic energy (kJ/mol;
    :class:`~tcbm.constraints.AngleBounds`): a read-out that pulls a hydrogen toward its rotor axis (the mean of
    a methyl's turn) gives a strained angle no thermal frame has; angles within the bound are left alone.  It
    acts in eval mode only (rollout validation, :meth:`generate`, ``tcbm backmap``): training is unchanged.  It
    needs ``hydrogen_angle_bounds`` ((m, 3) X, C, H rows and (m, 2) rad bounds; :meth:`for_system`)."""

    def __init__(self, n_atoms: int, n_beads: int, grid: VoxelGrid, latent_dim: int = 32, width: int = 32,
                 depth: int = 1, history: int = 1, channels_last: bool = False, previous_prior: bool = True,
                 latent_input: bool = False, output_skip: bool = False, project_cg: bool | str = False,
                 conditional_prior: bool = False, prior_min_spacings: float = 0.0, align_previous: bool = False,
                 constrain_hbonds: bool = False, hydrogen_angle_max_kJmol: float | None = None,
                 cg_map: tuple[np.ndarray, np.ndarray | None] | None = None,
                 hbonds: tuple[np.ndarray, np.ndarray] | None = None,
                 hydrogen_angle_bounds: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__()
        if grid.d % 2:
            raise ValueError(f"the decoder halves the grid once: grid.d must be even, got {grid.d}")
        if (project_cg or align_previous) and cg_map is None:
            raise ValueError("project_cg and align_previous need the system's CG map: build the model with "
                             "BackmapCVAE.for_system")
        if not isinstance(constrain_hbonds, bool):
            raise ValueError(f"constrain_hbonds must be a bool (resolve 'auto' with "
                             f"tcbm.constraints.resolve_hbond_constraints), got {constrain_hbonds!r}")
        if constrain_hbonds and hbonds is None:
            raise ValueError("constrain_hbonds needs the system's bonds to hydrogen: build the model with "
                             "BackmapCVAE.for_system")
        if hydrogen_angle_max_kJmol is not None and hydrogen_angle_bounds is None:
            raise ValueError("hydrogen_angle_max_kJmol needs the system's angles to hydrogen: build the model with "
                             "BackmapCVAE.for_system")
        if align_previous and n_beads < 3:
            raise ValueError(f"align_previous superposes previous frames on their CG: needs >= 3 beads, got {n_beads}")
        self.project_cg, self.align_previous = bool(project_cg), align_previous and history > 0
        if cg_map is not None:  # derived from the system, not saved with the weights
            self.register_buffer("cg_weights", torch.as_tensor(cg_map[0], dtype=torch.float32), persistent=False)
        if project_cg:
            self.register_buffer("cg_projection", torch.as_tensor(cg_map[1], dtype=torch.float32), persistent=False)
        self.hbond_constraints = BondConstraints(*hbonds) if constrain_hbonds else None
        self.angle_bounds = AngleBounds(*hydrogen_angle_bounds) if hydrogen_angle_max_kJmol is not None else None
        self.n_atoms, self.n_beads, self.grid, self.history = n_atoms, n_beads, grid, history
        self.latent_dim, self.channels_last, self.conditional_prior = latent_dim, channels_last, conditional_prior
        cond_channels = n_beads + history * n_atoms
        self.encoder = Encoder(n_atoms + cond_channels, latent_dim, width, depth)
        self.decoder = Decoder(cond_channels, n_atoms, latent_dim, width, depth, latent_input, output_skip)
        # p(z | condition): an encoder of the condition alone (Sohn et al. 2015)
        self.prior = Encoder(cond_channels, latent_dim, width, depth) if conditional_prior else None
        # log-width (nm) of the Gaussian prior centred on each atom's previous position
        self.previous_prior = previous_prior and history > 0
        self.log_prior_width = nn.Parameter(torch.tensor(float(np.log(0.1)))) if self.previous_prior else None
        self.prior_min_spacings = prior_min_spacings  # 0 here: artefacts saved before the floor existed keep their prior
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    @classmethod
    def for_system(cls, system, grid: VoxelGrid, **config) -> BackmapCVAE:
        """The model for a :class:`~tcbm.systems.MolecularSystem` with the network ``config``."""
        cg_map = None
        if config.get("project_cg"):
            bonds = np.array([[a.index, b.index] for a, b in system.topology.bonds], dtype=np.int64)
            kind = "rigid" if config["project_cg"] is True else config["project_cg"]
            cg_map = (system.mapping.weights, system.mapping.projection(bonds, kind))
        elif config.get("align_previous"):
            cg_map = (system.mapping.weights, None)
        hbonds, angle_bounds = None, None
        bounded_angles = config.get("hydrogen_angle_max_kJmol") is not None
        # one OpenMM System for both tables (kept alive while they are read)
        omm_system = system.openmm_system() if config.get("constrain_hbonds") or bounded_angles else None
        if config.get("constrain_hbonds"):  # hydrogens in the CG map stay where the CG projection put them
            pairs, lengths = hydrogen_bonds(system, omm_system)
            free = ~system.mapping.weights[:, pairs[:, 1]].any(0)
            hbonds = (pairs[free], lengths[free])
        if bounded_angles:
            rows, bounds = hydrogen_angles(system, config["hydrogen_angle_max_kJmol"], omm_system)
            free = ~system.mapping.weights[:, rows[:, 2]].any(0)
            angle_bounds = (rows[free], bounds[free])
        return cls(system.n_atoms, system.n_beads, grid, cg_map=cg_map, hbonds=hbonds,
                   hydrogen_angle_bounds=angle_bounds, **config)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def previous_in_cg_frame(self, cg: torch.Tensor, aa_prev: torch.Tensor) -> torch.Tensor:
        """The previous frames (B, k, N, 3) as the network uses them: with ``align_previous`` each superposed
        (Kabsch on its CG beads) onto CG^t (B, n, 3), in float32; otherwise unchanged."""
        if not self.align_previous:
            return aa_prev
        with torch.autocast(aa_prev.device.type, enabled=False):  # coordinates: float32 under any autocast
            aa_prev = aa_prev[:, : self.history].float()
            return superpose(self.cg_weights @ aa_prev, cg[:, None].float(), carry=aa_prev)

    def condition(self, cg: torch.Tensor, aa_prev: torch.Tensor) -> torch.Tensor:
        """Voxelised condition (B, n + k·N, d, d, d) from CG^t (B, n, 3) and AA^{t-1..t-k} (B, k, N, 3)."""
        parts = [self.grid.voxelize(cg)]
        if self.history:
            aa_prev = self.previous_in_cg_frame(cg, aa_prev)
            parts.append(self.grid.voxelize(aa_prev[:, : self.history].flatten(1, 2)))
        return self._layout(torch.cat(parts, dim=1))

    def encode(self, aa: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of ``z`` given the target AA^t (B, N, 3) and the condition."""
        return self.encoder(self._layout(torch.cat([self.grid.voxelize(aa), cond], dim=1)))

    def prior_width(self) -> torch.Tensor:
        """Width (nm) of the previous-frame prior: the learned width, widened in quadrature by
        ``prior_min_spacings`` grid spacings.  A Gaussian much narrower than the spacing, sampled on the grid,
        has a softmax mean pulled towards the nearest grid point (up to 0.07 nm for 0.1 nm on a 0.33 nm grid;
        within 0.004 spacings from 0.6 spacings up), so a rollout that copies its previous frame would walk
        atoms onto grid points."""
        return torch.sqrt(torch.exp(2 * self.log_prior_width) + (self.prior_min_spacings * self.grid.spacing) ** 2)

    def prior_logits(self, aa_prev: torch.Tensor) -> torch.Tensor:
        """Log of a Gaussian (:meth:`prior_width`) around each atom's previous position, (B, N, d, d, d): added
        to the decoder's logits so that "stay where you were" is the default and the network learns the motion."""
        width = self.prior_width()
        axis = self.grid.axis(aa_prev)
        p = -0.5 * ((aa_prev[:, 0].unsqueeze(-1) - axis) / width) ** 2  # (B, N, 3, d)
        return p[..., 0, :, None, None] + p[..., 1, None, :, None] + p[..., 2, None, None, :]

    @staticmethod
    def densities(logits: torch.Tensor) -> torch.Tensor:
        """Per-atom densities (B, N, d, d, d), each summing to 1 over the grid, from logits of that shape."""
        return torch.softmax(logits.flatten(2), dim=-1).view_as(logits)

    def decode(self, cond: torch.Tensor, z: torch.Tensor, cg: torch.Tensor, aa_prev: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom densities (B, N, d, d, d), normalised to sum 1 per atom, and the coordinates (B, N, 3): the
        densities' mean positions, projected onto the CG ``cg`` (B, n, 3) when the model has ``project_cg``.
        ``aa_prev`` (B, k, N, 3) is needed when the model uses the previous-frame prior."""
        return self._decode(cond, z, cg, aa_prev)[:2]

    def _decode(self, cond: torch.Tensor, z: torch.Tensor, cg: torch.Tensor, aa_prev: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`decode`, and the decoder's logits before the previous-frame prior is added."""
        decoder_logits = self.decoder(cond, z.to(cond.dtype)).float()
        logits = decoder_logits
        if self.previous_prior:
            logits = logits + self.prior_logits(self.previous_in_cg_frame(cg.float(), aa_prev.float()))
        density = self.densities(logits)
        coords = self.grid.coordinates(density)
        if self.project_cg:
            coords = coords + self.cg_projection @ (cg.float() - self.cg_weights @ coords)
        if self.hbond_constraints is not None:
            coords = self.hbond_constraints(coords)
        if self.angle_bounds is not None and not self.training:
            # an output step only: the training loss sees the read-out as it is, so it keeps pulling strained
            # hydrogens back (trained through the bound, the networks left them at it: benchmarks/ab_angle_bounds)
            coords = self.angle_bounds(coords)
        return density, coords, decoder_logits

    def generate(self, cond: torch.Tensor, noise: torch.Tensor, cg: torch.Tensor, aa_prev: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` at inference: ``noise`` (B, latent) is ``z`` itself for a model with the N(0, I)
        prior, and the standard-normal draw mapped through p(z | condition) for a ``conditional_prior`` one."""
        if self.conditional_prior:
            mean, log_var = (x.float() for x in self.prior(cond))
            noise = mean + noise.float() * (0.5 * log_var).exp()
        return self.decode(cond, noise, cg, aa_prev)

    def forward(self, aa: torch.Tensor, cg: torch.Tensor, aa_prev: torch.Tensor, sample: bool = True
                ) -> Reconstruction:
        """Training pass: densities, coordinates, the posterior's and the prior's means and log-variances."""
        cond = self.condition(cg, aa_prev)
        mean, log_var = self.encode(aa, cond)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if sample else mean
        if self.conditional_prior:
            prior_mean, prior_log_var = self.prior(cond)
        else:
            prior_mean, prior_log_var = torch.zeros_like(mean), torch.zeros_like(log_var)
        density, coords, decoder_logits = self._decode(cond, z, cg, aa_prev)
        return Reconstruction(density, coords, mean, log_var, prior_mean, prior_log_var,
                              decoder_logits if self.previous_prior else None)
