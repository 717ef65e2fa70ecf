"""LightningModule training the cVAE with the loss of paper eq. 3:
VOX + AA + CG + EDM + λ·ENERGY + β·KL, each term weighted by config and logged separately."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from tcbm import losses
from tcbm.energy import MMEnergy, bonded_pairs
from tcbm.model import BackmapCVAE
from tcbm.rollout import advance, step
from tcbm.rotor_hops import rotor_axes
from tcbm.schedules import EnergyWeight, KLWeight, UnrollSchedule
from tcbm.stereo import stereocentres
from tcbm.symmetry import relabel_rotor_hydrogens, resolve_symmetry, rotor_hydrogen_groups, turn_rotor_hydrogens
from tcbm.systems import MolecularSystem
from tcbm.voxels import VoxelGrid

#: the weighted loss terms (summed by ``_total``; the KL and energy terms have schedules instead)
DEFAULT_WEIGHTS = {"vox": 1.0, "aa": 100.0, "cg": 100.0, "edm": 100.0, "chirality": 0.0, "prior": 1.0,
                   "decoder_vox": 0.0}


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term turns NaN/inf; the last good checkpoint stays on disk."""


class CVAEModule(pl.LightningModule):
    """Trains :class:`BackmapCVAE` for one :class:`MolecularSystem`.

    ``system`` is the dict of :meth:`MolecularSystem.to_dict`, ``grid`` the dict of :class:`VoxelGrid`
    (both stored in checkpoints), ``network`` the keyword arguments of :class:`BackmapCVAE`.
    ``prev_noise_nm`` adds Gaussian noise (nm) to the previous frames during training only; ``unroll``
    (keyword arguments of :class:`UnrollSchedule`) replaces them by the model's own rollout for part of the
    batches (pushforward training; the batches must carry ``history + unroll.steps`` previous frames; ignored
    when ``history`` is 0);
    ``free_bits`` (nats per latent dimension) exempts that much KL per dimension from the penalty;
    ``symmetric_rotors`` matches the hydrogens of every CH3/NH3 group of each target to the prediction before
    the loss is taken (:mod:`tcbm.symmetry`): ``cyclic`` (or true) by the closest cyclic relabelling,
    ``continuous`` by the closest rigid turn about the group's axis; ``none`` (or false) not at all;
    ``chirality_margin`` is the chirality term's margin (:func:`tcbm.losses.chirality_loss`);
    ``energy_max_pull`` caps the weighted energy term's gradient on each predicted atom (loss units per nm;
    :func:`tcbm.losses.capped_pull`; None: uncapped).
    """

    def __init__(self, system: dict, grid: dict, network: dict, weights: dict | None = None,
                 energy_weight: dict | None = None, kl_weight: dict | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.0, lr_schedule: str = "none", temperature: float = 300.0,
                 lag: int = 1, compile: bool = False, prev_noise_nm: float = 0.0, unroll: dict | None = None,
                 free_bits: float = 0.0, symmetric_rotors: bool | str = False, chirality_margin: float = 0.0,
                 energy_max_pull: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.system = MolecularSystem.from_dict(system)
        self.grid = VoxelGrid(**grid)
        self.model = BackmapCVAE.for_system(self.system, self.grid, **network)
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.energy_weight = EnergyWeight(**(energy_weight or {}))
        self.kl_weight = KLWeight(**(kl_weight or {}))
        self.unroll = UnrollSchedule(**(unroll or {}))  # no-op for the frame-based model (history 0)
        omm_system = self.system.openmm_system()
        self.energy = MMEnergy(omm_system)
        self.register_buffer("bonds", torch.as_tensor(bonded_pairs(omm_system)), persistent=False)
        self.register_buffer("stereocentres", torch.as_tensor(stereocentres(self.system.topology)), persistent=False)
        self.rotor_symmetry = resolve_symmetry(symmetric_rotors)
        groups = rotor_hydrogen_groups(self.system.topology) if self.rotor_symmetry != "none" \
            else np.zeros((0, 3), dtype=np.int64)
        self.register_buffer("rotor_groups", torch.as_tensor(groups), persistent=False)
        self.register_buffer("rotor_pivots", torch.as_tensor(rotor_axes(self.system.topology, groups)[:, :2]),
                             persistent=False)
        self.forward_model = torch.compile(self.model) if compile else self.model

    def _terms(self, batch: dict[str, torch.Tensor], sample: bool
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """Loss terms, predicted coordinates, and latent diagnostics (raw KL in nats, active units)."""
        aa, cg = batch["aa"], batch["cg"]
        out = self.forward_model(aa, cg, batch["aa_prev"], sample=sample)
        density, coords = out.density, out.coords
        energy_target = aa  # a turned rotor changes the energy: the energy term compares with the data's own
        if self.rotor_symmetry == "cyclic":
            aa = relabel_rotor_hydrogens(aa, coords.detach(), self.rotor_groups)
        elif self.rotor_symmetry == "continuous":
            aa = turn_rotor_hydrogens(aa, coords.detach(), self.rotor_groups, self.rotor_pivots)
        prior = {"prior_mean": out.prior_mean, "prior_log_var": out.prior_log_var}
        terms = {
            "vox": losses.vox_loss(density, self.grid.normalized(aa)),
            "aa": losses.aa_loss(coords, aa),
            "cg": losses.cg_loss(coords, cg, self.system.mapping),
            "edm": losses.edm_loss(coords, aa),
        }
        if self.model.conditional_prior:
            # the encoder is held to the prior with weight β; the prior fits the posterior at full weight
            # (a maximum-likelihood fit that trades off nothing), so rollouts draw z it has learnt
            terms["kl"] = losses.kl_loss(out.mean, out.log_var, self.hparams.free_bits,
                                         **{k: v.detach() for k, v in prior.items()})
            terms["prior"] = losses.kl_loss(out.mean.detach(), out.log_var.detach(), 0.0, **prior)
        else:
            terms["kl"] = losses.kl_loss(out.mean, out.log_var, self.hparams.free_bits)
        if out.decoder_logits is not None and self.weights["decoder_vox"] > 0:
            # the decoder's density must place the atoms by itself; the previous-frame prior only picks a mode
            terms["decoder_vox"] = losses.vox_loss(self.model.densities(out.decoder_logits), self.grid.normalized(aa))
        if len(self.stereocentres):
            terms["chirality"] = losses.chirality_loss(coords, aa, self.stereocentres, self.hparams.chirality_margin)
        lam = self.energy_weight(self.global_step)
        if lam > 0:
            cap = self.hparams.energy_max_pull  # on the gradient as it arrives in training: λ-weighted
            energy_coords = coords if cap is None else losses.capped_pull(coords, cap)
            terms["energy"] = losses.energy_loss(energy_coords, energy_target, self.energy, self.hparams.temperature)
        with torch.no_grad():
            diagnostics = {"kl_nats": losses.kl_loss(out.mean, out.log_var, **prior),
                           "active_units": losses.active_units(out.mean, **prior).float()}
        return terms, coords, diagnostics

    def _weight(self, name: str) -> float:
        """The weight of loss term ``name`` at the current step (the KL and energy terms follow schedules)."""
        if name == "kl":
            return self.kl_weight(self.global_step)
        if name == "energy":
            return self.energy_weight(self.global_step)
        return self.weights[name]

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self._weight(name) * value for name, value in terms.items())

    def coordinate_gradients(self, terms: dict[str, torch.Tensor], coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """How hard each weighted loss term pulls on the predicted atoms: the median over frames and atoms of
        the norm of its gradient with respect to ``coords`` (B, N, 3) (loss units per nm), for every term that
        depends on the coordinates.  Terms that differ by orders of magnitude here mean the largest one
        decides where the atoms go (e.g. a soft-core energy term outpulling the chirality and coordinate terms)."""
        pulls = {}
        for name, value in terms.items():
            weight = self._weight(name)
            if weight == 0 or not value.requires_grad:
                continue
            (grad,) = torch.autograd.grad(weight * value, coords, retain_graph=True, allow_unused=True)
            if grad is not None:
                pulls[name] = grad.norm(dim=-1).median()
        return pulls

    @torch.no_grad()
    def unrolled_previous(self, aa_prev: torch.Tensor, k: int) -> torch.Tensor:
        """Previous frames (B, history, N, 3) as the model's own rollout would give them: seeded with the
        true frames t-(k+1)·lag.., it steps through frames t-k·lag .. t-lag (CG from the true frames, z from
        the N(0, I) prior) with the shared autoregressive step; no gradient flows through the chain."""
        history = self.model.history
        previous = aa_prev[:, k:k + history]
        for j in range(k, 0, -1):
            cg = self.system.mapping(aa_prev[:, j - 1])
            z = torch.randn(len(aa_prev), self.model.latent_dim, device=aa_prev.device)
            previous = advance(previous, step(self.model, cg, previous, z))
        return previous

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        history = self.model.history
        aa_prev = batch["aa_prev"][:, :history]
        k = self.unroll(self.global_step) if history else 0
        rows = int(round(self.unroll.fraction * len(aa_prev))) if k else 0
        if rows:  # the first rows condition on the model's own k-step rollout, the rest on the truth
            aa_prev = torch.cat([self.unrolled_previous(batch["aa_prev"][:rows], k), aa_prev[rows:]])
        if self.hparams.prev_noise_nm > 0:  # imitate the model's own imperfect previous frames at inference
            aa_prev = aa_prev + self.hparams.prev_noise_nm * torch.randn_like(aa_prev)
        batch = {**batch, "aa_prev": aa_prev}
        terms, coords, diagnostics = self._terms(batch, sample=True)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise NonFiniteLossError(
                    f"loss term {name!r} is {value.item()} at step {self.global_step}; training stopped, "
                    "the last good checkpoint is kept (lower the learning rate or the energy weight)"
                )
        total = self._total(terms)
        batch_size = batch["aa"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in {**terms, **diagnostics}.items()},
                      batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        if self._trainer is not None and self.global_step % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/coord_grad/{k}": v for k, v in self.coordinate_gradients(terms, coords).items()},
                          batch_size=batch_size)
        self.log_dict({"train/lambda": self.energy_weight(self.global_step),
                       "train/beta": self.kl_weight(self.global_step), "train/unroll_frames": float(k)},
                      batch_size=batch_size)
        return total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms, coords, diagnostics = self._terms(batch, sample=False)
        aa = batch["aa"]
        i, j = self.bonds[:, 0], self.bonds[:, 1]
        bond_mae = ((coords[:, j] - coords[:, i]).norm(dim=-1) - (aa[:, j] - aa[:, i]).norm(dim=-1)).abs().mean()
        energy_diff = (self.energy(coords.double()) - self.energy(aa.double())).abs()
        batch_size = aa.shape[0]
        self.log_dict({f"val/{k}": v for k, v in {**terms, **diagnostics}.items()},
                      batch_size=batch_size)
        self.log("val/loss", self._total(terms), prog_bar=True, batch_size=batch_size)
        self.log("val/bond_mae_nm", bond_mae, prog_bar=True, batch_size=batch_size)
        self.log("val/energy_abs_diff_kJmol", energy_diff.median().float(), batch_size=batch_size)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return optimizer
        if self.hparams.lr_schedule != "cosine":
            raise ValueError(f"lr_schedule must be 'none' or 'cosine', got {self.hparams.lr_schedule!r}")
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
