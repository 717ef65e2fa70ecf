import json
import subprocess
import sys

import mdtraj as md
import numpy as np
import pytest
from deeptime.markov.msm import MarkovStateModel

from tcbm.analysis import Evaluation, EvaluationSettings, MSMComparison, NearestNeighbourBackmapper
from tcbm.analysis.baselines import time_shuffled
from tcbm.analysis.fes import ramachandran
from tcbm.analysis.msm import macrostates, timescales
from tcbm.analysis.observables import clashes_per_frame, frame_speeds, l_chiral_fraction
from tcbm.analysis.scores import js_divergence, js_of_samples, wasserstein1

FAST = {"bayesian_samples": 10, "n_clusters": 12, "msm_lags": (1, 2, 5)}


def load(adp_traj):
    return md.load(str(adp_traj[0]), top=str(adp_traj[1]))


def test_msm_recovers_known_timescales():
    transition = np.array([[0.97, 0.03, 0.0, 0.0], [0.02, 0.97, 0.01, 0.0], [0.0, 0.015, 0.98, 0.005],
                           [0.0, 0.0, 0.01, 0.99]])
    truth = MarkovStateModel(transition).timescales(3) * 0.5
    dtraj = MarkovStateModel(transition).simulate(200_000, seed=7)
    est = timescales(dtraj, lag=2, k=3, dt_ps=0.5, n_samples=50)
    assert np.all(np.abs(est.ml - truth) / truth < 0.1) and np.all(np.abs(est.mean - truth) / truth < 0.1)
    assert np.all((est.lower <= truth * 1.05) & (truth * 0.95 <= est.upper))
    assert np.all((est.lower <= est.mean) & (est.mean <= est.upper))  # point and interval: one estimator
    again = timescales(dtraj, lag=2, k=3, dt_ps=0.5, n_samples=50)
    other = timescales(dtraj, lag=2, k=3, dt_ps=0.5, n_samples=50, seed=1)
    assert np.array_equal(again.lower, est.lower) and not np.array_equal(other.lower, est.lower)  # seeded


def test_only_timescales_resolved_at_the_lag_are_reported():
    # t2 = 100 frames (slow), t3 ~ 0.6 frames: shorter than a lag of 2 frames, so not resolved there
    transition = np.array([[0.6, 0.39, 0.01], [0.39, 0.6, 0.01], [0.005, 0.005, 0.99]])
    fast_slow = MarkovStateModel(transition).simulate(100_000, seed=3)
    result = MSMComparison(lag=2, lags=(1, 2, 4), n_timescales=2, bayesian_samples=10).fit(
        {"reference": fast_slow}, "reference")
    assert result["reference"]["resolved"] == [True, False]
    from tcbm.analysis.report import timescale_rows

    table = "\n".join(timescale_rows({"datasets": {"reference": {"msm": result["reference"]}},
                                      "settings": {"msm_lag": 2}}))
    assert "| t2 (ps)" in table and "| t3 (ps)" not in table and "t3 of the reference: not resolved" in table


def test_msm_of_a_data_set_against_itself_is_identical():
    dtraj = MarkovStateModel(np.array([[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]])).simulate(20_000, seed=1)
    result = MSMComparison(lag=1, lags=(1, 2), n_timescales=2, bayesian_samples=10).fit(
        {"ref": dtraj, "copy": dtraj.copy()}, "ref")
    assert result["copy"]["relative_error"] == [0.0, 0.0]
    assert np.allclose(np.diag(result["copy"]["eigenvector_similarity"]), 1.0)
    # a process twice as fast (every off-diagonal rate doubled) must show a ~50 % error in t2
    faster = MarkovStateModel(np.array([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])).simulate(20_000, seed=2)
    result = MSMComparison(lag=1, lags=(1, 2), n_timescales=2, bayesian_samples=10).fit(
        {"ref": dtraj, "faster": faster}, "ref")
    assert 0.4 < result["faster"]["relative_error"][0] < 0.6


def test_phi_psi_match_mdtraj(adp):
    traj = adp.reference_trajectory()
    angles = ramachandran(traj)
    assert np.allclose(angles[:, 0], md.compute_phi(traj)[1][:, 0])
    assert np.allclose(angles[:, 1], md.compute_psi(traj)[1][:, 0])


def test_chirality_detects_mirror_image(adp, cln):
    for system in (adp, cln):
        traj = system.reference_trajectory()
        assert l_chiral_fraction(traj) == 1.0
        mirrored = md.Trajectory(traj.xyz * np.array([-1.0, 1.0, 1.0]), traj.topology)
        assert l_chiral_fraction(mirrored) == 0.0


