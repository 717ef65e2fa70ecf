"""Markov state models with deeptime: shared k-means states, ML and Bayesian MSMs, implied
timescales (ps) with 95 % intervals, and eigenvector cosine similarity between data sets."""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

import numpy as np
from deeptime.clustering import KMeans
from deeptime.markov import TransitionCountEstimator
from deeptime.markov.msm import BayesianMSM, MarkovStateModel, MaximumLikelihoodMSM
from deeptime.markov.tools.estimation.dense.tmat_sampling.tmatrix_sampler import TransitionMatrixSampler


def fit_states(reference_cvs: np.ndarray, n_clusters: int, seed: int = 0):
    """k-means (deeptime) centres fitted on the reference CVs; use ``.transform`` for every data set."""
    n_clusters = min(n_clusters, len(reference_cvs))
    return KMeans(n_clusters, init_strategy="kmeans++", max_iter=100, fixed_seed=seed).fit(
        np.ascontiguousarray(reference_cvs, dtype=np.float64)).fetch_model()


#: discrete trajectories of one data set: one array of state indices per trajectory (or a single array)
DTrajs = np.ndarray | list[np.ndarray]


def as_list(dtrajs: DTrajs) -> list[np.ndarray]:
    return [dtrajs] if isinstance(dtrajs, np.ndarray) else list(dtrajs)


def longest(dtrajs: DTrajs) -> int:
    return max(len(d) for d in as_list(dtrajs))


def estimate_msm(dtrajs: DTrajs, lag: int) -> MarkovStateModel:
    """Reversible maximum-likelihood MSM on the largest connected set at ``lag`` frames, from one or several
    discrete trajectories (transitions are counted within each, never across their joins)."""
    if longest(dtrajs) <= lag:
        raise ValueError(f"a trajectory of {longest(dtrajs)} frames is too short for an MSM at lag {lag}")
    counts = TransitionCountEstimator(lag, "sliding").fit(as_list(dtrajs)).fetch_model().submodel_largest()
    return MaximumLikelihoodMSM(reversible=True).fit(counts).fetch_model()


def msm_frame_weights(dtrajs: DTrajs, lag: int) -> np.ndarray:
    """Per-frame weights (all trajectories' frames in order) that reweight the data to its MSM's stationary
    distribution (0 off the largest connected set), for MSM-reweighted free-energy surfaces."""
    return np.concatenate(estimate_msm(dtrajs, lag).compute_trajectory_weights(as_list(dtrajs)))


def macrostates(dtrajs: DTrajs, lag: int, n_sets: int, n_states: int) -> np.ndarray:
    """Metastable set of each of ``n_states`` discrete states: PCCA+ (deeptime) of the MSM at ``lag`` frames,
    each state assigned to its largest membership, sets numbered by decreasing stationary probability;
    -1 for states outside the MSM's connected set.  Raises ValueError where PCCA+ cannot split the MSM (too
    few states, or a spectrum PCCA+ cannot use, e.g. a periodic chain's eigenvalue −1)."""
    msm = estimate_msm(dtrajs, lag)
    if n_sets > msm.n_states:
        raise ValueError(f"{n_sets} macrostates asked for, the MSM has {msm.n_states} connected states")
    try:
        pcca = msm.pcca(n_sets)
    except AssertionError as err:  # deeptime checks the eigenvectors with assert statements
        raise ValueError(f"PCCA+ cannot split this {msm.n_states}-state MSM (lag {lag}) into {n_sets} sets: {err}") from err
    order = np.argsort(-pcca.coarse_grained_stationary_probability)
    labels = np.full(n_states, -1)
    labels[msm.count_model.state_symbols] = np.argsort(order)[pcca.assignments]
    return labels


