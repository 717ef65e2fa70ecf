"""Rollout validation: held-out windows backmapped autoregressively during training, through the same
code as ``tcbm backmap`` (seed frame from the library, GMM latents, the model's own previous frames),
scored against their reference frames.  This is what model selection uses, because teacher-forced
validation losses do not see the drift of a rollout.

Scores (logged as ``val/rollout/<name>``): ``energy_w1_kJmol`` (Wasserstein-1 between rollout and
reference energy distributions), ``energy_median_abs_diff_kJmol`` (frame by frame), ``energy_drift_kJmol``
(median |ΔU| in the last quarter of the windows minus the first quarter), ``bond_mae_nm`` (per-bond mean
lengths against the reference's, as in ``tcbm evaluate``) and ``cg_rmsd_nm`` (CG consistency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch

from tcbm.analysis.scores import wasserstein1
from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.backmap import Backmapper, RolloutSettings
from tcbm.energy import MMEnergy
from tcbm.latent import fit_sampler
from tcbm.mapping import CGMapping
from tcbm.rotor_hops import RotorHops


def rollout_windows(targets: np.ndarray, frames: int, count: int, starts: np.ndarray | None = None
                    ) -> list[np.ndarray]:
    """Up to ``count`` windows of ``frames`` consecutive global frame indices (fewer frames if no contiguous
    run of ``targets`` is that long), evenly spread over the runs of ``targets`` (e.g. the validation blocks);
    a run also ends where a trajectory ``starts`` (global index of each trajectory's first frame)."""
    if len(targets) == 0:
        return []
    breaks = np.diff(targets) != 1
    if starts is not None:
        breaks |= np.isin(targets[1:], starts)
    runs = np.split(targets, np.flatnonzero(breaks) + 1)
    frames = min(frames, max(len(run) for run in runs))
    starts = [run[0] + k for run in runs if len(run) >= frames for k in range(0, len(run) - frames + 1, frames)]
    if not starts:
        return []
    chosen = np.asarray(starts)[np.unique(np.linspace(0, len(starts) - 1, count).round().astype(int))]
    return [np.arange(s, s + frames) for s in chosen]


def rollout_scores(rollout: np.ndarray, reference: np.ndarray, energy: MMEnergy, bonds: np.ndarray,
                   mapping: CGMapping) -> dict[str, float]:
    """Scores of rollouts (W, T, N, 3) nm against the reference frames they backmap (W, T, N, 3)."""
    device = next(energy.buffers()).device
    with torch.inference_mode():
        u = [energy(torch.as_tensor(x.reshape(-1, *x.shape[2:]), dtype=torch.float64, device=device))
             .cpu().numpy().reshape(x.shape[:2]) for x in (rollout, reference)]
    diff = np.abs(u[0] - u[1])
    quarter = max(1, rollout.shape[1] // 4)
    i, j = bonds[:, 0], bonds[:, 1]
    lengths = [np.linalg.norm(x[..., j, :] - x[..., i, :], axis=-1).reshape(-1, len(bonds)).mean(0)
               for x in (rollout, reference)]
    cg_error = mapping(rollout) - mapping(reference)
    return {
        "energy_w1_kJmol": wasserstein1(u[0], u[1]),
        "energy_median_abs_diff_kJmol": float(np.median(diff)),
        "energy_drift_kJmol": float(np.median(diff[:, -quarter:]) - np.median(diff[:, :quarter])),
        "bond_mae_nm": float(np.abs(lengths[0] - lengths[1]).mean()),
        "cg_rmsd_nm": float(np.sqrt((cg_error ** 2).sum(-1).mean())),
    }


@dataclass
class RolloutValidationSettings:
    """``windows`` held-out windows of ``frames`` frames each; the GMM for their latents is fitted to
    ``gmm_samples`` posterior means of training triples (``gmm_components`` components)."""

    windows: int = 8
    frames: int = 50
    gmm_samples: int = 512
    gmm_components: int = 10
    seed: int = 0


class RolloutValidation(pl.Callback):
    """At the end of every validation, roll the held-out windows out as ``tcbm backmap`` would and log
    :func:`rollout_scores` under ``val/rollout/``."""

    def __init__(self, reference: np.ndarray, library: SeedLibrary, posterior_set, settings: RolloutValidationSettings,
                 network_config: dict, lag: int, rotor_hops: RotorHops | None = None) -> None:
        """``rotor_hops``: the rotor chains the artefact will carry (its rollouts turn the rotors with them)."""
        self.reference, self.library, self.posterior_set = reference, library, posterior_set
        self.settings, self.network_config, self.lag, self.rotor_hops = settings, network_config, lag, rotor_hops

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or len(self.reference) == 0:
            return
        for name, value in self.evaluate(pl_module).items():
            # every rank rolls out the same windows with the same weights: the mean over ranks is that value
            pl_module.log(f"val/rollout/{name}", value, batch_size=len(self.reference), sync_dist=True)

    def rollout(self, pl_module: pl.LightningModule) -> tuple[BackmapModel, np.ndarray]:
        """The in-memory artefact of the current weights of ``pl_module`` (a :class:`~tcbm.lightning.CVAEModule`)
        with its latent sampler fitted now, and its rollouts (W, T, N, 3) of the windows, as ``tcbm backmap``
        makes them."""
        s = self.settings
        network, system = pl_module.model, pl_module.system
        sampler = fit_sampler(network, self.posterior_set, s.gmm_samples, 256, s.gmm_components, s.seed, progress=False)
        model = BackmapModel(network, self.network_config, system, sampler, self.library, self.lag,
                             rotor_hops=self.rotor_hops)
        settings = RolloutSettings(seed=s.seed, batch_size=len(self.reference), chunk_frames=s.frames, progress=False)
        cg = [system.mapping(window) for window in self.reference]
        return model, np.stack(Backmapper(model, settings, device=str(pl_module.device)).backmap(cg))

    def evaluate(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """:func:`rollout_scores` of the current weights of ``pl_module``."""
        _, rollout = self.rollout(pl_module)
        return rollout_scores(rollout, self.reference, pl_module.energy, pl_module.bonds.cpu().numpy(),
                              pl_module.system.mapping)
