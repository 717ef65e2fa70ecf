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


def reference_edges(reference: np.ndarray, bins: int = 100) -> np.ndarray:
    """Bin edges at the reference's quantiles (about equal reference mass per bin) plus an underflow and an
    overflow bin (−∞ and +∞ edges): every value of another sample lands in some bin, so its outliers count
    against it instead of stretching the grid until everything else shares one bin."""
    inner = np.unique(np.quantile(np.ravel(reference), np.linspace(0.0, 1.0, bins + 1)))
    if len(inner) < 2:  # a constant reference
        inner = np.array([inner[0] - 0.5, inner[0] + 0.5])
    return np.concatenate([[-np.inf], inner, [np.inf]])


def js_of_samples(sample: np.ndarray, reference: np.ndarray, bins: int = 100) -> float:
    """JS divergence of a 1-D ``sample`` from a 1-D ``reference``, histogrammed on the reference's
    :func:`reference_edges`."""
    edges = reference_edges(reference, bins)
    return js_divergence(np.histogram(np.ravel(sample), edges)[0], np.histogram(np.ravel(reference), edges)[0])


def relative_error(value: float, reference: float) -> float:
    return float(abs(value - reference) / abs(reference)) if reference else float("nan")
