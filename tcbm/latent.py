"""Latent samplers for inference: a Gaussian mixture fitted to the training posterior, or N(0, I) (also the
standard-normal draw that a model with a conditional prior maps through p(z | condition))."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tcbm.model import BackmapCVAE


class LatentSampler:
    """Draws latent vectors ``z`` from a Gaussian mixture (``weights``, ``means``, Cholesky factors of
    ``covariances``); the N(0, I) prior is the one-component mixture."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.means = torch.as_tensor(np.asarray(means), dtype=torch.float64)
        self.covariances = torch.as_tensor(np.asarray(covariances), dtype=torch.float64)
        self.cholesky = torch.linalg.cholesky(self.covariances)

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def prior(cls, latent_dim: int) -> LatentSampler:
        return cls(np.ones(1), np.zeros((1, latent_dim)), np.eye(latent_dim)[None])

    @classmethod
    def fit(cls, posterior_means: np.ndarray, n_components: int = 10, seed: int = 0) -> LatentSampler:
        """Fit a full-covariance ``GaussianMixture`` to encoded training posterior means (samples, latent)."""
        n_components = min(n_components, len(posterior_means))
        gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=1e-5, random_state=seed)
        gmm.fit(np.asarray(posterior_means, dtype=np.float64))
        return cls(gmm.weights_, gmm.means_, gmm.covariances_)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` latent vectors (n, latent_dim), float64 on the CPU, reproducible with ``generator``; the
        spread about each component's mean is scaled by ``temperature`` (1: the fitted distribution, 0: the
        component means)."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.latent_dim, 1, dtype=torch.float64, generator=generator)
        return self.means[component] + temperature * (self.cholesky[component] @ eps)[..., 0]

    def to_dict(self) -> dict:
        return {"weights": self.weights.numpy(), "means": self.means.numpy(), "covariances": self.covariances.numpy()}

    @classmethod
    def from_dict(cls, state: dict) -> LatentSampler:
        return cls(state["weights"], state["means"], state["covariances"])


@torch.inference_mode()
def encode_posterior_means(network: BackmapCVAE, dataset: Dataset, max_samples: int, batch_size: int,
                           seed: int = 0, progress: bool = True) -> np.ndarray:
    """Posterior means (samples, latent) of up to ``max_samples`` triples of ``dataset`` (a seeded random
    subset), encoded on the network's device."""
    device = next(network.parameters()).device
    items = np.random.default_rng(seed).permutation(len(dataset))[:max_samples]
    was_training = network.training
    network.eval()
    means = []
    for start in tqdm(range(0, len(items), batch_size), desc="encode posterior", unit="batch", disable=not progress):
        batch = {k: v.to(device) for k, v in dataset.__getitems__(items[start:start + batch_size]).items()}
        cond = network.condition(batch["cg"], batch["aa_prev"])
        means.append(network.encode(batch["aa"], cond)[0].double().cpu().numpy())
    network.train(was_training)
    return np.concatenate(means)


def fit_sampler(network: BackmapCVAE, dataset: Dataset, max_samples: int, batch_size: int, components: int,
                seed: int = 0, progress: bool = True) -> LatentSampler:
    """The sampler a rollout of ``network`` draws from: a GMM fitted to the posterior means of up to
    ``max_samples`` triples of ``dataset``, or N(0, I) for a network with a conditional prior (which maps
    the draw through p(z | condition) itself)."""
    if network.conditional_prior:
        return LatentSampler.prior(network.latent_dim)
    means = encode_posterior_means(network, dataset, max_samples, batch_size, seed, progress)
    return LatentSampler.fit(means, components, seed)