def test_speeds_of_known_displacements(adp):
    steps = np.arange(10)[:, None, None] * np.array([0.03, 0.04, 0.0])  # 0.05 nm per frame
    xyz = adp.reference_xyz[None] + steps
    speeds = frame_speeds(xyz, dt_ps=2.0, rescale=3.0)
    assert speeds.shape == (9 * 22,) and np.allclose(speeds, 3.0 * 0.05 / 2.0)


def test_clash_count(adp):
    traj = adp.reference_trajectory()
    assert clashes_per_frame(traj)[0] == 0
    squashed = md.Trajectory(traj.xyz * 0.3, traj.topology)
    assert clashes_per_frame(squashed)[0] > 10


def test_scores_known_values():
    assert wasserstein1(np.zeros(10), np.ones(10)) == pytest.approx(1.0)
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert js_divergence(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0)


def test_js_bins_come_from_the_reference_and_outliers_count_against_a_sample():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, 5000)
    shifted = reference + 3.0
    assert js_of_samples(reference[:2500], reference[2500:], 50) < 0.02
    far = js_of_samples(shifted, reference, 50)
    assert far > 0.5
    # one extreme frame no longer squashes everything into one bin (shared min..max edges gave JS 0.00)
    assert js_of_samples(np.append(shifted, 1e5), reference, 50) == pytest.approx(far, abs=0.01)
    # mass outside the reference's range is a bin of its own: half the sample out there costs ~half
    assert 0.25 < js_of_samples(np.concatenate([reference, np.full(5000, 1e3)]), reference, 50) < 0.35