class SeededBayesianMSM(BayesianMSM):
    """deeptime's :class:`BayesianMSM` whose transition-matrix sampler is seeded (deeptime's own draws a
    fresh random seed every time, so intervals change from run to run)."""

    def __init__(self, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    def sample(self, prior: MarkovStateModel, n_samples: int, n_steps: int | None = None, callback=None):
        n_steps = n_steps or int(sqrt(prior.count_model.n_states_full))
        sampler = TransitionMatrixSampler(prior.count_model.count_matrix, reversible=self.reversible,
                                          P0=prior.transition_matrix, n_steps=n_steps, seed=self.seed)
        matrices, stationary = sampler.sample(nsamples=n_samples, return_statdist=True, callback=callback)
        return [MarkovStateModel(P, stationary_distribution=pi, reversible=self.reversible,
                                 count_model=prior.count_model,
                                 transition_matrix_tolerance=prior.transition_matrix_tolerance)
                for P, pi in zip(matrices, stationary)]


@dataclass
class TimescaleEstimate:
    """Implied timescales (ps) from one Bayesian MSM: posterior ``mean`` with its 95 % interval [lower,
    upper]; ``ml``: the maximum-likelihood MSM's values (sliding-window counts) for reference."""

    ml: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def timescales(dtraj: DTrajs, lag: int, k: int, dt_ps: float, n_samples: int = 100,
               seed: int = 0) -> TimescaleEstimate:
    """The ``k`` slowest implied timescales at ``lag`` frames, in ps: Bayesian posterior mean and 95 %
    interval of the same seeded estimator (effective counts), and the ML values."""
    msm = estimate_msm(dtraj, lag)
    k = min(k, msm.n_states - 1)
    counts = TransitionCountEstimator(lag, "effective").fit(as_list(dtraj)).fetch_model().submodel_largest()
    stats = SeededBayesianMSM(seed, n_samples=n_samples, reversible=True).fit(counts).fetch_model().gather_stats(
        "timescales", k=k, confidence=0.95)
    scale = dt_ps
    return TimescaleEstimate(msm.timescales(k) * scale, np.asarray(stats.mean) * scale, np.asarray(stats.L) * scale,
                             np.asarray(stats.R) * scale)


def resolved(timescales_ps: np.ndarray, its_ps: np.ndarray, lags: list[int], lag: int, dt_ps: float,
             tolerance: float = 0.2) -> list[bool]:
    """Which processes are resolved at ``lag``: timescale longer than the lag time, and converged — its
    implied timescale at the next larger lag of ``lags`` (rows of ``its_ps``) within ``tolerance`` of its
    value at ``lag`` (when no larger lag was estimated, the first condition alone decides)."""
    longer = [t > lag * dt_ps for t in timescales_ps]
    larger = [i for i, value in enumerate(lags) if value > lag]
    if not larger or lag not in lags:
        return [bool(x) for x in longer]
    here, there = its_ps[lags.index(lag)], its_ps[larger[0]]
    out = []
    for i, ok in enumerate(longer):
        converged = i < len(here) and np.isfinite(here[i]) and np.isfinite(there[i]) and \
            abs(there[i] - here[i]) <= tolerance * here[i]
        out.append(bool(ok and converged))
    return out


def implied_timescales(dtraj: DTrajs, lags: list[int], k: int, dt_ps: float) -> np.ndarray:
    """ML implied timescales (ps), shape (len(lags), k); NaN where fewer processes were resolved."""
    out = np.full((len(lags), k), np.nan)
    for row, lag in enumerate(lags):
        if longest(dtraj) > lag + 1:
            msm = estimate_msm(dtraj, lag)
            ts = msm.timescales(min(k, msm.n_states - 1)) * dt_ps
            out[row, :len(ts)] = ts
    return out


def eigenvector_similarity(msm_a: MarkovStateModel, msm_b: MarkovStateModel, k: int) -> np.ndarray:
    """|cosine similarity| (k, k) between the first ``k`` non-stationary right eigenvectors of two MSMs,
    compared on the states both visit (matched through their state symbols)."""
    sym_a, sym_b = msm_a.count_model.state_symbols, msm_b.count_model.state_symbols
    common = np.intersect1d(sym_a, sym_b)
    k = min(k, msm_a.n_states - 1, msm_b.n_states - 1)
    ia = np.searchsorted(sym_a, common)
    ib = np.searchsorted(sym_b, common)
    va = msm_a.eigenvectors_right(k + 1)[ia, 1:]
    vb = msm_b.eigenvectors_right(k + 1)[ib, 1:]
    va = va / np.linalg.norm(va, axis=0, keepdims=True)
    vb = vb / np.linalg.norm(vb, axis=0, keepdims=True)
    return np.abs(va.T @ vb)


EMPTY_KEYS = ("timescales_ps", "timescales_lower_ps", "timescales_upper_ps", "timescales_ml_ps", "resolved",
              "relative_error", "implied_timescales_ps", "eigenvector_similarity")


@dataclass
class MSMComparison:
    """MSMs of a reference and other data sets on the same discrete states (estimator: ``fit``)."""

    lag: int = 5
    lags: tuple[int, ...] = (1, 2, 5, 10, 20)
    n_timescales: int = 3
    dt_ps: float = 1.0
    bayesian_samples: int = 100
    normalize_to_reference: bool = False
    seed: int = 0

    def fit(self, dtrajs: dict[str, DTrajs], reference: str) -> dict:
        """Per data set: timescales at ``lag`` (ps; Bayesian posterior mean and 95 % interval of one seeded
        estimator, ML values alongside), whether each is resolved at the lag (:func:`resolved`), relative
        errors against the reference, implied timescales vs ``lags``, and eigenvector similarity."""
        try:
            ref_msm = estimate_msm(dtrajs[reference], self.lag)
        except ValueError as err:
            raise ValueError(f"no MSM could be estimated for the reference at lag {self.lag}: {err}") from err
        results = {}
        ref_ts = None
        for name in [reference, *[n for n in dtrajs if n != reference]]:
            try:
                results[name] = self._entry(dtrajs[name], ref_msm, ref_ts, name == reference)
            except ValueError as err:  # too little or too disconnected data for this set
                results[name] = {**{key: [] for key in EMPTY_KEYS}, "normalization_factor": 1.0, "error": str(err)}
            if name == reference:
                ref_ts = np.asarray(results[name]["timescales_ps"])
        return results

    def _entry(self, dtraj: DTrajs, ref_msm: MarkovStateModel, ref_ts: np.ndarray | None, is_reference: bool):
        ts = timescales(dtraj, self.lag, self.n_timescales, self.dt_ps, self.bayesian_samples, self.seed)
        factor = 1.0
        if is_reference:
            ref_ts = ts.mean
        elif self.normalize_to_reference and len(ts.mean) and len(ref_ts):
            factor = ref_ts[0] / ts.mean[0]
        n = min(len(ts.mean), len(ref_ts))
        its = implied_timescales(dtraj, list(self.lags), self.n_timescales, self.dt_ps)
        return {
            "timescales_ps": (ts.mean * factor).tolist(),
            "timescales_lower_ps": (ts.lower * factor).tolist(),
            "timescales_upper_ps": (ts.upper * factor).tolist(),
            "timescales_ml_ps": (ts.ml * factor).tolist(),
            "resolved": resolved(ts.mean, its, list(self.lags), self.lag, self.dt_ps),
            "normalization_factor": factor,
            "relative_error": (np.abs(ts.mean[:n] * factor - ref_ts[:n]) / ref_ts[:n]).tolist(),
            "implied_timescales_ps": its.tolist(),
            "eigenvector_similarity": eigenvector_similarity(
                ref_msm, estimate_msm(dtraj, self.lag), self.n_timescales).tolist(),
        }
