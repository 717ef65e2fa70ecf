"""Scores that turn distribution comparisons into numbers."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance between two 1-D samples, in their own unit."""
    return float(wasserstein_distance(np.ravel(a), np.ravel(b)))


def shared_edges(samples: list[np.ndarray], bins: int = 100) -> np.ndarray:
    """Histogram edges spanning all samples (1-D)."""
    values = np.concatenate([np.ravel(s) for s in samples])
    lo, hi = np.percentile(values, [0.0, 100.0])
    return np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two histograms of the same shape."""
    p, q = np.ravel(p).astype(float), np.ravel(q).astype(float)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def js_of_samples(a: np.ndarray, b: np.ndarray, bins: int = 100) -> float:
    """JS divergence of two 1-D samples histogrammed on shared edges."""
    edges = shared_edges([a, b], bins)
    return js_divergence(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


def relative_error(value: float, reference: float) -> float:
    return float(abs(value - reference) / abs(reference)) if reference else float("nan")