def test_rotamer_hops_of_a_rotor_spun_at_a_known_rate_ignore_librations():
    from tcbm.analysis.observables import hop_rates, rotor_phases

    rng = np.random.default_rng(0)
    frames = np.arange(3000)
    minimum = 0.4 + (frames // 10) * 2 * np.pi / 3  # a 120° hop every 10 frames from a minimum at 0.4 rad
    angles = np.angle(np.exp(1j * (minimum + rng.uniform(-0.5, 0.5, len(frames)))))[:, None]  # ±29° libration
    phases = rotor_phases(angles)
    assert phases[0] == pytest.approx(0.4, abs=0.05)
    assert hop_rates(angles, phases, dt_ps=0.5)[0] == pytest.approx(299 / 2999 / 0.5, rel=1e-6)
    # states whose boundaries sit ON the minima would count the librations as hops
    assert hop_rates(angles, phases + np.pi / 3, dt_ps=0.5)[0] > 5 * hop_rates(angles, phases, dt_ps=0.5)[0]


def test_macrostates_group_the_metastable_states_by_population():
    # states {0, 1} exchange fast and hold ~80 % of the time, {2, 3} the rest; 4 is never visited
    transition = np.array([[0.5, 0.49, 0.01, 0.0], [0.49, 0.5, 0.0, 0.01], [0.04, 0.0, 0.5, 0.46],
                           [0.0, 0.04, 0.46, 0.5]])
    dtraj = MarkovStateModel(transition).simulate(50_000, seed=5)
    np.testing.assert_array_equal(macrostates(dtraj, 1, 2, n_states=5), [0, 0, 1, 1, -1])
    with pytest.raises(ValueError, match="5 macrostates"):
        macrostates(dtraj, 1, 5, n_states=5)
    # a periodic chain (eigenvalue -1) fails deeptime's PCCA+ assertions: reported as a ValueError, which the
    # evaluation records as the macrostates' error instead of stopping
    with pytest.raises(ValueError, match="PCCA\\+ cannot split"):
        macrostates(np.tile([0, 1], 200), 1, 2, n_states=2)


def test_energy_error_is_located_in_its_macrostate(adp_traj, adp):
    ref = load(adp_traj)
    settings = EvaluationSettings(**FAST)
    evaluation = Evaluation(settings).fit(ref, {"copy": ref[:]}, adp)
    labels = evaluation.frame_macrostates["reference"]
    fractions = evaluation.metrics["datasets"]["reference"]["macrostate_fractions"]
    assert fractions == pytest.approx([np.mean(labels == 0), np.mean(labels == 1)]) and fractions[0] >= fractions[1]
    # move the Ala H-alpha (neither a CG nor a phi/psi atom) by 0.03 nm in the frames of the second macrostate
    moved = ref[:]
    moved.xyz[labels == 1, ref.topology.select("resname ALA and name HA")[0]] += 0.03
    result = Evaluation(settings).fit(ref, {"moved": moved}, adp).metrics["datasets"]["moved"]
    assert result["energy_w1_by_macrostate_kJmol"][0] == pytest.approx(0.0, abs=1e-9)
    assert result["energy_w1_by_macrostate_kJmol"][1] > 1.0
    assert result["energy_w1_kJmol"] > 0.1


def test_self_evaluation_is_zero_and_a_time_shuffled_copy_is_flagged(adp_traj, adp):
    ref = load(adp_traj)
    shuffled = time_shuffled(ref)
    assert sorted(map(tuple, shuffled.xyz[:, 0])) == sorted(map(tuple, ref.xyz[:, 0]))  # the same frames...
    assert not np.array_equal(shuffled.xyz, ref.xyz)  # ...in another order
    evaluation = Evaluation(EvaluationSettings(**FAST)).fit(ref, {"copy": ref[:], "shuffled": shuffled}, adp)
    mixed = evaluation.metrics["datasets"]["shuffled"]
    assert mixed["energy_w1_kJmol"] == pytest.approx(0.0, abs=1e-9)  # every per-frame distribution kept...
    assert mixed["velocity_js"] > 0.3 and mixed["rotor_autocorrelation_max_error"] > 0.3  # ...not the dynamics
    ref_entry = evaluation.metrics["datasets"]["reference"]
    assert mixed["free_rmsd_nm"] > 1.3 * ref_entry["free_rmsd_nm"]  # 0.5 ps frames: the reference moves a lot
    assert mixed["free_displacement_js"]["H"] > 0.05 and mixed["free_displacement_js"]["C"] > 0.1
    for rotor, rate in ref_entry["rotor_hops_per_ps"].items():
        assert mixed["rotor_hops_per_ps"][rotor] > rate, rotor
    copy = evaluation.metrics["datasets"]["copy"]
    for key in ("energy_w1_kJmol", "energy_js", "bond_mae_nm", "velocity_w1_nm_per_ps", "velocity_js", "fes_js",
                "cg_rmsd_nm"):
        assert copy[key] == pytest.approx(0.0, abs=1e-12), key
    assert copy["l_chiral_fraction"] == 1.0
    assert np.allclose(np.diag(copy["msm"]["eigenvector_similarity"]), 1.0)
    assert np.allclose(copy["msm"]["relative_error"], 0.0)


def test_msm_reweighted_fes_of_equilibrium_data_is_close_to_plain(adp_traj, adp):
    ref = load(adp_traj)
    plain = Evaluation(EvaluationSettings(**FAST)).fit(ref, {"copy": ref[:]}, adp)
    weighted = Evaluation(EvaluationSettings(**FAST, fes_reweight=True)).fit(ref, {"copy": ref[:]}, adp)
    weights = weighted._data["fes_weights"]["reference"]
    assert weights.shape == (ref.n_frames,) and np.all(weights >= 0) and weights.sum() > 0
    assert weighted.metrics["datasets"]["copy"]["fes_js"] == pytest.approx(0.0, abs=1e-12)
    assert plain._data["fes_weights"]["reference"] is None


def test_nearest_neighbour_baseline_reproduces_library_frames(adp_traj, adp):
    ref = load(adp_traj)
    cg = adp.mapping(ref.xyz)
    xyz = NearestNeighbourBackmapper(cg, ref.xyz).backmap(cg[::7], batch=5)
    assert np.abs(xyz - ref.xyz[::7]).max() < 1e-4


def test_mismatched_topology_is_reported(adp_traj, adp, cln):
    ref = load(adp_traj)
    with pytest.raises(ValueError, match="data set 'other' has 138 atoms, the reference has 22"):
        Evaluation().fit(ref, {"other": cln.reference_trajectory()}, adp)


def test_cli_evaluate_writes_all_files(tmp_path, adp_traj, tiny_model):
    model = tiny_model.save(tmp_path / "model.pt")
    ref = load(adp_traj)
    noisy = ref[:]
    noisy.xyz += np.random.default_rng(0).normal(0, 0.003, noisy.xyz.shape).astype(np.float32)
    for k, (start, stop) in enumerate([(0, 60), (60, 120)]):  # the reference as two runs
        for name, traj in (("ref", ref), ("noisy", noisy)):
            traj[start:stop].save_xtc(str(tmp_path / f"{name}{k}.xtc"))
    cmd = [sys.executable, "-m", "tcbm.cli", "evaluate", f"reference=[{tmp_path / 'ref0.xtc'},{tmp_path / 'ref1.xtc'}]",
           f"reference_top={adp_traj[1]}",
           f"backmapped=[{tmp_path / 'ref0.xtc'},{tmp_path / 'ref1.xtc'},{tmp_path / 'noisy0.xtc'},"
           f"{tmp_path / 'noisy1.xtc'}]", "labels=[same,same,noisy,noisy]",
           f"nearest_neighbour_model={model}", f"out={tmp_path / 'eval'}", "settings.bayesian_samples=10",
           "settings.n_clusters=12", "settings.msm_lags=[1,2,5]"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    out = tmp_path / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"reference", "same", "noisy", "nearest-neighbour"}
    assert [metrics["datasets"][k]["trajectories"] for k in ("same", "noisy", "nearest-neighbour")] == [2, 2, 2]
    assert metrics["datasets"]["same"]["energy_w1_kJmol"] == 0.0 < metrics["datasets"]["noisy"]["energy_w1_kJmol"]
    assert metrics["units"]["energy"] == "kJ/mol"
    assert all(w > 0 for w in metrics["datasets"]["noisy"]["energy_w1_by_macrostate_kJmol"])
    assert "| energy W1 in macrostate 2 (kJ/mol; % of frames) |" in (out / "report.md").read_text()
    for figure in ("energy", "velocity", "fes", "timescales", "eigenvector_similarity", "bond_lengths"):
        assert (out / f"{figure}.png").stat().st_size > 5000
        assert f"({figure}.png)" in (out / "report.md").read_text()


def test_chignolin_uses_tica_of_45_ca_distances(tmp_path, cln):
    from tcbm.analysis.fes import ca_distances
    from tcbm.simulate import simulate

    path = simulate(cln, tmp_path, "cln", length_ps=4.0, save_interval_ps=0.05, equilibration_ps=0.1, seed=1,
                    progress=False)
    traj = md.load(str(path), top=str(tmp_path / "cln.pdb"))
    assert ca_distances(traj).shape == (80, 45)
    settings = EvaluationSettings(tica_lag=2, msm_lag=1, msm_lags=(1, 2), n_clusters=6, bayesian_samples=5)
    evaluation = Evaluation(settings).fit(traj, {"copy": traj[:]}, cln)
    assert evaluation.metrics["settings"]["cv"] == "tica"
    assert evaluation.metrics["datasets"]["copy"]["fes_js"] == pytest.approx(0.0, abs=1e-12)


def test_external_references_are_compared_like_with_like(adp_traj, adp):
    from tcbm.analysis.evaluate import comparable_energies

    ref = load(adp_traj)
    every_other = ref[::2]  # 1 ps frames against the reference's 0.5 ps
    with pytest.raises(ValueError, match=r"'coarse' has frames every 1 ps, the reference every 0.5 ps"):
        Evaluation(EvaluationSettings(**FAST)).fit(ref, {"coarse": every_other}, adp)
    with pytest.raises(ValueError, match="settings.energies"):
        EvaluationSettings(energies="relative")
    energies = {"reference": np.array([1.0, 2.0, 3.0, 10.0]), "other force field": np.array([101.0, 102.0, 103.0, 110.0])}
    assert wasserstein1(*comparable_energies(energies, "absolute").values()) == pytest.approx(100.0)
    assert wasserstein1(*comparable_energies(energies, "centred").values()) == pytest.approx(0.0)


def test_several_trajectories_per_data_set_never_pair_frames_across_them(adp_traj, adp):
    from tcbm.analysis.observables import methyl_rotors

    ref = load(adp_traj)
    halves = [ref[:60], ref[60:]]
    evaluation = Evaluation(EvaluationSettings(**FAST)).fit(halves, {"copy": [h[:] for h in halves], "whole": ref},
                                                            adp)
    copy = evaluation.metrics["datasets"]["copy"]
    assert copy["trajectories"] == 2 and copy["frames"] == 120
    assert copy["energy_w1_kJmol"] == pytest.approx(0.0, abs=1e-9) and copy["velocity_js"] == pytest.approx(0.0)
    speeds = evaluation._data["speeds"]
    assert len(speeds["reference"]) == 118 * 22 and len(speeds["whole"]) == 119 * 22  # no pair across the cut
    rotors = methyl_rotors(ref.topology)
    angles = md.compute_dihedrals(ref, np.array(list(rotors.values())))
    within = np.concatenate([np.cos(a[2:] - a[:-2]) for a in (angles[:60], angles[60:])]).mean(axis=0)  # 1 ps
    for k, name in enumerate(rotors):
        assert evaluation.metrics["datasets"]["reference"]["rotor_autocorrelation"][name][0] == pytest.approx(within[k])


def test_eigenvector_figure_with_no_slow_process(tmp_path):
    from tcbm.analysis.plots import _eigen_similarity

    metrics = {"datasets": {"reference": {"msm": {}}, "tcbm": {"msm": {"eigenvector_similarity": []}},
                            "other": {"msm": {"eigenvector_similarity": [[0.9, 0.1], [0.2, 0.8]]}}}}
    _eigen_similarity(metrics, tmp_path / "eigen.png")
    assert (tmp_path / "eigen.png").stat().st_size > 5000
