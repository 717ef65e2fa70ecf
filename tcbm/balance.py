"""Sampling weights that balance the CG conformations of training frames.

A conditional model learns p(AA | CG); how often each CG conformation is drawn in training only decides how
much of its capacity goes where.  Rare states of a slow process (alanine dipeptide's alphaL basin: ~6 % of the
frames) are then learned poorly.  :func:`conformation_weights` bins the frames on the slow coordinates of
their CG (TICA of the CG bead distances, deeptime) and weights each by 1 / (frames in its bin)^power.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from deeptime.decomposition import TICA


def bead_distances(cg: np.ndarray) -> np.ndarray:
    """All pairwise distances (nm) between the beads of CG frames (T, n, 3): shape (T, n·(n−1)/2)."""
    i, j = np.triu_indices(cg.shape[1], k=1)
    return np.linalg.norm(cg[:, i] - cg[:, j], axis=-1)


def conformation_weights(cg: Sequence[np.ndarray], power: float, dims: int = 2, bins: int = 20,
                         tica_lag: int = 10) -> list[np.ndarray]:
    """Per-frame sampling weights (mean 1 over all frames), one array per CG trajectory (T, n, 3) nm.

    Frames are projected on the first ``dims`` TICA components of their bead distances (lag ``tica_lag``
    frames, pairs within each trajectory), binned on a regular grid of ``bins`` per component over the data's
    range, and weighted by 1 / (frames in their bin)^``power``: 0 gives uniform weights, 1 draws every
    occupied bin equally often."""
    if power < 0:
        raise ValueError(f"balance power must be >= 0, got {power}")
    if cg[0].shape[1] < 3:
        raise ValueError(f"balancing needs at least 3 CG beads (bead distances), got {cg[0].shape[1]}")
    lengths = [len(x) for x in cg]
    if max(lengths) <= tica_lag:
        raise ValueError(f"balancing: TICA at lag {tica_lag} frames needs a longer trajectory (longest: "
                         f"{max(lengths)} frames); lower data.balance.tica_lag")
    features = [bead_distances(x).astype(np.float64) for x in cg]
    dims = min(dims, features[0].shape[1])
    projection = TICA(lagtime=tica_lag, dim=dims).fit(features).fetch_model()
    coords = np.concatenate([projection.transform(f) for f in features])
    lower, upper = coords.min(0), coords.max(0)
    cells = np.clip(((coords - lower) / np.maximum(upper - lower, 1e-12) * bins).astype(np.int64), 0, bins - 1)
    flat = np.ravel_multi_index(cells.T, (bins,) * coords.shape[1])
    counts = np.bincount(flat)
    weights = counts[flat].astype(np.float64) ** -power
    weights /= weights.mean()
    return np.split(weights, np.cumsum(lengths)[:-1])
