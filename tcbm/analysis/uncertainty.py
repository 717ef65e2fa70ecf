"""How far the comparison scores could move with other held-out frames: a paired block bootstrap.

A score from a finite held-out set scatters, and a difference between two backmappers (e.g. tcbm against the
frame-based cVAE on a displacement JS of 0.0006 against 0.0003) means something only beyond that scatter.
Every data set of an evaluation backmaps the reference's own CG frame by frame, so the bootstrap is paired: the
held-out frames are cut into blocks of consecutive frames (``block_ps``; long enough that the correlations the
scores measure stay inside a block), each replica draws as many blocks with replacement, the same blocks for
every data set and for the reference, and recomputes the scores on them.  A frame pair (t, t + lag) belongs to
the block holding t, so the blocks together hold exactly the pairs of the full evaluation and a replica that
draws every block once reproduces its scores (``estimate``).

Intervals are basic (reverse-percentile) bootstrap intervals, [2θ̂ − q_hi, 2θ̂ − q_lo] about the full-data
score θ̂: divergences estimated from resampled frames (with repeats) come out larger than from the frames
themselves, and the basic interval takes that shift back instead of reporting it as the interval (the percentile
interval of a displacement JS of 0.0034 was [0.0043, 0.0084]); scores that cannot be negative are cut at zero.

Scores bootstrapped (the temporal ones and the energy's W1): energy W1 (kJ/mol), velocity JS, rotor
⟨cos Δφ⟩ per rotor and lag and its max error, rotamer hops per ps, the CG-free atoms' frame-to-frame RMSD
(nm) and displacement JS per element — each replica is a dict shaped like a data set's entry in
``Evaluation.metrics``, so any function of those entries (e.g. a benchmark's "closer than" test) can be
evaluated on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcbm.analysis.scores import js_divergence, reference_edges, wasserstein1


@dataclass
class SeriesData:
    """One data set's per-trajectory series, in the evaluation's units: ``energies`` per frame (kJ/mol);
    ``speeds`` (frames − 1, atoms) nm/ps; ``angles`` rotor dihedrals (frames, rotors) rad; ``states`` their
    rotamers (frames, rotors); ``displacements`` of the CG-free atoms (frames − 1, free atoms) nm and
    ``rmsd`` (frames − 1,) nm."""

    energies: list[np.ndarray]
    speeds: list[np.ndarray]
    angles: list[np.ndarray]
    states: list[np.ndarray]
    displacements: list[np.ndarray]
    rmsd: list[np.ndarray]


def blocks(lengths: list[int], block_frames: int) -> list[tuple[int, int, int]]:
    """(trajectory, start, stop) of consecutive frames, ``block_frames`` long (each trajectory's last block may
    be shorter), covering every frame once."""
    if block_frames < 1:
        raise ValueError(f"blocks need at least one frame, got {block_frames}")
    return [(k, start, min(start + block_frames, n)) for k, n in enumerate(lengths)
            for start in range(0, n, block_frames)]


class BlockStatistics:
    """Additive per-block statistics of one data set (counts on the reference's histogram edges, sums of
    cosines, hop and pair counts), from which any union of blocks gives the scores exactly."""

    def __init__(self, data: SeriesData, spans: list[tuple[int, int, int]], lag_frames: list[int],
                 speed_edges: np.ndarray, displacement_edges: dict[str, np.ndarray], elements: np.ndarray) -> None:
        n_rotors = data.angles[0].shape[1]
        self.energies = [data.energies[k][a:b] for k, a, b in spans]
        self.speed_counts = np.stack([_counts(data.speeds[k][a:b], speed_edges) for k, a, b in spans])
        self.displacement_counts = {e: np.stack([_counts(data.displacements[k][a:b][:, elements == e], edges)
                                                 for k, a, b in spans]) for e, edges in displacement_edges.items()}
        self.rmsd_sums = np.array([data.rmsd[k][a:b].sum() for k, a, b in spans])
        self.pairs = np.array([len(data.rmsd[k][a:b]) for k, a, b in spans], dtype=float)
        self.hops = np.stack([(np.diff(data.states[k][a:b + 1], axis=0) != 0).sum(0) for k, a, b in spans]) \
            if n_rotors else np.zeros((len(spans), 0))
        self.cos_sums = np.zeros((len(spans), len(lag_frames), n_rotors))
        self.cos_pairs = np.zeros((len(spans), len(lag_frames)))
        for i, (k, a, b) in enumerate(spans):
            series = data.angles[k]
            for j, lag in enumerate(lag_frames):
                stop = min(b, len(series) - lag)
                if stop > a:
                    self.cos_sums[i, j] = np.cos(series[a + lag:stop + lag] - series[a:stop]).sum(0)
                    self.cos_pairs[i, j] = stop - a


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.ravel(values), edges)[0]


class PairedBlockBootstrap:
    """Estimator: ``fit(series, rotor_names, elements, dt_ps, lags_ps)`` then ``estimate`` (the full data's
    ``{data set: scores}``) and ``replicas``, one such dict per replica; ``intervals(level)`` gives each scalar
    score's interval, :func:`difference_interval` that of a difference between two data sets."""

    def __init__(self, block_ps: float = 200.0, n_replicas: int = 200, bins: int = 100, seed: int = 0) -> None:
        if n_replicas < 1 or block_ps <= 0:
            raise ValueError(f"need block_ps > 0 and n_replicas >= 1, got {block_ps} and {n_replicas}")
        self.block_ps, self.n_replicas, self.bins, self.seed = block_ps, n_replicas, bins, seed
        self.estimate: dict[str, dict] = {}
        self.replicas: list[dict[str, dict]] = []

    def fit(self, series: dict[str, SeriesData], rotor_names: list[str], elements: np.ndarray, dt_ps: float,
            lags_ps: list[float]) -> PairedBlockBootstrap:
        """``series`` per data set, ``"reference"`` among them, every one with the reference's trajectory lengths
        (frame-by-frame backmappings of its CG); ``elements`` (free atoms,) the CG-free atoms' element symbols."""
        lengths = [len(e) for e in series["reference"].energies]
        for name, data in series.items():
            if [len(e) for e in data.energies] != lengths:
                raise ValueError(f"data set {name!r} has trajectories of {[len(e) for e in data.energies]} frames, "
                                 f"the reference {lengths}: a paired bootstrap needs frame-by-frame backmappings")
        spans = blocks(lengths, max(1, int(round(self.block_ps / dt_ps))))
        lag_frames = [max(1, int(round(lag / dt_ps))) for lag in lags_ps]
        reference = series["reference"]
        speed_edges = reference_edges(np.concatenate([s.ravel() for s in reference.speeds]), self.bins)
        free = np.concatenate(reference.displacements) if reference.displacements else np.zeros((0, len(elements)))
        displacement_edges = {str(e): reference_edges(free[:, elements == e], self.bins) for e in sorted(set(elements))}
        self._statistics = {name: BlockStatistics(data, spans, lag_frames, speed_edges, displacement_edges, elements)
                            for name, data in series.items()}
        self.estimate = self._scores(self._statistics, np.arange(len(spans)), rotor_names, dt_ps)
        rng = np.random.default_rng(self.seed)
        self.replicas = [self._scores(self._statistics, rng.integers(0, len(spans), len(spans)), rotor_names, dt_ps)
                         for _ in range(self.n_replicas)]
        return self

    @staticmethod
    def _scores(stats: dict[str, BlockStatistics], drawn: np.ndarray, rotor_names: list[str], dt_ps: float
                ) -> dict[str, dict]:
        """Every data set's scores over the blocks ``drawn`` (with repeats)."""
        reference = stats["reference"]
        ref_energies = np.concatenate([reference.energies[i] for i in drawn])

        def autocorrelation(s: BlockStatistics) -> np.ndarray:  # (lags, rotors)
            with np.errstate(invalid="ignore", divide="ignore"):
                return s.cos_sums[drawn].sum(0) / s.cos_pairs[drawn].sum(0)[:, None]

        ref_correlation = autocorrelation(reference)
        out = {}
        for name, s in stats.items():
            correlation = autocorrelation(s)
            pairs = s.pairs[drawn].sum()
            out[name] = {
                "energy_w1_kJmol": wasserstein1(np.concatenate([s.energies[i] for i in drawn]), ref_energies),
                "velocity_js": js_divergence(s.speed_counts[drawn].sum(0), reference.speed_counts[drawn].sum(0)),
                "rotor_autocorrelation": {r: correlation[:, k].tolist() for k, r in enumerate(rotor_names)},
                "rotor_autocorrelation_max_error": float(np.nanmax(np.abs(correlation - ref_correlation)))
                if rotor_names else None,
                "rotor_hops_per_ps": {r: float(v) for r, v in
                                      zip(rotor_names, s.hops[drawn].sum(0) / (dt_ps * max(pairs, 1.0)))},
                "free_rmsd_nm": float(s.rmsd_sums[drawn].sum() / max(pairs, 1.0)),
                "free_displacement_js": {
                    e: js_divergence(c[drawn].sum(0), reference.displacement_counts[e][drawn].sum(0))
                    for e, c in s.displacement_counts.items()},
            }
        return out

    def intervals(self, level: float = 0.95) -> dict[str, dict[str, list[float]]]:
        """Per data set, the ``level`` basic bootstrap interval of each scalar score (and of each per-element
        displacement JS, as ``free_displacement_js:<element>``), cut at zero."""
        out: dict[str, dict[str, list[float]]] = {}
        for name, entry in self.estimate.items():
            keys = [k for k in ("energy_w1_kJmol", "velocity_js", "rotor_autocorrelation_max_error", "free_rmsd_nm")
                    if entry[k] is not None] + [f"free_displacement_js:{e}" for e in entry["free_displacement_js"]]
            out[name] = {k: [max(0.0, v) for v in basic_interval(
                _scalar(entry, k), [_scalar(r[name], k) for r in self.replicas], level)] for k in keys}
        return out


def _scalar(entry: dict, key: str) -> float:
    if key.startswith("free_displacement_js:"):
        return entry["free_displacement_js"][key.split(":", 1)[1]]
    return entry[key]


def basic_interval(estimate: float, replicas: list[float], level: float = 0.95) -> tuple[float, float]:
    """The basic bootstrap interval [2·estimate − q_hi, 2·estimate − q_lo] from the replicas' quantiles."""
    tail = 50.0 * (1.0 - level)
    low, high = np.nanpercentile(np.asarray(replicas, dtype=float), [tail, 100.0 - tail])
    return float(2 * estimate - high), float(2 * estimate - low)


def difference_interval(bootstrap: PairedBlockBootstrap, score, first: str, second: str, level: float = 0.95
                        ) -> tuple[float, float]:
    """Basic bootstrap interval of ``score(scores, first) − score(scores, second)``, where ``score(scores, name)``
    reads one number (e.g. a distance to the reference) from a ``{data set: scores}`` dict of ``bootstrap``."""
    def difference(scores: dict) -> float:
        return score(scores, first) - score(scores, second)

    return basic_interval(difference(bootstrap.estimate), [difference(r) for r in bootstrap.replicas], level)
