import mdtraj as md
import numpy as np
import pytest

from tcbm.analysis import Evaluation, EvaluationSettings
from tcbm.analysis.baselines import time_shuffled
from tcbm.analysis.uncertainty import PairedBlockBootstrap, SeriesData, blocks, difference_interval

FAST = {"bayesian_samples": 10, "n_clusters": 12, "msm_lags": (1, 2, 5), "bootstrap_replicas": 50,
        "bootstrap_block_ps": 10.0}
SCALARS = ("energy_w1_kJmol", "velocity_js", "rotor_autocorrelation_max_error", "free_rmsd_nm")


def test_blocks_cover_every_frame_once():
    spans = blocks([5, 3], 2)
    assert spans == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 3)]
    with pytest.raises(ValueError, match="at least one frame"):
        blocks([5], 0)


def test_a_replica_drawing_every_block_once_reproduces_the_evaluation(adp_traj, adp):
    ref = md.load(str(adp_traj[0]), top=str(adp_traj[1]))
    halves = [ref[:60], ref[60:]]
    shuffled = [time_shuffled(h) for h in halves]
    evaluation = Evaluation(EvaluationSettings(**FAST)).fit(halves, {"shuffled": shuffled}, adp)
    replica = evaluation.bootstrap.estimate  # every block (10 ps of 0.5 ps frames) drawn once
    assert len(blocks([60, 60], 20)) == 6
    for name in ("reference", "shuffled"):
        full = evaluation.metrics["datasets"][name]
        for key in SCALARS:
            assert replica[name][key] == pytest.approx(full[key], rel=1e-6, abs=1e-12), (name, key)  # float32 angles
        for element, js in full["free_displacement_js"].items():
            assert replica[name]["free_displacement_js"][element] == pytest.approx(js, abs=1e-12)
        for rotor, rate in full["rotor_hops_per_ps"].items():
            assert replica[name]["rotor_hops_per_ps"][rotor] == pytest.approx(rate)
        for rotor, values in full["rotor_autocorrelation"].items():
            assert np.allclose(replica[name]["rotor_autocorrelation"][rotor], values, rtol=1e-6, equal_nan=True)
    low, high = full["intervals_95"]["velocity_js"]
    assert low <= full["velocity_js"] <= high and high > low  # the shuffled copy's scores scatter between replicas


def test_basic_interval_takes_back_the_replicas_shift():
    from tcbm.analysis.uncertainty import basic_interval

    # replicas centred 0.3 above the estimate (a divergence of resampled frames) and 0.2 wide
    assert basic_interval(1.0, list(np.linspace(1.2, 1.4, 101)), 1.0) == pytest.approx((0.6, 0.8))


def _series(rng, n_frames, scale):
    """One trajectory of i.i.d. Gaussian 'speeds' with standard deviation ``scale`` (no rotors, no free atoms)."""
    return SeriesData([rng.normal(size=n_frames)], [rng.normal(scale=scale, size=(n_frames - 1, 4))],
                      [np.zeros((n_frames, 0))], [np.zeros((n_frames, 0), dtype=int)],
                      [np.zeros((n_frames - 1, 0))], [np.zeros(n_frames - 1)])


@pytest.mark.parametrize("scales, resolved", [((1.0, 1.5, 1.02), 10), ((1.0, 1.1, 1.1), 2)])
def test_difference_intervals_resolve_a_real_gap_and_rarely_a_tie(scales, resolved):
    """Speeds of a reference and two data sets ("far", "near") drawn with the given spreads, 10 seeds: the
    interval of JS(near) - JS(far) lies below zero for every seed when "near" is closer, for at most 2 of 10 when
    the two are equally far (a 95 % interval excludes zero by chance in ~5 %)."""
    below = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        series = {name: _series(rng, 4000, s) for name, s in zip(("reference", "far", "near"), scales)}
        bootstrap = PairedBlockBootstrap(block_ps=100.0, n_replicas=100, bins=20).fit(series, [], np.array([]), 1.0,
                                                                                      [1.0])
        low, high = difference_interval(bootstrap, lambda scores, name: scores[name]["velocity_js"], "near", "far")
        below += high < 0
    assert below == resolved if resolved == 10 else below <= resolved


def test_unpaired_data_sets_are_refused():
    rng = np.random.default_rng(0)
    series = {"reference": _series(rng, 100, 1.0), "other": _series(rng, 90, 1.0)}
    with pytest.raises(ValueError, match="'other' has trajectories of \\[90\\] frames"):
        PairedBlockBootstrap().fit(series, [], np.array([]), 1.0, [1.0])


@pytest.mark.parametrize("bad", [{"bootstrap_replicas": -1}, {"bootstrap_block_ps": 0.0}])
def test_bad_bootstrap_settings_are_refused_before_any_work(bad):
    with pytest.raises(ValueError, match="bootstrap"):
        EvaluationSettings(**bad)


def test_an_evaluation_without_paired_data_sets_has_no_intervals(adp_traj, adp):
    ref = md.load(str(adp_traj[0]), top=str(adp_traj[1]))
    evaluation = Evaluation(EvaluationSettings(**FAST)).fit(ref, {"shorter": ref[:80]}, adp)
    assert evaluation.bootstrap is None and "intervals_95" not in evaluation.metrics["datasets"]["shorter"]
