"""The terms of the training loss (paper eq. 3), each a scalar averaged over the batch.

Units: coordinates in nm (AA, CG: nm²; EDM: nm²), energies in kT (dimensionless), densities
normalised per atom.
"""

from __future__ import annotations

import torch

from tcbm.energy import KB, MMEnergy
from tcbm.geometry import squared_distances
from tcbm.mapping import CGMapping
from tcbm.stereo import signed_volumes


def vox_loss(pred_density: torch.Tensor, target_density: torch.Tensor) -> torch.Tensor:
    """Squared density error summed over voxels, averaged over atoms and batch."""
    return (pred_density - target_density).pow(2).flatten(2).sum(-1).mean()


def aa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared coordinate error (nm²)."""
    return (pred - target).pow(2).sum(-1).mean()


def cg_loss(pred: torch.Tensor, cg: torch.Tensor, mapping: CGMapping) -> torch.Tensor:
    """Mean squared error (nm²) between f_cg of the reconstruction and the input CG."""
    return (mapping(pred) - cg).pow(2).sum(-1).mean()


def distance_matrix(x: torch.Tensor) -> torch.Tensor:
    return (squared_distances(x) + 1e-12).sqrt()


def edm_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (nm²) of the interatomic Euclidean distance matrices."""
    return (distance_matrix(pred) - distance_matrix(target)).pow(2).mean()


def energy_loss(pred: torch.Tensor, target: torch.Tensor, energy: MMEnergy, temperature: float) -> torch.Tensor:
    """Robust energy-matching loss: pseudo-Huber ``sqrt(1 + x²) − 1`` of ``x = (U(pred) − U(target))/kT``
    with the soft-core energy; quadratic (x²/2) for small errors and linear for the huge errors of
    early, overlapping reconstructions, so gradients stay bounded."""
    kt = KB * temperature
    diff = (energy(pred.double(), soft=True) - energy(target.double(), soft=True)) / kt
    return (torch.sqrt(1 + diff.pow(2)) - 1).mean().to(pred.dtype)


class _CappedPull(torch.autograd.Function):
    """Identity forward; backward scales each atom's gradient vector down to norm ``cap`` where it is larger."""

    @staticmethod
    def forward(ctx, coords: torch.Tensor, cap: float) -> torch.Tensor:
        ctx.cap = cap
        return coords.view_as(coords)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        norm = grad.norm(dim=-1, keepdim=True)
        return grad * (ctx.cap / norm.clamp_min(1e-30)).clamp(max=1.0), None


def capped_pull(coords: torch.Tensor, cap: float) -> torch.Tensor:
    """``coords`` (..., N, 3) unchanged, but the gradient a loss computed from them sends back through them is
    capped per atom at norm ``cap`` (loss units per nm; direction kept): a term with huge forces, such as the
    soft-core energy of overlapping atoms, then pulls no atom harder than ``cap``."""
    return _CappedPull.apply(coords, cap)


def chirality_loss(pred: torch.Tensor, target: torch.Tensor, centres: torch.Tensor, margin: float = 0.0
                   ) -> torch.Tensor:
    """Stereocentres (:mod:`tcbm.stereo`) that are mirrored or, with ``margin`` > 0, flattened:
    ``relu(margin − V_pred / V_target)`` averaged over centres and batch (dimensionless).  With margin 0 it is 0
    while every centre keeps the target's handedness and 1 for a centre fully mirrored; with margin m a centre
    is also penalised while its signed volume is below m times the target's (a flat centre, V ≈ 0, costs m)."""
    v_target = signed_volumes(target, centres)
    v_target = v_target.sign() * v_target.abs().clamp_min(1e-6)
    return torch.relu(margin - signed_volumes(pred, centres) / v_target).mean()


def kl_per_dimension(mean: torch.Tensor, log_var: torch.Tensor, prior_mean: torch.Tensor | None = None,
                     prior_log_var: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) ‖ p(z)) per latent dimension (latent,), averaged over the batch (nats), between diagonal
    Gaussians; the prior is N(0, I) unless its mean and log-variance (B, latent) are given."""
    if prior_mean is None:
        return (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp())).mean(0)
    ratio = (log_var - prior_log_var).exp()
    return (0.5 * (ratio + (mean - prior_mean).pow(2) * (-prior_log_var).exp() - 1 - (log_var - prior_log_var))
            ).mean(0)


def kl_loss(mean: torch.Tensor, log_var: torch.Tensor, free_bits: float = 0.0, prior_mean: torch.Tensor | None = None,
            prior_log_var: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) ‖ p(z)) summed over latent dimensions, averaged over the batch (nats); the prior as in
    :func:`kl_per_dimension`.  With ``free_bits`` > 0 (nats per dimension, Kingma et al. 2016) a dimension's
    KL below it is not penalised, so the encoder can put information into z without paying for it (against
    posterior collapse)."""
    per_dimension = kl_per_dimension(mean, log_var, prior_mean, prior_log_var)
    if free_bits > 0:
        per_dimension = per_dimension.clamp_min(free_bits)
    return per_dimension.sum()


def active_units(mean: torch.Tensor, threshold: float = 0.01, prior_mean: torch.Tensor | None = None,
                 prior_log_var: torch.Tensor | None = None) -> torch.Tensor:
    """Number of latent dimensions whose posterior mean varies across the batch by more than
    ``threshold`` (variance; Burda et al. 2016): how many dimensions carry information.  With a
    conditional prior the posterior mean is measured from the prior's, in units of its width, so that
    a posterior equal to its prior counts as inactive however the prior moves with the condition."""
    if prior_mean is not None:
        mean = (mean - prior_mean) * (-0.5 * prior_log_var).exp()
    return (mean.var(dim=0) > threshold).sum()
